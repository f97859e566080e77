"""Drain: SIGUSR1 / ``megalodon drain`` — no new claim, running tasks finish and report, exit 0.

A real ``megalodon run`` process against the double, real signals, ``/healthz`` over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from megalodon_core.double import TaskclusterDouble

from ..helpers.procs import MEGALODON, create_task, sh, wait_for, write_worker_config

WORKER_TYPE = "drain"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def create(double: TaskclusterDouble, script: str) -> str:
    """A task of the drain pool running ``script``."""
    return await create_task(double, {"command": [sh(script)], "maxRunTime": 120}, WORKER_TYPE, retries=0)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEGALODON, *args], capture_output=True, text=True, check=False, timeout=60)


async def status(state_dir: Path) -> dict[str, Any]:
    """``megalodon status`` (in a thread: the double answering the worker runs on this loop)."""
    done = await asyncio.to_thread(cli, "status", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


async def until_draining(state_dir: Path, limit: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while (doc := await status(state_dir)).get("state") != "draining":
        if time.monotonic() > deadline:
            raise AssertionError(f"megalodon status never said draining: {doc}")
        await asyncio.sleep(0.1)
    return doc


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
        return resp.status, await resp.json()


async def test_drain_lets_the_running_task_finish_claims_nothing_more_and_exits_0(
    double: TaskclusterDouble, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    port = free_port()
    cfg = write_worker_config(double, tmp_path, WORKER_TYPE, capacity=1, metricsPort=port)
    running = await create(double, f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; echo finished")
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "run", "--config", str(cfg), cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_for(started.exists)
        # Pending behind the running task: a worker that is not draining would claim it next.
        waiting = await create(double, "echo should never run")
        drained = await asyncio.to_thread(cli, "drain", "--state-dir", str(tmp_path / "state"))
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["pid"] == proc.pid
        doc = await until_draining(tmp_path / "state")
        assert doc == {"currentTaskIds": [running], "pid": proc.pid, "state": "draining"}
        code, doc = await healthz(port)
        assert (code, doc["status"], doc["state"], doc["runningTasks"]) == (200, "ok", "draining", [running])
        assert proc.returncode is None, "a drain must wait for the running task"
        release.touch()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "worker exiting with code 0 (drain)" in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    run0 = double.task_state(running)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("completed", "completed")
    assert double.artifact_content(running, 0, "public/logs/live_backing.log")[0]  # the log was uploaded
    assert double.task_state(waiting)["runs"][0]["state"] == "pending", "the draining worker claimed a new task"
    # The worker is gone: its state file with it, so drain and status say so.
    assert not (tmp_path / "state" / "megalodon-worker.json").exists()
    again = await asyncio.to_thread(cli, "drain", "--state-dir", str(tmp_path / "state"))
    assert again.returncode == 2 and "no running megalodon worker" in again.stderr
    assert "state" not in await status(tmp_path / "state")


async def test_sigterm_after_sigusr1_is_still_worker_shutdown(double: TaskclusterDouble, tmp_path: Path) -> None:
    started = tmp_path / "started"
    cfg = write_worker_config(double, tmp_path, WORKER_TYPE, capacity=1)
    task_id = await create(double, f"touch {started}; sleep 60")
    proc = await asyncio.create_subprocess_exec(*MEGALODON, "run", "--config", str(cfg), cwd=tmp_path)
    try:
        await wait_for(started.exists)
        proc.send_signal(signal.SIGUSR1)
        await until_draining(tmp_path / "state")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 72
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    run0 = double.task_state(task_id)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("exception", "worker-shutdown")
