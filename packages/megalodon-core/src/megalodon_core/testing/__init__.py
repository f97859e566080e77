"""Pytest fixtures for megalodon and its plugins: the Taskcluster double on loopback and a real worker.

Shipped with the core (like devpi's fixtures) so third-party executor and feature test suites can reuse
them: ``pytest_plugins = ["megalodon_core.testing"]`` in a root ``conftest.py``.  Everything goes through
real HTTP with the unmodified ``taskcluster`` client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.config import parse_config
from megalodon_core.double import PUBLIC_ARTIFACTS, TaskclusterDouble
from megalodon_core.plugins import PluginHost
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker import Worker

PROVISIONER = "megalodon-test"


@dataclass
class Outcome:
    task_id: str
    status: dict[str, Any]
    log: str
    exit_code: int
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """The first run's state: what the worker under test decided (later runs are retries)."""
        return str(self.status["runs"][0]["state"] if self.status["runs"] else self.status["state"])

    @property
    def reason(self) -> str:
        return str(self.status["runs"][0].get("reasonResolved", ""))


def make_task(payload: Any, worker_type: str, **overrides: Any) -> dict[str, Any]:
    now = utcnow()
    task: dict[str, Any] = {
        "taskQueueId": f"{PROVISIONER}/{worker_type}",
        "schedulerId": "test-scheduler",
        "created": iso(now),
        "deadline": iso(now + dt.timedelta(hours=1)),
        "expires": iso(now + dt.timedelta(days=1)),
        "scopes": [],
        "payload": payload,
        "metadata": {"name": "t", "description": "d", "owner": "test@example.com", "source": "https://example.com/"},
    }
    task.update(overrides)
    return task


class Harness:
    """Create tasks, run a worker against them, read results back — all over real HTTP."""

    def __init__(self, double: TaskclusterDouble, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        self.double = double
        self.tmp_path = tmp_path
        self.root = taskcluster.aio.Queue(
            {"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session
        )
        self.counter = 0
        #: Unique per harness: executors sweep leftovers by worker id, and tests may run side by side.
        self.worker_id = f"test-worker-{uuid.uuid4().hex[:8]}"

    def config(self, worker_type: str, **overrides: Any) -> dict[str, Any]:
        creds = self.double.worker_credentials(PROVISIONER, worker_type, "test-group", self.worker_id)
        cfg: dict[str, Any] = {
            "rootURL": self.double.root_url,
            "clientId": creds["clientId"],
            "accessToken": creds["accessToken"],
            "provisionerId": PROVISIONER,
            "workerType": worker_type,
            "workerGroup": "test-group",
            "workerId": self.worker_id,
            "tasksDir": str(self.tmp_path / "tasks"),
            "stateDir": str(self.tmp_path / f"state-{worker_type}"),
            "requiredDiskSpaceMegabytes": 16,
            "cachesDir": str(self.tmp_path / "caches"),
            "downloadsDir": str(self.tmp_path / "downloads"),
            "numberOfTasksToRun": 1,
            "maxTaskRunTime": 300,
            "cleanUpTaskDirs": False,
        }
        if creds.get("certificate"):
            cfg["certificate"] = creds["certificate"]
        cfg.update(overrides)
        return cfg

    def worker_type(self) -> str:
        self.counter += 1
        return f"e2e-{self.counter}"

    async def create(self, payload: Any, worker_type: str, **task_overrides: Any) -> str:
        task_id: str = taskcluster.slugId()
        await self.root.createTask(task_id, make_task(payload, worker_type, **task_overrides))
        return task_id

    async def outcome(self, task_id: str, exit_code: int) -> Outcome:
        status = (await self.root.status(task_id))["status"]
        artifacts: dict[str, dict[str, Any]] = {}
        log = ""
        for run in status["runs"]:
            if run.get("state") in ("pending", "running"):
                continue
            listing = await self.root.listArtifacts(task_id, str(run["runId"]))
            for a in listing["artifacts"]:
                artifacts[a["name"]] = a
        if "public/logs/live_backing.log" in artifacts:
            data, _ = self.double.artifact_content(task_id, 0, "public/logs/live_backing.log")
            log = data.decode(errors="replace")
        return Outcome(task_id, status, log, exit_code, artifacts)

    async def run(
        self,
        payload: Any,
        *,
        task: dict[str, Any] | None = None,
        during: Callable[[str], Awaitable[None]] | None = None,
        **config: Any,
    ) -> Outcome:
        worker_type = self.worker_type()
        task_id = await self.create(payload, worker_type, **(task or {}))
        host = PluginHost()
        worker = Worker(parse_config(self.config(worker_type, **config), host.config_fields()), host)
        if during is None:
            code = await asyncio.wait_for(worker.run(), 120)
        else:
            running = asyncio.create_task(worker.run())
            await during(task_id)
            code = await asyncio.wait_for(running, 120)
        return await self.outcome(task_id, code)


@pytest.fixture
async def double() -> AsyncIterator[TaskclusterDouble]:
    async with TaskclusterDouble(claim_work_wait=1.0, resolver_interval=0.2, anonymous_scopes=PUBLIC_ARTIFACTS) as d:
        yield d


@pytest.fixture
async def harness(double: TaskclusterDouble, tmp_path: Path) -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        yield Harness(double, tmp_path, session)
