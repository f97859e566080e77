"""Self-checks before each claim: a failing one quarantines the worker (no claim, one warning, one
error-report, ``/healthz`` 503 with the reason) until it passes again — each with a real condition."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from megalodon_core.config import parse_config
from megalodon_core.metrics import Metrics, serve
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker, self_checks
from megalodon_core.worker import loop as worker_loop
from megalodon_core.worker.health import health_document

from ..helpers.runner import RecordingRunner

BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
DOCKER_SOCKET = "/var/run/docker.sock"


@pytest.fixture(autouse=True)
def quick_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarantined worker retries every 5 s; these tests need several rounds in a few seconds."""
    monkeypatch.setattr(worker_loop, "CLAIM_ERROR_BACKOFF", 0.2)
    monkeypatch.setattr(self_checks, "CHECK_TIMEOUT", 2.0)
    monkeypatch.setitem(self_checks.PASS_TTL, "executors", 0.3)


async def poll(predicate: Callable[[], Awaitable[bool]], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {limit}s")
        await asyncio.sleep(0.1)


class Quarantine:
    """One worker run in-process with its ``/healthz`` served over HTTP, as ``megalodon run`` serves it."""

    def __init__(self, harness: Harness, worker: Worker, runner: RecordingRunner, url: str) -> None:
        self.harness, self.worker, self.runner, self.url = harness, worker, runner, url
        self.task: asyncio.Task[int] | None = None

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(self.url) as resp:
            return resp.status, await resp.json()

    async def until_unhealthy(self, check: str) -> dict[str, Any]:
        async def quarantined() -> bool:
            code, doc = await self.health()
            return code == 503 and check in doc.get("problems", {})

        await poll(quarantined, f"/healthz 503 for {check}")
        return (await self.health())[1]

    async def rounds(self, n: int) -> None:
        """Let the loop go round the failing check ``n`` more times (watching the state file's rewrite
        would not do: it only changes with the problems)."""
        await asyncio.sleep(n * (worker_loop.CLAIM_ERROR_BACKOFF + 0.1))


@contextlib.asynccontextmanager
async def quarantine(harness: Harness, worker_type: str, **config: Any) -> AsyncIterator[Quarantine]:
    host = PluginHost()
    runner = RecordingRunner()
    worker = Worker(parse_config(harness.config(worker_type, **config), host.config_fields()), host, runner=runner)
    harness.worker = worker
    server = await serve(Metrics(), "127.0.0.1", 0, health=lambda: health_document(worker))
    q = Quarantine(harness, worker, runner, f"{server.url}/healthz")
    try:
        yield q
    finally:
        if q.task is not None and not q.task.done():
            worker.stop(finish_tasks=False)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(q.task, 60)
        await server.stop()


def warnings_about(caplog: pytest.LogCaptureFixture, check: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"self-check failed ({check})")]


async def test_clock_skew_against_the_queue_date_quarantines_until_the_clocks_agree(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="megalodon_core")
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    harness.double.clock_offset = 600  # the deployment's clock is ten minutes ahead of this machine's
    async with quarantine(harness, worker_type, maxClockSkewSeconds=30) as q:
        q.task = asyncio.create_task(q.worker.run())
        doc = await q.until_unhealthy("clock")
        assert doc["status"] == "unhealthy" and doc["state"] == "quarantined"
        assert "behind the queue's" in doc["reason"] and "maxClockSkewSeconds is 30" in doc["reason"]
        await q.rounds(3)
        assert harness.double.calls["claimWork"] == 0, "a quarantined worker claimed"
        assert harness.double.task_state(task_id)["runs"][0]["state"] == "pending"
        assert len(warnings_about(caplog, "clock")) == 1, "the reason must be logged once, not every round"
        assert [(r.extra["check"], r.title) for r in q.runner.reports] == [("clock", "megalodon self-check failed")]
        harness.double.clock_offset = 0
        assert await asyncio.wait_for(q.task, 60) == 0
    assert harness.double.task_state(task_id)["runs"][0]["state"] == "completed"
    assert any("self-check passes again (clock)" in r.getMessage() for r in caplog.records)
    assert len(q.runner.reports) == 1


