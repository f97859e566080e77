"""Which executor runs a payload: instantiating the installed executors and choosing one per task.

The rule (documented with ``megalodon_register_executors`` in :mod:`megalodon_core.hookspec`):

1. config ``executor`` names an executor: it runs every payload;
2. ``auto``: the first running executor, in hook call order, whose ``accepts(payload)`` is true;
3. none accepts, and the payload has the shape of a kind whose executor is not running here (a top-level
   ``image``: docker-worker; ``command``: generic-worker): malformed-payload naming the distribution to
   install (or saying that executor could not start on this worker);
4. otherwise, when exactly one executor runs, that one — so its own validation names the missing or wrong
   fields of a payload that is merely broken;
5. otherwise malformed-payload listing the installed executors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..config import WorkerConfig
from ..contracts import ExecutorInfo, ExecutorRun, ExecutorUnavailable, TaskExecutor
from ..errors import MalformedPayload
from ..plugins import PluginHost
from ..worker_context import WorkerContext

log = logging.getLogger(__name__)

#: Payload kinds megalodon's own distributions run, recognised by one top-level key, for messages that
#: tell an operator what to install.  Checked in order: a payload with ``image`` is docker-worker's even
#: if it also has ``command`` (generic-worker's d2g rule).
KNOWN_KINDS: tuple[tuple[str, str, str, str], ...] = (
    # (key, payload kind, distribution, executor)
    ("image", "docker-worker", "megalodon-docker", "docker"),
    ("command", "generic-worker", "megalodon-native", "native"),
)


class _NoExecutorRun(ExecutorRun[None]):
    def parse_payload(self, raw: Any) -> None:
        assert isinstance(self.executor, NoExecutor)
        raise MalformedPayload(self.executor.message)

    async def run(self) -> None:  # pragma: no cover - parse_payload always raises
        raise AssertionError("unreachable")


class NoExecutor(TaskExecutor):
    """Stands in when no running executor accepts a payload, so the task still gets a log and a verdict."""

    name = "none"
    run_class = _NoExecutorRun

    def __init__(self, worker: WorkerContext, message: str = "No executor on this worker accepts this payload") -> None:
        super().__init__(worker)
        self.message = message


def known_kind(payload: Any) -> tuple[str, str, str] | None:
    """``(payload kind, distribution, executor)`` when ``payload`` looks like one megalodon's own run."""
    if not isinstance(payload, dict):
        return None
    for key, kind, distribution, executor in KNOWN_KINDS:
        if key in payload:
            return kind, distribution, executor
    return None


def no_executor_message(
    payload: Any, plugins: PluginHost, *, running: Mapping[str, object] | None = None, configured: str = "auto"
) -> str:
    """Why no executor takes ``payload``, naming what would (the task log and ``validate-payload`` say it).

    ``running``: the executors started on this worker (None outside a worker: all installed ones count).
    """
    installed = plugins.executors
    names = ", ".join(installed) or "none"
    accepting = [i.name for i in plugins.executors_accepting(payload)]
    unavailable = [n for n in accepting if running is not None and n not in running]
    if unavailable:
        dists = ", ".join(f"{n} ({plugins.distribution_of(n) or '?'})" for n in unavailable)
        return (
            f"No running executor accepts this payload: executor {dists} accepts it but could not start on this "
            f"worker (see the worker log); configured executor: {configured!r}"
        )
    kind = known_kind(payload)
    if kind is not None and kind[2] not in installed:
        payload_kind, distribution, executor = kind
        return (
            f"This is a {payload_kind} payload, but no executor installed on this worker runs it: install "
            f"{distribution} (executor {executor!r}); installed executors: {names}"
        )
    return (
        f"No executor installed on this worker accepts this payload (configured executor: {configured!r}; "
        f"installed executors: {names}); a generic-worker payload has 'command' (megalodon-native), a "
        f"docker-worker payload has 'image' (megalodon-docker)"
    )


def instantiate_executors(config: WorkerConfig, plugins: PluginHost, ctx: WorkerContext) -> dict[str, TaskExecutor]:
    """The executors this worker runs: the configured one, or (``auto``) every installed one that starts.

    A pool that installed several executors keeps running the kinds it can when one cannot start (e.g. no
    Docker engine on a native pool): that executor's tasks then get malformed-payload.  The result keeps
    the plugins' priority order.
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
        if len(executors) > 1:
            log.info("executor priority for payloads several accept: %s", ", ".join(executors))
        return executors
    if wanted in available:
        return {wanted: available[wanted].factory(ctx)}
    raise LookupError(
        f'Config setting "executor" names {wanted!r}, which no installed plugin provides '
        f"(installed: {', '.join(sorted(available)) or 'none'})"
    )


async def initialise_executors(config: WorkerConfig, executors: dict[str, TaskExecutor]) -> None:
    """Run each executor's start-up :meth:`~TaskExecutor.initialise`, in priority order.

    With ``auto``, an executor raising :class:`ExecutorUnavailable` (e.g. no Docker engine answers) is
    closed and dropped from ``executors`` like one whose factory raised; the configured executor's error
    (and every other :class:`~megalodon_core.contracts.ExecutorInitError`) stops the worker.
    """
    for name, executor in list(executors.items()):
        try:
            await executor.initialise()
        except ExecutorUnavailable as exc:
            if config.executor != "auto":
                raise
            log.warning("executor %s unavailable on this worker: %s", name, exc)
            del executors[name]
            try:
                await executor.close()
            except Exception as close_exc:  # nothing of it is used again; the warning above says why
                log.debug("closing unavailable executor %s: %s", name, close_exc)


def choose_info(plugins: PluginHost, payload: Any) -> ExecutorInfo | None:
    """The installed executor a worker in ``auto`` mode with every installed executor running would choose."""
    accepting = plugins.executors_accepting(payload)
    if accepting:
        return accepting[0]
    installed = plugins.executors
    kind = known_kind(payload)
    if (kind is None or kind[2] in installed) and len(installed) == 1:
        return next(iter(installed.values()))
    return None


def choose_executor(
    config: WorkerConfig, plugins: PluginHost, executors: dict[str, TaskExecutor], ctx: WorkerContext, payload: Any
) -> TaskExecutor:
    """The executor for one payload, by the rule in this module's docstring; :class:`NoExecutor` if none."""
    if config.executor != "auto":
        return next(iter(executors.values()))
    accepting = plugins.executors_accepting(payload)
    for info in accepting:
        if info.name in executors:
            return executors[info.name]
    kind = known_kind(payload)
    foreign = kind is not None and kind[2] not in executors
    if not foreign and not accepting and len(executors) == 1:
        return next(iter(executors.values()))
    return NoExecutor(ctx, no_executor_message(payload, plugins, running=executors, configured=config.executor))
