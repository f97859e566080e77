"""megalodon run under worker-runner: a scripted runner peer over real pipes (stdin/stdout and FIFOs)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import taskcluster

from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import make_task

from ..helpers.procs import write_worker_config

MEGALODON = [sys.executable, "-m", "megalodon_core"]


class Runner:
    """The runner side: writes ``~{json}`` lines to the worker, reads its messages."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.messages: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("~"):
                self.messages.append(json.loads(line[1:]))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"~" + json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def wait_for(self, predicate: Any, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            assert time.monotonic() < deadline, f"runner did not see it; messages: {self.messages[-5:]}"
            await asyncio.sleep(0.05)


async def start(tmp_path: Path, config: Path) -> Runner:
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "-v", "run", "--with-worker-runner", "--config", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    runner = Runner(proc)
    RUNNERS.append(runner)
    return runner


RUNNERS: list[Runner] = []


@pytest.fixture(autouse=True)
def _no_stray_workers() -> Any:
    """A failing test must not leave its worker process polling a stopped double."""
    yield
    while RUNNERS:
        runner = RUNNERS.pop()
        if runner.proc.returncode is None:
            runner.proc.kill()


CAPABILITIES = ["graceful-termination", "new-credentials", "log", "error-report", "shutdown"]


async def test_handshake_new_credentials_and_graceful_termination(double: TaskclusterDouble, tmp_path: Path) -> None:
    worker_type = "wr-graceful"
    runner = await start(tmp_path, write_worker_config(double, tmp_path, worker_type))
    await runner.send({"type": "welcome", "capabilities": [*CAPABILITIES, "something-new"]})
    await runner.wait_for(lambda: runner.of_type("hello"))
    hello = runner.of_type("hello")[0]
    assert set(hello["capabilities"]) == set(CAPABILITIES)
    # The worker's own log reaches the runner as log messages.
    await runner.wait_for(lambda: runner.of_type("log"))
    assert all("textPayload" in m["body"] for m in runner.of_type("log"))

    # new-credentials mid-flight: the old client is then revoked, so claiming only works with the new one.
    old_client = json.loads((tmp_path / "worker.json").read_text())["clientId"]
    new = double.add_client(
        "worker/rotated", secrets.token_urlsafe(33),
        list(double.auth.clients[old_client].scopes),
    )  # fmt: skip
    await runner.send({"type": "new-credentials", "client-id": new["clientId"], "access-token": new["accessToken"]})
    await asyncio.sleep(0.5)
    explain = await asyncio.create_subprocess_exec(
        *MEGALODON, "config", "explain", "--config", str(tmp_path / "worker.json"), "--json",
        stdout=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    rows = {r["key"]: r for r in json.loads((await explain.communicate())[0])}
    assert rows["clientId"] == {"key": "clientId", "value": "worker/rotated", "source": "worker-runner"}
    assert rows["accessToken"]["value"] == "<set>" and rows["workerType"]["source"] == "file"
    assert new["accessToken"] not in (tmp_path / "state" / "worker-runner-config.json").read_text()
    del double.auth.clients[old_client]
    queue = taskcluster.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    task_id = taskcluster.slugId()
    script = "echo started; sleep 30; echo finished"
    await asyncio.to_thread(
        queue.createTask, task_id, make_task({"command": [["/bin/sh", "-c", script]], "maxRunTime": 60}, worker_type)
    )
    await runner.wait_for(lambda: double.task_state(task_id)["runs"][0]["state"] == "running")
    await runner.send({"type": "graceful-termination", "finish-tasks": False})
    assert await asyncio.wait_for(runner.proc.wait(), 60) == 72
    run0 = double.task_state(task_id)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("exception", "worker-shutdown")
    assert run0["workerId"] == "w"
    assert not runner.of_type("shutdown"), "exit 72 must not shut the machine down"


async def test_worker_manager_terminate_sends_shutdown(double: TaskclusterDouble, tmp_path: Path) -> None:
    worker_type = "wr-terminate"
    runner = await start(tmp_path, write_worker_config(double, tmp_path, worker_type))
    await runner.send({"type": "welcome", "capabilities": CAPABILITIES})
    await runner.wait_for(lambda: runner.of_type("hello"))
    double.worker_manager.set_should_terminate(f"megalodon-test/{worker_type}", "g", "w", True)
    assert await asyncio.wait_for(runner.proc.wait(), 60) == 70
    await runner.wait_for(lambda: runner.of_type("shutdown"), 5)


async def test_graceful_termination_finishing_tasks(double: TaskclusterDouble, tmp_path: Path) -> None:
    worker_type = "wr-finish"
    runner = await start(tmp_path, write_worker_config(double, tmp_path, worker_type))
    await runner.send({"type": "welcome", "capabilities": ["graceful-termination"]})
    await runner.wait_for(lambda: runner.of_type("hello"))
    queue = taskcluster.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    task_id = taskcluster.slugId()
    await asyncio.to_thread(
        queue.createTask, task_id, make_task({"command": [["/bin/sh", "-c", "sleep 2"]], "maxRunTime": 60}, worker_type)
    )
    await runner.wait_for(lambda: double.task_state(task_id)["runs"][0]["state"] == "running")
    await runner.send({"type": "graceful-termination", "finish-tasks": True})
    assert await asyncio.wait_for(runner.proc.wait(), 60) == 71
    assert double.task_state(task_id)["runs"][0]["state"] == "completed"
    assert not runner.of_type("log"), "log messages without the log capability"


async def test_protocol_pipe_fifos(double: TaskclusterDouble, tmp_path: Path) -> None:
    pipe = tmp_path / "proto"
    os.mkfifo(f"{pipe}-input")  # worker -> runner (generic-worker names the pipes from the runner's side)
    os.mkfifo(f"{pipe}-output")  # runner -> worker
    config = write_worker_config(double, tmp_path, "wr-pipe")
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "-v", "run", "--with-worker-runner",
        "--worker-runner-protocol-pipe", str(pipe), "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    to_worker = await loop.run_in_executor(None, lambda: open(f"{pipe}-output", "wb", buffering=0))  # noqa: SIM115
    from_worker = await loop.run_in_executor(None, lambda: open(f"{pipe}-input", "rb"))  # noqa: SIM115
    try:
        welcome = {"type": "welcome", "capabilities": CAPABILITIES}
        await loop.run_in_executor(None, to_worker.write, b"~" + json.dumps(welcome).encode() + b"\n")
        line = await asyncio.wait_for(loop.run_in_executor(None, from_worker.readline), 30)
        hello = json.loads(line[1:])
        assert hello["type"] == "hello" and set(hello["capabilities"]) == set(
            CAPABILITIES
        )  # its own, as generic-worker
        stop = {"type": "graceful-termination", "finish-tasks": True}
        await loop.run_in_executor(None, to_worker.write, b"~" + json.dumps(stop).encode() + b"\n")
        assert await asyncio.wait_for(proc.wait(), 30) == 71
    finally:
        if proc.returncode is None:
            proc.kill()
        to_worker.close()
        from_worker.close()


async def test_metrics_and_healthz_endpoint(double: TaskclusterDouble, tmp_path: Path) -> None:
    import re

    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    worker_type = "metrics"
    config = write_worker_config(double, tmp_path, worker_type, metricsPort=0, idleTimeoutSecs=4)
    queue = taskcluster.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    task_id = taskcluster.slugId()
    await asyncio.to_thread(
        queue.createTask, task_id, make_task({"command": [["/bin/sh", "-c", "exit 3"]], "maxRunTime": 60}, worker_type)
    )
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON, "-v", "run", "--config", str(config), cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    url = None
    try:
        while url is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "worker exited before announcing its metrics endpoint"
            if m := re.search(r"metrics on (http://[^/\s]+)", line):
                url = m.group(1)
        deadline = time.monotonic() + 30
        while double.task_state(task_id)["state"] != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            async with session.get(f"{url}/healthz") as resp:
                assert resp.status == 200
                health = await resp.json()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("megalodon_tasks_claimed_total", ())] == 1
        assert samples[("megalodon_tasks_resolved_total", (("reason", "failed"), ("state", "failed")))] == 1
        assert samples[("megalodon_task_duration_seconds_count", ())] == 1
        assert samples[("megalodon_bytes_uploaded_total", ())] > 0
        assert any(name == "megalodon_queue_call_seconds_count" for name, _ in samples)
        assert health["status"] == "ok" and health["runningTasks"] == [] and health["resolvedTasks"] == 1
        assert await asyncio.wait_for(proc.wait(), 30) == 68
    finally:
        if proc.returncode is None:
            proc.kill()
