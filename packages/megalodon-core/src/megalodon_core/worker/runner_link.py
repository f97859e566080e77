"""What the worker loop needs of worker-runner and of a metrics sink: two small protocols.

The worker depends on these shapes, not on :mod:`megalodon_core.workerrunner` or
:mod:`megalodon_core.metrics`, so the loop can be driven (and tested) without either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class RunnerLink(Protocol):
    """What the worker needs of the worker-runner protocol (a null one when not run by worker-runner)."""

    def capable(self, capability: str) -> bool: ...

    async def shutdown(self) -> bool: ...

    async def error_report(
        self, description: str, extra: Mapping[str, Any] | None = None, *, title: str = ..., kind: str = ...
    ) -> bool: ...


class MetricsSink(Protocol):
    """What the worker records about its tasks (:class:`megalodon_core.metrics.Metrics` is one)."""

    def task_claimed(self) -> None: ...

    def task_resolved(self, state: str, reason: str, duration: float) -> None: ...

    def bytes_uploaded(self, n: int) -> None: ...

    def upload_error(self) -> None: ...

    def reclaim_failed(self) -> None: ...

    def observe_queue_call(self, method: str, seconds: float) -> None: ...

    def set_running(self, n: int) -> None: ...
