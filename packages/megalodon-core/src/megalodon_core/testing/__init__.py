"""Pytest plugin for megalodon and its plugins: the Taskcluster double on loopback and a real worker.

Shipped with the core (like devpi's fixtures, or pytest's own ``pytester``) so third-party executor and
feature test suites reuse what the repository's own tests use.  Install it with the ``testing`` extra::

    pip install 'megalodon-core[testing]'     # brings pytest and pytest-asyncio

The extra registers this module as a pytest plugin (entry point ``megalodon_core.testing`` in group
``pytest11``), so its fixtures are available in any test suite of that environment without a
``conftest.py`` line.  (``pytest_plugins = ["megalodon_core.testing"]`` still works and is a no-op then.)

Fixtures:

- ``double``: a :class:`~megalodon_core.double.TaskclusterDouble` served on 127.0.0.1 (queue, auth, object,
  secrets, index, worker-manager) with a 1 s claimWork wait; artifacts under ``public/`` are anonymous.
- ``harness``: a :class:`Harness` on that double: create a task with the real ``taskcluster`` client, run an
  unmodified :class:`~megalodon_core.worker.Worker` (every installed plugin loaded) until it has resolved
  the task, and read back the :class:`Outcome` (status, backing log, artifacts) over HTTP.
- ``executor_kit`` is *yours*: :mod:`megalodon_core.testing.conformance` runs the executor conformance
  suite against the executor it describes.

asyncio setup: the fixtures and the conformance tests are declared with pytest-asyncio's explicit markers
(``@pytest_asyncio.fixture``, ``@pytest.mark.asyncio``), so they work in both ``asyncio_mode = "strict"``
(pytest-asyncio's default) and ``"auto"`` (what this repository uses).  Every fixture and test runs on a
**function-scoped** event loop: a test gets a fresh loop, a fresh double on a fresh port and a fresh worker,
so nothing leaks between tests.  Keep your own async fixtures function-scoped too
(``asyncio_default_fixture_loop_scope = "function"`` in your pytest configuration silences
pytest-asyncio's warning), or they will live on a different loop than the double.
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
from megalodon_core.task import TaskRun
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker import Worker

PROVISIONER = "megalodon-test"

try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # the entry point loads this module wherever pytest and megalodon-core are installed

    def async_fixture(func: Any) -> Any:  # type: ignore[no-redef]
        """Without pytest-asyncio the fixtures cannot run: say how to get it instead of breaking pytest."""

        @pytest.fixture(name=func.__name__)
        def missing() -> None:
            raise pytest.UsageError(
                f"fixture {func.__name__!r} of megalodon_core.testing needs pytest-asyncio: "
                "pip install 'megalodon-core[testing]'"
            )

        return missing


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
        #: The worker of the latest :meth:`run` (a ``during`` callback may stop it, as SIGTERM would).
        self.worker: Worker | None = None

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

    async def wait_for_output(self, task_id: str, text: str, within: float = 60.0) -> None:
        """Wait until the task running on the latest worker has printed ``text`` into its log (read where the
        worker writes it, so it works for every executor and without the live log)."""
        needle = text.encode()
        found = asyncio.Event()
        tail = bytearray()

        def sink(data: bytes) -> None:
            tail.extend(data)
            if needle in tail:
                found.set()
            del tail[: max(0, len(tail) - len(needle))]  # bounded: only what a match could still need

        try:
            async with asyncio.timeout(within):
                run = await self._running(task_id)
                run.log.add_sink(sink)  # before the flush: no byte falls between the file and the sink
                try:
                    run.log.flush()
                    if needle not in await asyncio.to_thread(run.log.path.read_bytes):
                        await found.wait()
                finally:
                    run.log.remove_sink(sink)
        except TimeoutError:
            raise AssertionError(f"task {task_id} did not print {text!r} within {within} s") from None

    async def _running(self, task_id: str) -> TaskRun:
        while True:
            runs = list(self.worker.running.values()) if self.worker is not None else []
            for run in runs:
                if run is not None and run.task_id == task_id:
                    return run
            await asyncio.sleep(0.02)

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
        self.worker = worker
        if during is None:
            code = await asyncio.wait_for(worker.run(), 120)
        else:
            running = asyncio.create_task(worker.run())
            await during(task_id)
            code = await asyncio.wait_for(running, 120)
        return await self.outcome(task_id, code)


@async_fixture
async def double() -> AsyncIterator[TaskclusterDouble]:
    async with TaskclusterDouble(claim_work_wait=1.0, resolver_interval=0.2, anonymous_scopes=PUBLIC_ARTIFACTS) as d:
        yield d


@async_fixture
async def harness(double: TaskclusterDouble, tmp_path: Path) -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        yield Harness(double, tmp_path, session)
