"""The worker's own log (issue 12): without ``-v`` it says what the worker does — start-up summary, each claim,
each resolution, shutdown and its cause — to stderr and to worker-runner as ``log`` messages; ``-v`` adds
debug; no line ever holds a credential of the run."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import taskcluster
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import make_task

from ..helpers.procs import write_worker_config

MEGALODON = [sys.executable, "-m", "megalodon_core"]
CAPABILITIES = ["graceful-termination", "new-credentials", "log", "error-report", "shutdown"]


def write_config(tmp_path: Path, double: TaskclusterDouble, worker_type: str, **extra: Any) -> tuple[Path, str]:
    """The shared worker config, and the worker's access token the log must never show."""
    path = write_worker_config(double, tmp_path, worker_type, **extra)
    return path, json.loads(path.read_text())["accessToken"]


def record_task_credentials(double: TaskclusterDouble) -> list[dict[str, str]]:
    """Every temporary credential the queue hands this worker (claims and reclaims)."""
    issued: list[dict[str, str]] = []
    mint = double.queue.task_credentials

    def recording(task: Any, run: Any) -> dict[str, str]:
        creds = mint(task, run)
        issued.append(creds)
        return creds

    double.queue.task_credentials = recording  # type: ignore[method-assign]
    return issued


def secrets_of(worker_token: str, issued: list[dict[str, str]]) -> list[str]:
    found = [worker_token]
    for creds in issued:
        found += [creds["accessToken"], creds["certificate"]]
        found += [str(v) for v in json.loads(creds["certificate"]).values() if isinstance(v, str) and len(v) > 20]
    assert len(found) > 1, "no task credentials were issued"
    return found


async def create(double: TaskclusterDouble, worker_type: str, command: str) -> str:
    queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    task_id: str = taskcluster.slugId()
    # The task prints its own credentials: the task log masks them, the worker's log never has them.
    script = f"{command}; echo $TASKCLUSTER_ACCESS_TOKEN"
    await queue.createTask(task_id, make_task({"command": [["/bin/sh", "-c", script]], "maxRunTime": 30}, worker_type))
    return task_id


async def test_full_run_under_worker_runner_sends_its_log_without_v(double: TaskclusterDouble, tmp_path: Path) -> None:
    worker_type = "wlog-runner"
    issued = record_task_credentials(double)
    config, token = write_config(tmp_path, double, worker_type, numberOfTasksToRun=1)
    task_id = await create(double, worker_type, "echo hello")
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "run", "--with-worker-runner", "--config", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"~" + json.dumps({"type": "welcome", "capabilities": CAPABILITIES}).encode() + b"\n")
        await proc.stdin.drain()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    messages = [json.loads(line[1:]) for line in out.decode().splitlines() if line.startswith("~")]
    lines = [m["body"]["textPayload"] for m in messages if m["type"] == "log"]
    text = "\n".join(lines)
    summary = next((line for line in lines if " started: executors " in line), None)
    assert summary is not None, text
    assert "worker g/w of pool megalodon-test/wlog-runner" in summary
    assert "executors native;" in summary and "liveLog" in summary and "capacity 1, numberOfTasksToRun 1" in summary
    assert re.search(r"listening: .*liveLog 127\.0\.0\.1:\d+", summary), summary
    assert f"task {task_id}/0 claimed (executor native)" in text
    assert re.search(rf"task {task_id}/0 resolved completed/completed in [\d.]+s \(\d+ artifacts?, \d+ bytes", text)
    assert "worker exiting with code 0 (numberOfTasksToRun tasks resolved) after 1 resolved tasks" in text
    assert not any(" DEBUG " in line for line in lines), "debug lines without -v"
    assert double.task_state(task_id)["state"] == "completed"
    for secret in secrets_of(token, issued):
        assert secret not in out.decode() and secret not in err.decode()


async def test_stderr_log_of_a_plain_run_and_v_adds_debug(double: TaskclusterDouble, tmp_path: Path) -> None:
    worker_type = "wlog-stderr"
    issued = record_task_credentials(double)
    config, token = write_config(tmp_path, double, worker_type, numberOfTasksToRun=1, metricsPort=0)
    task_id = await create(double, worker_type, "exit 3")
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "run", "--config", str(config), stderr=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    log = err.decode()
    assert proc.returncode == 0, log
    assert re.search(r"listening: metrics http://127\.0\.0\.1:\d+, liveLog", log), log
    assert f"task {task_id}/0 claimed" in log
    assert f"task {task_id}/0 resolved failed/failed in" in log
    assert " DEBUG " not in log

    # -v: the same, plus debug lines.
    task_id = await create(double, worker_type, "true")
    # A fresh state directory: the resolved-task count of the first run is persisted in the old one.
    config.write_text(json.dumps({**json.loads(config.read_text()), "stateDir": str(tmp_path / "state-v")}))
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "-v", "run", "--config", str(config), stderr=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    verbose = err.decode()
    assert proc.returncode == 0, verbose
    assert f"task {task_id}/0 resolved completed/completed" in verbose
    assert " DEBUG " in verbose
    for secret in secrets_of(token, issued):
        assert secret not in log and secret not in verbose


async def test_sigterm_while_a_task_runs_is_logged_with_its_cause(double: TaskclusterDouble, tmp_path: Path) -> None:
    worker_type = "wlog-sigterm"
    config, _ = write_config(tmp_path, double, worker_type)
    task_id = await create(double, worker_type, "sleep 60")
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "run", "--config", str(config), stderr=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 60
        while not (runs := double.task_state(task_id)["runs"]) or runs[0]["state"] != "running":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    log = err.decode()
    assert proc.returncode == 72, log
    assert "stopping (SIGTERM): no more claims; 1 running tasks are aborted (worker-shutdown)" in log
    assert f"task {task_id}/0 resolved exception/worker-shutdown" in log
    assert "worker exiting with code 72 (SIGTERM)" in log