async def test_an_inode_reserve_larger_than_the_filesystem_has_quarantines(harness: Harness) -> None:
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    async with quarantine(harness, worker_type, requiredFreeInodes=2**62) as q:
        q.task = asyncio.create_task(q.worker.run())
        doc = await q.until_unhealthy("inodes")
        assert "free inodes" in doc["reason"] and f"requiredFreeInodes is {2**62}" in doc["reason"]
        await q.rounds(2)
        assert harness.double.calls["claimWork"] == 0
        q.worker.config.requiredFreeInodes = 1  # the operator's fix; the next round passes
        assert await asyncio.wait_for(q.task, 60) == 0
    assert harness.double.task_state(task_id)["runs"][0]["state"] == "completed"


async def test_credentials_expiring_within_the_margin_quarantine_until_new_ones_arrive(harness: Harness) -> None:
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    config = harness.config(worker_type)
    scopes = harness.double.auth.clients[config["clientId"]].scopes
    now = dt.datetime.now(dt.UTC)

    def minted(minutes: int) -> dict[str, str]:
        return harness.double.temporary_credentials(
            scopes, now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=minutes)
        )

    soon = minted(2)
    async with quarantine(harness, worker_type, credentialsExpiryMarginSeconds=600, **soon) as q:
        q.task = asyncio.create_task(q.worker.run())
        doc = await q.until_unhealthy("credentials")
        assert "temporary credentials expire in" in doc["reason"]
        assert "credentialsExpiryMarginSeconds (600)" in doc["reason"]
        await q.rounds(2)
        assert harness.double.calls["claimWork"] == 0
        q.worker.update_credentials(minted(60))  # worker-runner's new-credentials
        assert await asyncio.wait_for(q.task, 60) == 0
    assert harness.double.task_state(task_id)["runs"][0]["state"] == "completed"


class SocketRelay:
    """A Docker API socket of the test's own in front of the engine's, which can stop answering.

    Threads, not the event loop: the docker SDK's first call (API version negotiation) blocks the loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answering = True
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def start(self) -> None:
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop_answering(self) -> None:
        """Connections open now are cut; new ones are closed as soon as they are accepted."""
        self.answering = False
        with self._lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self.answering:
                conn.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DOCKER_SOCKET)
            with self._lock:
                self._open.update({conn, upstream})
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)

    def close(self) -> None:
        self._listener.close()
        self.stop_answering()


async def test_a_docker_engine_that_stops_answering_quarantines_the_docker_executor(
    harness: Harness, tmp_path: Path
) -> None:
    relay = SocketRelay(tmp_path / "docker.sock")
    relay.start()
    worker_type = harness.worker_type()
    config = {
        "executor": "docker",
        "selfCheckExecutors": True,
        "dockerConfig": {"host": f"unix://{relay.path}", "apiTimeoutSeconds": 5},
    }
    try:
        async with quarantine(harness, worker_type, **config) as q:
            q.task = asyncio.create_task(q.worker.run())
            await poll(lambda: _is_claiming(harness), "the worker claims while the engine answers")
            relay.stop_answering()
            doc = await q.until_unhealthy("executors")
            assert f"the Docker engine at unix://{relay.path} does not answer" in doc["reason"]
            assert doc["reason"].startswith("executor docker: ")
            # The task arrives while the engine is silent: the worker must not ask for it.
            task_id = await harness.create({"image": BUSYBOX_IMAGE, "command": ["true"], "maxRunTime": 60}, worker_type)
            claims = harness.double.calls["claimWork"]
            await q.rounds(3)
            assert harness.double.calls["claimWork"] == claims, "a quarantined worker kept claiming"
            assert harness.double.task_state(task_id)["runs"][0]["state"] == "pending"
            assert [r.extra["check"] for r in q.runner.reports] == ["executors"]
            relay.answering = True
            assert await asyncio.wait_for(q.task, 120) == 0
        run0 = harness.double.task_state(task_id)["runs"][0]
        assert (run0["state"], run0.get("reasonResolved")) == ("completed", "completed")
    finally:
        relay.close()


async def _is_claiming(harness: Harness) -> bool:
    return harness.double.calls["claimWork"] > 0
