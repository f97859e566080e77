"""Phase metrics: where the pool's task time goes, as Prometheus histograms labelled by pool.

Core's internal plugin on the lifecycle hooks (like :class:`megalodon_core.metrics.MetricsPlugin`): it reads
each finished run's :class:`megalodon_core.phases.Phases` record, so the loop has no metrics branches and
executors and features report their phases without knowing this module exists.

Exposed names (default namespace ``megalodon``), every one labelled ``taskQueueId`` (the pool: one value per
worker, so an aggregation over a fleet stays cheap) and never by task:

- ``megalodon_task_pending_seconds``: the run's ``scheduled`` to its ``started`` (the claim), queue clock;
- ``megalodon_task_phase_seconds{phase}``: ``setup`` (payload, features' selection, the executor's
  ``prepare`` and feature starts, so image pull and mounts included), ``image_pull``, ``mounts``,
  ``command``, ``artifact_upload`` (artifacts and the task log), ``resolution`` (the report call);
- ``megalodon_task_phase_bytes_total{phase}``: bytes a phase moved (``image_pull``: compressed image layers
  downloaded; a pull whose size the engine does not report, as podman's, adds nothing);
- ``megalodon_claim_to_first_command_seconds``: the claim answer to the first command (setup plus the
  worker's own bookkeeping);
- ``megalodon_cache_lookups_total{result}``: caches a run used, ``hit`` (ready) or ``miss`` (created);
- ``megalodon_free_capacity``: ``capacity`` minus the runs held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge, Histogram

from . import hookimpl
from .metric_children import Children
from .phases import PHASES

if TYPE_CHECKING:
    from .metrics import Metrics
    from .task import TaskRun

__all__ = ["PHASE_BUCKETS", "PhaseMetrics"]

#: From a cached image check (milliseconds) to generic-worker's default 24 h maxRunTime.
PHASE_BUCKETS: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    14400,
    43200,
    86400,
)

#: Queue methods that resolve a run: their latency is the ``resolution`` phase.
_REPORT_METHODS: Final = frozenset({"reportCompleted", "reportFailed", "reportException"})


class PhaseMetrics:
    """Registers the phase metrics in ``metrics``' registry and records them from lifecycle hooks."""

    def __init__(self, metrics: Metrics, *, task_queue_id: str, capacity: int, namespace: str = "megalodon") -> None:
        r, ns = metrics.registry, namespace
        self.task_queue_id = task_queue_id
        self.capacity = capacity
        pool = ["taskQueueId"]

        def histogram(name: str, documentation: str, labels: list[str]) -> Histogram:
            # Every duration here shares one bucket scale, so a dashboard can compare the phases.
            return Histogram(name, documentation, labels, namespace=ns, registry=r, buckets=PHASE_BUCKETS)

        self.pending = histogram(
            "task_pending_seconds", "Time a run waited in the queue before this worker claimed it (queue clock).", pool
        )
        self.phase = histogram(
            "task_phase_seconds",
            "Time runs spent in each phase (setup, image_pull, mounts, command, artifact_upload, resolution).",
            [*pool, "phase"],
        )
        self.phase_bytes = Counter(
            "task_phase_bytes",
            "Bytes runs moved in a phase (image_pull: compressed image layers downloaded).",
            [*pool, "phase"],
            namespace=ns,
            registry=r,
        )
        self.claim_to_first_command = histogram(
            "claim_to_first_command_seconds", "Time from the claim to the run's first command.", pool
        )
        self.cache_lookups = Counter(
            "cache_lookups", "Caches runs used, by result (hit, miss).", [*pool, "result"], namespace=ns, registry=r
        )
        self.free_capacity = Gauge(
            "free_capacity",
            "Runs this worker could claim now (capacity minus runs held).",
            pool,
            namespace=ns,
            registry=r,
        )
        # This worker's own children (one task queue), looked up once (:mod:`.metric_children`).
        # Made when first used, as ``labels()`` would: a series appears once it has a sample.
        self._pending = Children(self.pending)
        self._phase = Children(self.phase)
        self._phase_bytes = Children(self.phase_bytes)
        self._first_command = Children(self.claim_to_first_command)
        self._cache_lookups = Children(self.cache_lookups)
        self._free = self.free_capacity.labels(task_queue_id)
        self._free.set(capacity)

    def observe_run(self, run: TaskRun) -> None:
        """Record one finished run's phases (phases it never entered get no sample)."""
        q = self.task_queue_id
        phases = run.data.phases
        if phases.pending is not None:
            self._pending(q).observe(phases.pending)
        for name in PHASES:
            if name in phases.durations:
                self._phase(q, name).observe(phases.durations[name])
            if phases.byte_counts.get(name):
                self._phase_bytes(q, name).inc(phases.byte_counts[name])
        latency = phases.claim_to_first_command
        if latency is not None:
            self._first_command(q).observe(latency)
        if phases.cache_hits:
            self._cache_lookups(q, "hit").inc(phases.cache_hits)
        if phases.cache_misses:
            self._cache_lookups(q, "miss").inc(phases.cache_misses)

    # -- lifecycle hooks ---------------------------------------------------------------------------------
    @hookimpl(tryfirst=True)
    def megalodon_task_resolved(self, run: TaskRun | None) -> None:
        if run is not None:
            self.observe_run(run)

    @hookimpl(tryfirst=True)
    def megalodon_queue_call(self, method: str, seconds: float) -> None:
        if method in _REPORT_METHODS:
            self._phase(self.task_queue_id, "resolution").observe(max(seconds, 0.0))

    @hookimpl(tryfirst=True)
    def megalodon_running_changed(self, running: int) -> None:
        self._free.set(max(self.capacity - running, 0))
