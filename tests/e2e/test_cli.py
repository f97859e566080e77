"""The megalodon command as users run it: run-task, validate-payload, show-payload-schema, run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..helpers.procs import write_worker_config

REPO = Path(__file__).resolve().parents[2]
MEGALODON = [sys.executable, "-m", "megalodon_core"]


def megalodon(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEGALODON, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_run_task_example_end_to_end(tmp_path: Path) -> None:
    proc = megalodon("run-task", str(REPO / "examples" / "hello.yml"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "completed"
    assert summary["reasonResolved"] == "completed"
    out = tmp_path / "megalodon-out" / summary["taskId"]
    assert Path(summary["log"]) == Path("megalodon-out") / summary["taskId"] / "public/logs/live_backing.log"
    log = (tmp_path / summary["log"]).read_text()
    assert "hello from megalodon" in log and "=== Task Finished ===" in log
    assert json.loads((out / "public" / "result.json").read_text()) == {"ok": True}
    names = {a["name"]: a for a in summary["artifacts"]}
    assert names["public/result.json"]["contentType"] == "application/json"
    assert names["public/result.json"]["storageType"] == "s3"
    assert names["public/logs/live.log"]["storageType"] == "link"
    assert json.loads((out / "summary.json").read_text())["taskId"] == summary["taskId"]


def test_run_task_exit_codes_follow_resolution(tmp_path: Path) -> None:
    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps({"command": [["/bin/sh", "-c", "exit 1"]], "maxRunTime": 10}))
    proc = megalodon("run-task", str(failing), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed" in proc.stdout
    malformed = tmp_path / "malformed.yml"
    malformed.write_text("payload:\n  command: [[true]]\n  maxRunTime: -1\n")
    proc = megalodon("run-task", str(malformed), "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["reasonResolved"] == "malformed-payload"


def test_run_task_rejects_unreadable_input(tmp_path: Path) -> None:
    proc = megalodon("run-task", str(tmp_path / "missing.yml"), cwd=tmp_path)
    assert proc.returncode == 64
    assert "cannot read task file" in proc.stderr


def test_validate_payload_prints_field_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"command": [["true"]], "maxRunTime": "5", "artifacts": [{"type": "dir", "path": "x"}]}))
    proc = megalodon("validate-payload", str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    assert "- maxRunTime:" in proc.stdout
    assert "- artifacts.0.type:" in proc.stdout
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"command": [["true"]], "maxRunTime": 5}))
    proc = megalodon("validate-payload", str(good), cwd=tmp_path)
    assert proc.returncode == 0
    assert "valid native payload" in proc.stdout


def test_show_payload_schema(tmp_path: Path) -> None:
    proc = megalodon("show-payload-schema", "--executor", "native", cwd=tmp_path)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    # generic-worker's published schema: its payload branch first, then the docker-worker branch (d2g)
    assert set(schema["oneOf"][0]["required"]) == {"command", "maxRunTime"}
    proc = megalodon("show-payload-schema", "--executor", "nope", cwd=tmp_path)
    assert proc.returncode == 2


@pytest.mark.parametrize(
    ("sig", "code", "state", "reason"),
    [
        (signal.SIGTERM, 72, "exception", "worker-shutdown"),
        (signal.SIGINT, 71, "completed", "completed"),
    ],
)
async def test_signals_stop_the_worker_like_generic_worker(
    tmp_path: Path, sig: signal.Signals, code: int, state: str, reason: str
) -> None:
    import asyncio

    import aiohttp
    import taskcluster
    import taskcluster.aio

    from megalodon_core.double import TaskclusterDouble
    from megalodon_core.testing import make_task

    async with TaskclusterDouble(claim_work_wait=1.0) as double, aiohttp.ClientSession() as session:
        worker_type = f"signal-{sig.name.lower()}"
        root = taskcluster.aio.Queue(
            {"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session
        )
        task_id = taskcluster.slugId()
        await root.createTask(
            task_id,
            make_task({"command": [["/bin/sh", "-c", "sleep 3; echo finished"]], "maxRunTime": 60}, worker_type),
        )
        cfg = write_worker_config(double, tmp_path, worker_type)
        proc = await asyncio.create_subprocess_exec(
            *MEGALODON, "run", "--config", str(cfg), cwd=tmp_path, env={**os.environ}
        )
        deadline = time.monotonic() + 30
        while double.task_state(task_id)["runs"][0]["state"] == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 60) == code
        run0 = double.task_state(task_id)["runs"][0]
        assert (run0["state"], run0.get("reasonResolved")) == (state, reason)
        data, _ = double.artifact_content(task_id, 0, "public/logs/live_backing.log")
        assert (b"\nfinished\n" in data) == (sig == signal.SIGINT)
