"""Task execution errors and generic-worker's resolution rule.

generic-worker accumulates every error a task run produces and lets the *first* one decide how the run is
resolved; later errors are only logged.  Keeping that rule in one small class means executors and features
never have to agree on who reports what: they append, and :func:`ExecutionErrors.resolution` decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

State = Literal["completed", "failed", "exception"]

#: The exception reasons a worker may report (the queue's enum, minus ``superseded``, which workers never use).
EXCEPTION_REASONS = frozenset(
    {"malformed-payload", "resource-unavailable", "internal-error", "intermittent-task", "worker-shutdown"}
)


class ExecutionError(Exception):
    """An error that decides, or may decide, how a task run is resolved."""

    state: State = "exception"
    reason: str = "internal-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedPayload(ExecutionError):
    """The task asked for something this worker cannot or will not do: the task author must change it."""

    reason = "malformed-payload"


class ResourceUnavailable(ExecutionError):
    """A service the worker depends on failed (queue, object store, index...): not the task's fault."""

    reason = "resource-unavailable"


class InternalError(ExecutionError):
    """The worker itself failed while setting up or tearing down the task."""

    reason = "internal-error"


class IntermittentTask(ExecutionError):
    """A command exited with a code the task listed in ``onExitStatus.retry``: the queue should retry it."""

    reason = "intermittent-task"


class WorkerShutdown(ExecutionError):
    """The worker is going away (SIGTERM, spot termination); the queue retries the task elsewhere."""

    reason = "worker-shutdown"


class Failure(ExecutionError):
    """The task ran and failed (non-zero exit, missing command, max run time, missing artifact...)."""

    state: State = "failed"
    reason = "failed"


class Canceled(ExecutionError):
    """The queue no longer considers this run ours (reclaim 409: cancelled, deadline passed, resolved).

    Nothing is reported for a cancelled run: the queue has already resolved it.
    """

    reason = "canceled"


@dataclass
class ExecutionErrors:
    """The ordered list of errors of one task run; the first decides the resolution."""

    errors: list[ExecutionError] = field(default_factory=list)

    def add(self, error: ExecutionError) -> None:
        self.errors.append(error)

    @property
    def first(self) -> ExecutionError | None:
        return self.errors[0] if self.errors else None

    def __bool__(self) -> bool:
        return bool(self.errors)

    def resolution(self) -> tuple[State, str]:
        """(state, reason) to report: ``completed``/``completed`` when nothing went wrong."""
        first = self.first
        if first is None:
            return "completed", "completed"
        if first.state == "failed":
            return "failed", "failed"
        return "exception", first.reason
