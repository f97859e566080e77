"""Where a run's time goes: a typed phase record the pipeline, executors and features write to.

Operators ask "why is this pool slow?" and the answer is a phase: tasks wait long in the queue (pending),
images take a minute to pull, a cache is extracted for every task, uploads crawl.  The pipeline times the
phases it drives itself (setup, command, artifact upload); an executor or feature times its own work by
name, through the run, without the core knowing its internals::

    with task_run.data.phases.phase("image_pull"):
        image = await self.executor.images.ensure_image(...)
    task_run.data.phases.cache(hit=True)

The record holds durations only; :mod:`megalodon_core.phase_metrics` turns finished runs into Prometheus
histograms labelled by pool (never by task).  A phase entered twice (two mounts, a log and its artifacts)
adds up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .timefmt import parse_iso

#: The phases megalodon's own code records (third-party code may use other names: they are kept, and
#: exported only when the metrics know them, so a typo cannot create unbounded label values).
PhaseName = Literal["setup", "image_pull", "mounts", "command", "artifact_upload"]
PHASES: Final[tuple[str, ...]] = ("setup", "image_pull", "mounts", "command", "artifact_upload")


@dataclass
class Phases:
    """Durations (seconds) of one run's phases, cache hits and misses, and the claim's timing.

    ``clock`` is :func:`time.monotonic`; tests may pass another.
    """

    durations: dict[str, float] = field(default_factory=dict)
    #: Bytes moved in a phase (``image_pull``: compressed layers the engine downloaded), when known.
    byte_counts: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    #: Seconds the run waited in the queue: its ``scheduled`` to its ``started`` (the claim), per the queue.
    pending: float | None = None
    #: Monotonic time the worker got the claim, and the time the first command started.
    claimed_at: float | None = None
    first_command_at: float | None = None
    clock: Any = field(default=time.monotonic, repr=False)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as phase ``name`` (failed and cancelled blocks count too)."""
        start = self.clock()
        if name == "command" and self.first_command_at is None:
            self.first_command_at = start
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name`` (for work timed elsewhere, e.g. in a thread)."""
        self.durations[name] = self.durations.get(name, 0.0) + max(seconds, 0.0)

    def add_bytes(self, name: str, count: int) -> None:
        """Add ``count`` bytes to phase ``name`` (e.g. what an image pull downloaded)."""
        if count > 0:
            self.byte_counts[name] = self.byte_counts.get(name, 0) + count

    def cache(self, *, hit: bool) -> None:
        """One cache used by the run: found ready (hit) or created or extracted for it (miss)."""
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1

    def claimed(self, claim: dict[str, Any], *, at: float) -> None:
        """Record the claim: when the worker got it (``at``, monotonic) and how long the run was pending.

        ``claim`` is claimWork's entry; its ``status.runs[runId]`` has the queue's ``scheduled`` and
        ``started`` timestamps (both queue clock, so the difference needs no clock agreement).
        """
        self.claimed_at = at
        try:
            run = claim["status"]["runs"][int(claim["runId"])]
            waited = (parse_iso(run["started"]) - parse_iso(run["scheduled"])).total_seconds()
        except (KeyError, IndexError, TypeError, ValueError):
            return
        self.pending = max(waited, 0.0)

    @property
    def claim_to_first_command(self) -> float | None:
        """Seconds from the claim to the first command (None when no command started)."""
        if self.claimed_at is None or self.first_command_at is None:
            return None
        return max(self.first_command_at - self.claimed_at, 0.0)


__all__ = ["PHASES", "PhaseName", "Phases"]
