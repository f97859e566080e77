"""The docker executor's worker-lifetime half: building it touches no engine; ``initialise`` connects and sweeps.

Commands and code paths that only build executors must not reach the engine (let alone remove containers),
so the connection and the leftover-container sweep belong to :meth:`DockerExecutor.initialise`, which the
worker calls once before its first claim.  An engine that does not answer there stops a worker configured
for docker, and leaves an ``auto`` worker running its other executors.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import docker.errors
import pytest

from megalodon_core.config import parse_config
from megalodon_core.contracts import ExecutorUnavailable, TaskExecutor
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker.executor_choice import initialise_executors
from megalodon_docker.executor import LABEL, LABEL_OWNER, LABEL_WORKER, DockerExecutor

BUSYBOX = "megalodon-test/busybox:latest"


class EngineSocket:
    """A Unix socket standing in for the engine that counts connections and answers nothing useful."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> EngineSocket:
        self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _worker(tmp_path: Path, host: str | None = None, worker_id: str = "w") -> Any:
    data: dict[str, Any] = {
        "rootURL": "http://127.0.0.1:1",
        "clientId": "c",
        "accessToken": "a",
        "workerGroup": "lifetime",
        "workerId": worker_id,
        "workerType": "t",
        "provisionerId": "p",
        "tasksDir": str(tmp_path / "tasks"),
        "cachesDir": str(tmp_path / "caches"),
        "downloadsDir": str(tmp_path / "downloads"),
    }
    if host is not None:
        data["dockerConfig"] = {"host": host, "apiTimeoutSeconds": 10}
    return SimpleNamespace(config=parse_config(data, PluginHost().config_fields()))


@pytest.fixture
async def engine_socket(tmp_path: Path) -> AsyncIterator[EngineSocket]:
    async with EngineSocket(tmp_path / "engine.sock") as sock:
        yield sock


async def test_constructing_makes_no_engine_call(tmp_path: Path, engine_socket: EngineSocket) -> None:
    executor = DockerExecutor(_worker(tmp_path, f"unix://{engine_socket.path}"))
    try:
        await asyncio.sleep(0.2)  # anything the constructor started in the background has had its chance
        assert engine_socket.connections == 0
        with pytest.raises(RuntimeError, match=r"before its initialise\(\)"):
            _ = executor.client
        # initialise is what reaches the engine; this one does not answer, so it is unavailable, named
        with pytest.raises(ExecutorUnavailable, match=f"the Docker engine at unix://{engine_socket.path}"):
            await executor.initialise()
        assert engine_socket.connections >= 1
    finally:
        await executor.close()


async def test_initialise_sweeps_a_crashed_runs_containers(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    worker_id = f"lifetime-{uuid.uuid4().hex[:10]}"
    labels = {LABEL: "x/0", LABEL_WORKER: f"lifetime/{worker_id}", LABEL_OWNER: str(dead.pid)}
    leftover = docker_client.containers.create(BUSYBOX, ["sleep", "60"], labels=labels)
    executor = DockerExecutor(_worker(tmp_path, worker_id=worker_id))
    try:
        await asyncio.sleep(0.2)
        assert docker_client.containers.get(leftover.id).status == "created"  # construction kept it
        await executor.initialise()
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(leftover.id)
    finally:
        await executor.close()
        try:
            leftover.remove(force=True)
        except docker.errors.NotFound:
            pass


class _Unavailable(TaskExecutor):
    name = "gone"
    closed = False

    async def initialise(self) -> None:
        raise ExecutorUnavailable("no engine here")

    async def close(self) -> None:
        type(self).closed = True


class _Fine(TaskExecutor):
    name = "fine"
    initialised = False

    async def initialise(self) -> None:
        type(self).initialised = True


async def test_auto_worker_drops_an_unavailable_executor_and_configured_one_stops(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    executors: dict[str, TaskExecutor] = {"gone": _Unavailable(worker), "fine": _Fine(worker)}
    await initialise_executors(worker.config, executors)  # executor "auto" (the default)
    assert list(executors) == ["fine"] and _Fine.initialised and _Unavailable.closed

    fixed = parse_config(worker.config.model_dump() | {"executor": "gone"}, PluginHost().config_fields())
    with pytest.raises(ExecutorUnavailable, match="no engine here"):
        await initialise_executors(fixed, {"gone": _Unavailable(worker)})


async def test_auto_worker_without_an_engine_runs_native_tasks(harness: Harness, tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path / 'no-engine.sock'}"
    out = await harness.run({"command": [["echo", "native-ok"]], "maxRunTime": 30}, dockerConfig={"host": nowhere})
    assert out.state == "completed", out.log
    docker_task = await harness.run(
        {"image": BUSYBOX, "command": ["true"], "maxRunTime": 30}, dockerConfig={"host": nowhere}
    )
    assert (docker_task.state, docker_task.reason) == ("exception", "malformed-payload"), docker_task.log
