"""The example third-party executor (examples/megalodon-script) end to end: the issue's done-criterion —
one task requesting taskclusterProxy, liveLog and chainOfTrust, and all three work — plus executor choice
by payload and features by name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from megalodon_core.cgroup import host as cgroup_host
from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.testing.conformance import wait_for_artifact, write_signing_key
from megalodon_core.worker import Worker

from ..helpers.procs import wait_gone

LIVE = "public/logs/live.log"
BACKING = "public/logs/live_backing.log"

#: The task's side of the proxy: the worker's Python (present on every host that runs the worker).
PROXY_CALL = (
    "import os, json, urllib.request; "
    "body = urllib.request.urlopen(os.environ['TASKCLUSTER_PROXY_URL'] + '/auth/v1/scopes/current').read(); "
    "print('proxied-scopes', json.dumps(sorted(json.loads(body)['scopes'])))"
)


async def test_proxy_live_log_and_chain_of_trust_all_work(harness: Harness, tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    public = Ed25519PrivateKey.from_private_bytes(write_signing_key(key_file)).public_key()
    marker = f"scope:marker-{uuid.uuid4().hex}"
    script = (
        f"{shlex.quote(sys.executable)} -c {shlex.quote(PROXY_CALL)}\n"
        "echo streamed-early\n"
        "sleep 4\n"
        "printf built > out.txt\n"
        "echo streamed-late\n"
    )
    payload = {
        "script": script,
        "maxRunTime": 60,
        "artifacts": [{"name": "public/out.txt", "path": "out.txt"}],
        "features": {"taskclusterProxy": True, "liveLog": True, "chainOfTrust": True},
    }
    streamed: dict[str, bytes] = {}

    async def read_live_log(task_id: str) -> None:
        reference = await wait_for_artifact(harness.double, task_id, LIVE)
        assert reference["storageType"] == "reference", reference
        async with aiohttp.ClientSession() as session, session.get(reference["url"]) as resp:
            assert resp.status == 200
            streamed["body"] = await resp.read()

    out = await harness.run(
        payload,
        task={"scopes": ["auth:current-scopes", marker]},
        during=read_live_log,
        executor="auto",
        ed25519SigningKeyLocation=str(key_file),
    )
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "Executor: script" in out.log, "the payload did not go to the script executor"

    # taskclusterProxy: the call was signed with the task's credentials and scopes.
    (line,) = [x for x in out.log.splitlines() if x.startswith("proxied-scopes ")]
    scopes = json.loads(line.split(" ", 1)[1])
    assert marker in scopes and f"queue:create-artifact:{out.task_id}/0" in scopes

    # liveLog: streamed while the task ran, the whole log, then replaced by a link to the backing log.
    assert streamed["body"] == out.log.encode()
    assert b"streamed-early" in streamed["body"] and b"streamed-late" in streamed["body"]
    _, link = harness.double.artifact_content(out.task_id, 0, LIVE)
    assert (link["storageType"], link["artifact"]) == ("link", BACKING)

    # chainOfTrust: a signed certificate of the payload and the artifact's hash.
    document, _ = harness.double.artifact_content(out.task_id, 0, "public/chain-of-trust.json")
    signature, _ = harness.double.artifact_content(out.task_id, 0, "public/chain-of-trust.json.sig")
    public.verify(signature, document)
    certificate = json.loads(document)
    assert certificate["taskId"] == out.task_id
    assert certificate["task"]["payload"] == payload
    built, _ = harness.double.artifact_content(out.task_id, 0, "public/out.txt")
    assert built == b"built"
    assert certificate["artifacts"]["public/out.txt"] == {"sha256": hashlib.sha256(built).hexdigest()}
    assert "public/logs/certified.log" in certificate["artifacts"]


async def test_a_feature_no_plugin_provides_is_malformed_by_name(harness: Harness) -> None:
    payload = {"script": "true", "maxRunTime": 10, "features": {"noSuchFeature": True}}
    out = await harness.run(payload, executor="script")
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert "noSuchFeature" in out.log


@pytest.mark.parametrize("detach", ["background", "setsid"])
async def test_background_processes_die_with_the_run(harness: Harness, tmp_path: Path, detach: str) -> None:
    """A child left in the background dies with the run: by process group, and by the task's cgroup when it
    left the group (``setsid``)."""
    if detach == "setsid" and cgroup_host() is None:
        pytest.skip("no cgroup hierarchy on this host: a setsid daemon is out of reach of a process-group kill")
    pid_file = tmp_path / "daemon.pid"
    # The daemon records its pid, then sleeps far longer than any run: only a kill ends it.
    daemon = f"echo $$ > {shlex.quote(str(pid_file))}; exec sleep 600"
    prefix = "setsid " if detach == "setsid" else ""
    script = (
        f"{prefix}sh -c {shlex.quote(daemon)} > /dev/null 2>&1 &\n"
        f"while [ ! -s {shlex.quote(str(pid_file))} ]; do sleep 0.05; done\necho started"
    )
    out = await harness.run({"script": script, "maxRunTime": 30}, executor="script")
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    pid = int(pid_file.read_text())
    try:
        assert await wait_gone(pid, limit=30), "a background process of the script outlived its run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_validate_payload_picks_the_script_executor_and_names_the_field(tmp_path: Path) -> None:
    """``megalodon validate-payload`` knows the third-party executor by its ``accepts`` rule."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"script": "true", "maxRunTime": 5}))
    bad.write_text(json.dumps({"script": "true"}))

    def validate(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "megalodon_core", "validate-payload", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    ok = validate(good)
    assert (ok.returncode, ok.stdout.strip()) == (0, "valid script payload"), ok.stderr
    refused = validate(bad)
    assert refused.returncode == 1
    assert "- maxRunTime:" in refused.stdout


def test_run_task_demo_payload(tmp_path: Path) -> None:
    """``megalodon run-task examples/hello-script.yml`` (the demo of the two examples) completes."""
    example = Path(__file__).resolve().parents[2] / "examples" / "hello-script.yml"
    argv = [sys.executable, "-m", "megalodon_core", "run-task", str(example), "--json"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "megalodon-out"
    (task_dir,) = out.iterdir()
    assert json.loads((task_dir / "public" / "result.json").read_text()) == {"ok": True}
    assert (task_dir / "public" / "hello.txt").read_text().startswith("hello from ")
    assert "hello from a third-party executor: hello from " in (task_dir / "public/logs/live_backing.log").read_text()


async def test_an_unusable_shell_stops_a_script_worker_at_start(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The executor's start-up check (its worker-lifetime half): exit 69 naming the config key, no claim."""
    missing = tmp_path / "no-such-shell"
    host = PluginHost()
    config = harness.config(harness.worker_type(), executor="script", scriptShell=str(missing))
    worker = Worker(parse_config(config, host.config_fields()), host)
    assert await worker.run() == 69
    assert f"config scriptShell: {missing} is not an executable file" in capsys.readouterr().err
    assert harness.double.calls["claimWork"] == 0


async def test_an_auto_worker_runs_without_an_unusable_script_executor(harness: Harness, tmp_path: Path) -> None:
    """With ``executor: auto`` the other executors go on: a native task completes, a script task is refused."""
    shell = str(tmp_path / "no-such-shell")
    native = await harness.run({"command": [["true"]], "maxRunTime": 10}, executor="auto", scriptShell=shell)
    assert (native.state, native.reason) == ("completed", "completed"), native.log
    script = await harness.run({"script": "true", "maxRunTime": 10}, executor="auto", scriptShell=shell)
    assert (script.state, script.reason) == ("exception", "malformed-payload"), script.log
