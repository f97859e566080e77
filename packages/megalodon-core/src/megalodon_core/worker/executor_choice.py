"""Which executor runs a payload: instantiating the installed executors and choosing one per task."""

from __future__ import annotations

import logging
from typing import Any

from ..config import WorkerConfig
from ..contracts import ExecutorRun, TaskExecutor
from ..errors import MalformedPayload
from ..plugins import PluginHost
from ..worker_context import WorkerContext

log = logging.getLogger(__name__)


class _NoExecutorRun(ExecutorRun[None]):
    def parse_payload(self, raw: Any) -> None:
        run = self.task_run
        installed = ", ".join(sorted(run.worker.plugins.executors)) or "none"
        raise MalformedPayload(
            f"No executor installed on this worker accepts this payload (configured executor: "
            f"{run.worker.config.executor!r}; installed executors: {installed})"
        )

    async def run(self) -> None:  # pragma: no cover - parse_payload always raises
        raise AssertionError("unreachable")


class NoExecutor(TaskExecutor):
    """Stands in when no installed executor accepts a payload, so the task still gets a log and a verdict."""

    name = "none"
    run_class = _NoExecutorRun


def instantiate_executors(config: WorkerConfig, plugins: PluginHost, ctx: WorkerContext) -> dict[str, TaskExecutor]:
    """The executors this worker runs: the configured one, or (``auto``) every installed one that starts.

    A pool that installed several executors keeps running the kinds it can when one cannot start (e.g. no
    Docker engine on a native pool): that executor's tasks then get malformed-payload.
    """
    available = plugins.executors
    wanted = config.executor
    if wanted == "auto":
        executors: dict[str, TaskExecutor] = {}
        for name, info in available.items():
            try:
                executors[name] = info.factory(ctx)
            except Exception as exc:
                log.warning("executor %s unavailable on this worker: %s", name, exc)
        return executors
    if wanted in available:
        return {wanted: available[wanted].factory(ctx)}
    raise LookupError(
        f'Config setting "executor" names {wanted!r}, which no installed plugin provides '
        f"(installed: {', '.join(sorted(available)) or 'none'})"
    )


def choose_executor(
    config: WorkerConfig, plugins: PluginHost, executors: dict[str, TaskExecutor], ctx: WorkerContext, payload: Any
) -> TaskExecutor:
    """The executor for one payload; :class:`NoExecutor` when none of the running ones accepts it."""
    if config.executor != "auto":
        return next(iter(executors.values()))
    info = plugins.executor_for_payload(payload)
    if info is not None and info.name in executors:
        return executors[info.name]
    if len(executors) == 1:
        return next(iter(executors.values()))
    return NoExecutor(ctx)
