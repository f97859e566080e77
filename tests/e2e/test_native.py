"""generic-worker payloads through the whole worker path: claim, run, log, artifacts, resolution."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import re
from pathlib import Path
from typing import Any

from megalodon_core.testing import Harness
from megalodon_core.timefmt import iso, parse_iso, utcnow

SH = "/bin/sh"


def sh(script: str) -> list[str]:
    return [SH, "-c", script]


async def test_hello_world_log_format_and_logs(harness: Harness) -> None:
    out = await harness.run({"command": [["echo", "hello world!"]], "maxRunTime": 30})
    assert out.exit_code == 0
    assert out.state == "completed", out.log
    lines = out.log.splitlines()
    stamp = r"\[taskcluster \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\]"
    assert re.fullmatch(rf"{stamp} Worker Type \(megalodon-test/e2e-1\) settings:", lines[0])
    assert any(re.fullmatch(rf"{stamp} Task ID: {out.task_id}", line) for line in lines)
    assert re.search(
        rf"{stamp} === Task Starting ===\n{stamp} Executing command 0: echo 'hello world!'\nhello world!\n", out.log
    )
    assert re.search(rf"{stamp}                        Exit Code: 0\n", out.log)
    assert re.search(rf"{stamp}                        User Time: \S+\n", out.log)
    assert re.search(rf"{stamp}                      Kernel Time: \S+\n", out.log)
    assert re.search(rf"{stamp}                        Wall Time: \S+\n", out.log)
    assert re.search(rf"{stamp}                           Result: SUCCEEDED\n", out.log)
    assert re.search(rf"{stamp} === Task Finished ===\n{stamp} Task Duration: \S+\n", out.log)
    assert "[taskcluster:error]" not in out.log
    backing = out.artifacts["public/logs/live_backing.log"]
    assert backing["contentType"] == "text/plain; charset=utf-8"
    assert backing["storageType"] == "s3"
    _, meta = harness.double.artifact_content(out.task_id, 0, "public/logs/live_backing.log")
    assert meta.get("contentEncoding") == "gzip"
    live = out.artifacts["public/logs/live.log"]
    assert live["storageType"] == "link"
    _, live_meta = harness.double.artifact_content(out.task_id, 0, "public/logs/live.log")
    assert live_meta.get("artifact") == "public/logs/live_backing.log"


async def test_failing_command_fails_and_stops_later_commands(harness: Harness) -> None:
    out = await harness.run({"command": [sh("echo before; exit 3"), ["echo", "never-printed"]], "maxRunTime": 30})
    assert out.state == "failed"
    assert "Exit Code: 3" in out.log
    assert "Result: FAILED" in out.log
    assert "never-printed" not in out.log
    assert out.log.rstrip().endswith("[taskcluster:error] exit status 3")


async def test_missing_and_non_executable_commands_fail(harness: Harness, tmp_path: Any) -> None:
    out = await harness.run({"command": [["/no/such/binary"]], "maxRunTime": 30})
    assert out.state == "failed"
    assert "System error executing command: /no/such/binary" in out.log
    script = tmp_path / "notexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    out = await harness.run({"command": [[str(script)]], "maxRunTime": 30})
    assert out.state == "failed"
    assert "Permission denied" in out.log


async def test_max_run_time_kills_the_process_group_and_fails(harness: Harness, tmp_path: Any) -> None:
    marker = tmp_path / "child-survived"
    script = f"(sleep 3; touch {marker}) & sleep 60"
    out = await harness.run({"command": [sh(script), ["echo", "later-command"]], "maxRunTime": 1})
    assert out.state == "failed"
    assert "Command ABORTED after" in out.log
    assert "later-command" not in out.log
    assert out.log.rstrip().endswith("[taskcluster:error] task aborted - max run time exceeded")
    await asyncio.sleep(3.5)
    assert not marker.exists(), "a child of the aborted command outlived the abort"


async def test_max_run_time_above_worker_limit_is_malformed(harness: Harness) -> None:
    out = await harness.run({"command": [["true"]], "maxRunTime": 301})
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "task's maxRunTime of 301 exceeded allowed maximum of 300" in out.log  # generic-worker's words


async def test_retry_exit_code_is_intermittent_and_queue_retries(harness: Harness) -> None:
    out = await harness.run({"command": [sh("exit 7")], "maxRunTime": 30, "onExitStatus": {"retry": [7]}})
    assert out.status["runs"][0]["state"] == "exception"
    assert out.status["runs"][0]["reasonResolved"] == "intermittent-task"
    assert out.status["runs"][1]["reasonCreated"] == "task-retry"
    assert "exit code 7 found in task payload.onExitStatus list" in out.log


async def test_exit_code_not_in_retry_list_fails(harness: Harness) -> None:
    out = await harness.run({"command": [sh("exit 8")], "maxRunTime": 30, "onExitStatus": {"retry": [7]}})
    assert out.state == "failed"


async def test_malformed_payload_names_the_field(harness: Harness) -> None:
    out = await harness.run({"maxRunTime": 30})
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "[taskcluster:error] TASK FAIL since the task payload is invalid. See errors:" in out.log
    assert "[taskcluster:error] - (root): command is required" in out.log
    out = await harness.run(
        {"command": [["true"]], "maxRunTime": 30, "artifacts": [{"type": "file", "path": "a", "contentEncoding": "br"}]}
    )
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "- artifacts.0.contentEncoding:" in out.log


async def test_features_of_later_issues_are_refused_by_name(harness: Harness) -> None:
    # taskclusterProxy is provided by megalodon-features now: the task runs with it.
    out = await harness.run({"command": [["true"]], "maxRunTime": 30, "features": {"taskclusterProxy": True}})
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    # mounts is provided by megalodon-features now (tests/features/test_mounts*.py).
    mounts = [{"file": "x", "content": {"raw": "hi"}}]
    out = await harness.run({"command": [["cat", "x"]], "maxRunTime": 30, "mounts": mounts})
    assert out.state == "completed", out.log
    assert 'feature "mounts"' not in out.log


async def test_environment_like_generic_workers_insecure_engine(harness: Harness, monkeypatch: Any) -> None:
    monkeypatch.setenv("TASKCLUSTER_ACCESS_TOKEN", "worker-secret-token")
    monkeypatch.setenv("FROM_WORKER", "inherited")
    script = "env | sort; test -t 0 && echo stdin-is-tty; cat; echo pgid=$(ps -o pgid= $$ 2>/dev/null || true)"
    payload = {"command": [sh(script)], "maxRunTime": 30, "env": {"CUSTOM": "x y", "TASK_ID": "overridden"}}
    out = await harness.run(payload, workerLocation='{"cloud":"test"}', instanceType="m5.large")
    assert out.state == "completed", out.log
    assert f"TASK_ID={out.task_id}\n" in out.log
    assert "RUN_ID=0\n" in out.log
    assert re.search(r"TASK_WORKDIR=.*/task_", out.log)
    assert f"TASK_GROUP_ID={out.task_id}\n" in out.log
    assert f"TASKCLUSTER_ROOT_URL={harness.double.root_url}\n" in out.log
    assert 'TASKCLUSTER_WORKER_LOCATION={"cloud":"test"}\n' in out.log
    assert "TASKCLUSTER_INSTANCE_TYPE=m5.large\n" in out.log
    assert "CUSTOM=x y\n" in out.log
    assert "FROM_WORKER=inherited\n" in out.log
    assert "worker-secret-token" not in out.log
    assert "\nstdin-is-tty\n" not in out.log


async def test_file_and_directory_artifacts(harness: Harness) -> None:
    script = (
        "mkdir -p public/dir/sub out; echo hi > public/a.txt; echo '{}' > public/dir/b.json; "
        "echo deep > public/dir/sub/c.log; printf 'PK' > out/d.zip"
    )
    expires = iso(utcnow() + dt.timedelta(hours=5))
    payload = {
        "command": [sh(script)],
        "maxRunTime": 30,
        "artifacts": [
            {"type": "file", "path": "public/a.txt"},
            {"type": "directory", "path": "public/dir", "name": "public/tree", "expires": expires},
            {"type": "file", "path": "out/d.zip", "name": "public/d.zip", "contentType": "application/x-custom"},
        ],
    }
    out = await harness.run(payload)
    assert out.state == "completed", out.log
    a = out.artifacts
    assert a["public/a.txt"]["contentType"] == "text/plain; charset=utf-8"
    assert a["public/tree/b.json"]["contentType"] == "application/json"
    assert a["public/tree/sub/c.log"]["contentType"] == "text/plain"
    assert a["public/d.zip"]["contentType"] == "application/x-custom"
    assert parse_iso(a["public/tree/b.json"]["expires"]) == parse_iso(expires)
    task_expires = parse_iso((await harness.root.task(out.task_id))["expires"])
    assert parse_iso(a["public/a.txt"]["expires"]) == task_expires
    data, meta = harness.double.artifact_content(out.task_id, 0, "public/a.txt")
    assert (data, meta["contentEncoding"]) == (b"hi\n", "gzip")
    data, meta = harness.double.artifact_content(out.task_id, 0, "public/d.zip")
    assert (data, meta["contentEncoding"]) == (b"PK", "identity")


async def test_object_storage_artifacts(harness: Harness) -> None:
    payload = {
        "command": [sh("head -c 20000 /dev/urandom > big.bin; echo small > small.txt")],
        "maxRunTime": 30,
        "artifacts": [
            {"type": "file", "path": "big.bin", "name": "public/big.bin"},
            {"type": "file", "path": "small.txt", "name": "public/small.txt"},
        ],
    }
    out = await harness.run(payload, createObjectArtifacts=True)
    assert out.state == "completed", out.log
    assert out.artifacts["public/big.bin"]["storageType"] == "object"
    assert out.artifacts["public/logs/live_backing.log"]["storageType"] == "object"
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/small.txt")
    assert data == b"small\n"
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/big.bin")
    assert len(data) == 20000


async def test_missing_artifacts_fail_unless_optional(harness: Harness) -> None:
    out = await harness.run(
        {
            "command": [["true"]],
            "maxRunTime": 30,
            "artifacts": [{"type": "file", "path": "nope.txt", "name": "public/nope.txt"}],
        }
    )
    assert out.state == "failed"
    assert out.artifacts["public/nope.txt"]["storageType"] == "error"
    _, meta = harness.double.artifact_content(out.task_id, 0, "public/nope.txt")
    assert meta["reason"] == "file-missing-on-worker"
    assert "TASK FAILURE during artifact upload: file-missing-on-worker: Could not read file" in out.log
    out = await harness.run(
        {
            "command": [["true"]],
            "maxRunTime": 30,
            "artifacts": [{"type": "directory", "path": "nodir", "name": "public/nodir", "optional": True}],
        }
    )
    assert out.state == "completed", out.log
    assert out.artifacts["public/nodir"]["storageType"] == "error"


async def test_file_that_is_a_directory_is_invalid_resource(harness: Harness) -> None:
    out = await harness.run(
        {"command": [sh("mkdir d")], "maxRunTime": 30, "artifacts": [{"type": "file", "path": "d", "name": "public/d"}]}
    )
    assert out.state == "failed"
    assert "invalid-resource-on-worker: File artifact" in out.log


async def test_escaping_artifact_names_are_malformed(harness: Harness) -> None:
    # Paths may be absolute or climb out, as in generic-worker (tests/e2e/test_hostile_tasks.py); names may not.
    for artifact in (
        {"type": "file", "path": "a.txt", "name": "public/../escape.txt"},
        {"type": "file", "path": "a.txt", "name": "/leading-slash.txt"},
    ):
        out = await harness.run({"command": [["true"]], "maxRunTime": 30, "artifacts": [artifact]})
        assert (out.state, out.reason) == ("exception", "malformed-payload"), artifact
        assert "artifacts.0." in out.log


async def test_symlinks_out_of_the_task_directory_are_followed_as_generic_worker(harness: Harness) -> None:
    """The insecure engine's tasks run as the worker's user: they could print the file anyway (the multiuser
    engine reads artifacts as the task user, see test_multiuser.py)."""
    payload = {
        "command": [sh("ln -s /etc/hostname leak.txt; mkdir d; ln -s /etc/hostname d/leak2.txt")],
        "maxRunTime": 30,
        "artifacts": [
            {"type": "file", "path": "leak.txt", "name": "public/leak.txt"},
            {"type": "directory", "path": "d", "name": "public/d"},
        ],
    }
    out = await harness.run(payload)
    assert out.state == "completed", out.log
    hostname = Path("/etc/hostname").read_bytes()
    for name in ("public/leak.txt", "public/d/leak2.txt"):
        data, _ = harness.double.artifact_content(out.task_id, 0, name)
        assert data == hostname, name


async def test_artifact_expiry_outside_task_bounds_is_malformed(harness: Harness) -> None:
    too_late = iso(utcnow() + dt.timedelta(days=400))
    out = await harness.run(
        {"command": [["true"]], "maxRunTime": 30, "artifacts": [{"type": "file", "path": "a", "expires": too_late}]}
    )
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "expires after task expiry" in out.log


async def test_custom_log_names_and_no_live_log(harness: Harness) -> None:
    out = await harness.run(
        {
            "command": [["true"]],
            "maxRunTime": 30,
            "logs": {"backing": "public/logs/custom.log"},
            "features": {"liveLog": False},
        }
    )
    assert out.state == "completed"
    assert "public/logs/custom.log" in out.artifacts
    assert "public/logs/live.log" not in out.artifacts


async def test_reclaims_keep_a_long_task_alive(double: Any, tmp_path: Any) -> None:
    import aiohttp

    from megalodon_core.double import TaskclusterDouble

    async with TaskclusterDouble(claim_timeout=3.0, claim_work_wait=1.0, resolver_interval=0.2) as short:
        async with aiohttp.ClientSession() as session:
            h = Harness(short, tmp_path, session)
            out = await h.run({"command": [sh("sleep 5; echo done")], "maxRunTime": 30})
    assert out.state == "completed", out.log
    assert short.calls["reclaimTask"] >= 2
    assert len(out.status["runs"]) == 1


async def test_cancelled_task_is_killed_and_not_reported(harness: Harness, tmp_path: Any) -> None:
    from megalodon_core.double import TaskclusterDouble

    async with TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as short:
        async with __import__("aiohttp").ClientSession() as session:
            h = Harness(short, tmp_path, session)

            async def cancel_soon(task_id: str) -> None:
                await asyncio.sleep(1.5)
                short.cancel_task(task_id)

            started = asyncio.get_running_loop().time()
            out = await h.run({"command": [sh("sleep 60")], "maxRunTime": 120}, during=cancel_soon)
            elapsed = asyncio.get_running_loop().time() - started
    assert (out.status["runs"][0]["state"], out.status["runs"][0]["reasonResolved"]) == ("exception", "canceled")
    assert elapsed < 30, "the cancelled task was not killed promptly"
    assert short.calls["reportCompleted"] == short.calls["reportFailed"] == short.calls["reportException"] == 0


async def test_worker_survives_transient_faults(harness: Harness) -> None:
    from megalodon_core.double import Fault

    harness.double.faults.add(Fault(method="claimWork", status=500, times=2))
    harness.double.faults.add(Fault(method="createArtifact", status=503, times=1))
    harness.double.faults.add(Fault(method="reportCompleted", reset=True, times=1))
    out = await harness.run({"command": [["echo", "ok"]], "maxRunTime": 30})
    assert out.state == "completed", out.log


async def test_injected_reclaim_409_cancels_the_run(tmp_path: Any) -> None:
    import aiohttp

    from megalodon_core.double import Fault, TaskclusterDouble

    async with TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as short:
        short.faults.add(Fault(method="reclaimTask", status=409, times=1))
        async with aiohttp.ClientSession() as session:
            h = Harness(short, tmp_path, session)
            out = await h.run({"command": [sh("sleep 30")], "maxRunTime": 60})
    assert short.calls["reportCompleted"] == short.calls["reportFailed"] == 0
    assert out.exit_code == 0


async def test_backing_log_is_gzip_on_the_wire(harness: Harness) -> None:
    out = await harness.run({"command": [sh("seq 1 2000")], "maxRunTime": 30})
    data, meta = harness.double.artifact_content(out.task_id, 0, "public/logs/live_backing.log")
    assert meta["contentEncoding"] == "gzip"
    assert b"\n2000\n" in data
    assert gzip.compress(data)  # content is the decoded text


async def test_credentials_never_reach_the_task_log(harness: Harness) -> None:
    worker_type = harness.worker_type()
    config = harness.config(worker_type)
    token = config["accessToken"]
    script = 'echo "worker token: $LEAK"; printf "%s" "$LEAK" | cut -c1-10; printf "%s" "$LEAK" | cut -c11-'
    task_id = await harness.create({"command": [sh(script)], "maxRunTime": 30, "env": {"LEAK": token}}, worker_type)
    from megalodon_core.config import parse_config
    from megalodon_core.plugins import PluginHost
    from megalodon_core.worker import Worker

    assert await Worker(parse_config(config), PluginHost()).run() == 0
    out = await harness.outcome(task_id, 0)
    assert token not in out.log
    assert "worker token: [REDACTED]" in out.log
