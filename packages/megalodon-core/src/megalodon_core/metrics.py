"""Prometheus metrics and a health endpoint for the worker (config keys ``metricsPort`` / ``metricsAddress``).

generic-worker exposes nothing to scrape; a fleet operator then learns about a stuck or failing worker only
from the queue.  megalodon serves ``GET /metrics`` (Prometheus text, or OpenMetrics when the scraper asks)
and ``GET /healthz`` (JSON; 503 when unhealthy, so a plain HTTP probe can act on it).

Each :class:`Metrics` owns a private :class:`prometheus_client.CollectorRegistry` instead of the process-wide
default one: several workers in one process (the test suite, an embedding host) would otherwise collide on
metric names, and a worker's scrape would include unrelated collectors.  The server binds loopback by
default because the metrics name task states and the health document names running task ids.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from . import hookimpl
from .errors import ResourceUnavailable
from .metric_children import Children

if TYPE_CHECKING:
    from .task import TaskRun

__all__ = [
    "QUEUE_CALL_BUCKETS",
    "TASK_DURATION_BUCKETS",
    "HealthCheck",
    "Metrics",
    "MetricsPlugin",
    "MetricsServer",
    "serve",
]

log = logging.getLogger(__name__)

#: Task durations run from seconds (a failing command) to generic-worker's default 24 h maxRunTime.
TASK_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
)

#: Queue calls take tens of milliseconds when healthy; the tail shows retries and outages.
QUEUE_CALL_BUCKETS: Final[tuple[float, ...]] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HealthCheck = Callable[[], Mapping[str, Any]]


class Metrics:
    """The worker's metrics, recorded through small methods so call sites stay one line.

    Exposed names (with the default ``namespace="megalodon"``): ``megalodon_tasks_claimed_total``,
    ``megalodon_tasks_resolved_total{state,reason}``, ``megalodon_task_duration_seconds``,
    ``megalodon_bytes_uploaded_total``, ``megalodon_upload_errors_total``,
    ``megalodon_reclaim_failures_total``, ``megalodon_queue_call_seconds{method}``,
    ``megalodon_tasks_running`` and ``megalodon_worker_info{version,...}``.
    """

    def __init__(self, *, version: str = "", namespace: str = "megalodon", **info: str) -> None:
        """``version`` and any ``info`` labels (e.g. ``workerPoolId``) go into ``worker_info``."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ns = namespace
        self.tasks_claimed = Counter("tasks_claimed", "Tasks claimed from the queue.", namespace=ns, registry=r)
        self.tasks_resolved = Counter(
            "tasks_resolved",
            "Tasks resolved, by resolution state and reason.",
            ["state", "reason"],
            namespace=ns,
            registry=r,
        )
        self._resolved = Children(self.tasks_resolved)
        self.task_duration = Histogram(
            "task_duration_seconds",
            "Wall time from claim to resolution.",
            namespace=ns,
            registry=r,
            buckets=TASK_DURATION_BUCKETS,
        )
        self.bytes_uploaded_counter = Counter(
            "bytes_uploaded", "Artifact and log bytes uploaded.", namespace=ns, registry=r
        )
        self.upload_errors = Counter("upload_errors", "Artifact or log uploads that failed.", namespace=ns, registry=r)
        self.reclaim_failures = Counter("reclaim_failures", "reclaimTask calls that failed.", namespace=ns, registry=r)
        self.queue_call_seconds = Histogram(
            "queue_call_seconds",
            "Latency of queue API calls, by method.",
            ["method"],
            namespace=ns,
            registry=r,
            buckets=QUEUE_CALL_BUCKETS,
        )
        self._queue_calls = Children(self.queue_call_seconds)
        self.tasks_running = Gauge("tasks_running", "Tasks currently running.", namespace=ns, registry=r)
        self.worker_info = Info("worker", "Worker build and identity.", namespace=ns, registry=r)
        self.set_info(version=version, **info)

    # -- recording -------------------------------------------------------------------------------------------

    def set_info(self, *, version: str, **labels: str) -> None:
        """Replace ``worker_info``'s labels (identity is only known once the config is loaded)."""
        self.worker_info.info({"version": version, **labels})

    def task_claimed(self) -> None:
        self.tasks_claimed.inc()

    def task_resolved(self, state: str, reason: str | None, duration: float | None) -> None:
        """Count one resolution; ``reason`` is ``""``/``None`` for completed and failed tasks.

        ``duration`` (seconds since the claim) is skipped when unknown, e.g. a task resolved by the
        worker at start-up from its claim journal.
        """
        self._resolved(state, reason or "").inc()
        if duration is not None:
            self.task_duration.observe(max(duration, 0.0))

    def bytes_uploaded(self, n: int) -> None:
        if n > 0:
            self.bytes_uploaded_counter.inc(n)

    def upload_error(self) -> None:
        self.upload_errors.inc()

    def reclaim_failed(self) -> None:
        self.reclaim_failures.inc()

    def observe_queue_call(self, method: str, seconds: float) -> None:
        self._queue_calls(method).observe(max(seconds, 0.0))

    @asynccontextmanager
    async def timed(self, method: str) -> AsyncIterator[None]:
        """Time a queue call, failed ones included: slow failures are exactly what the histogram is for."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.observe_queue_call(method, time.monotonic() - start)

    def set_running(self, n: int) -> None:
        self.tasks_running.set(n)

    # -- exposition ------------------------------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _default_health() -> Mapping[str, Any]:
    return {"status": "ok"}


class MetricsServer:
    """A running ``/metrics`` + ``/healthz`` server; :attr:`port` is the bound port (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def serve(
    metrics: Metrics,
    host: str = "127.0.0.1",
    port: int = 0,
    health: HealthCheck | None = None,
) -> MetricsServer:
    """Serve ``GET /metrics`` and ``GET /healthz`` until :meth:`MetricsServer.stop`.

    ``health()`` returns the JSON document, e.g. ``{"status": "ok", "runningTasks": [...],
    "lastClaimAgeSeconds": 12.5}``; any ``status`` other than ``"ok"``, or an exception, answers 503 so
    that a probe needs no JSON parsing.  ``port=0`` binds an ephemeral port (see :attr:`MetricsServer.port`).
    """
    check = health or _default_health

    async def metrics_handler(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health_handler(request: web.Request) -> web.Response:
        try:
            doc: dict[str, Any] = dict(check())
        except Exception as e:
            log.exception("health check failed")
            doc = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        status = 200 if doc.get("status") == "ok" else 503
        return web.Response(
            status=status,
            text=json.dumps(doc, default=str),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    log.info("metrics on http://%s:%d/metrics", host, bound_port)
    return MetricsServer(runner, host, bound_port)


class MetricsPlugin:
    """Core's internal plugin that records :class:`Metrics` from the worker's lifecycle hooks.

    Registered like any plugin (``PluginHost.register``), so the worker loop has no "is there a metrics
    sink?" branch; ``tryfirst`` so a raising third-party observer cannot skip it.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @hookimpl(tryfirst=True)
    def megalodon_task_claimed(self) -> None:
        self.metrics.task_claimed()

    @hookimpl(tryfirst=True)
    def megalodon_task_resolved(self, state: str, reason: str, duration: float | None, run: TaskRun | None) -> None:
        self.metrics.task_resolved(state, reason, duration)
        if run is None:
            return
        self.metrics.bytes_uploaded(sum(a.size for a in run.uploaded.values()))
        for error in run.errors.errors:
            if isinstance(error, ResourceUnavailable):
                self.metrics.upload_error()

    @hookimpl(tryfirst=True)
    def megalodon_running_changed(self, running: int) -> None:
        self.metrics.set_running(running)

    @hookimpl(tryfirst=True)
    def megalodon_queue_call(self, method: str, seconds: float) -> None:
        self.metrics.observe_queue_call(method, seconds)

    @hookimpl(tryfirst=True)
    def megalodon_reclaim_failed(self) -> None:
        self.metrics.reclaim_failed()
