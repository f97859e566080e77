"""Reporting a run's resolution to the queue (reportCompleted / reportFailed / reportException).

A run the queue cancelled is not reported (the queue already resolved it); a failed report is logged, not
retried beyond the client's own retries — the run then resolves claim-expired, as with generic-worker.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

if TYPE_CHECKING:
    from ..errors import State
    from ..plugins import PluginHost
    from ..task import TaskRun

log = logging.getLogger(__name__)

_METHODS = {"completed": "reportCompleted", "failed": "reportFailed"}


async def report_resolution(run: TaskRun, state: State, reason: str, *, plugins: PluginHost, duration: float) -> None:
    """Report ``state``/``reason`` for ``run`` and tell plugins (``megalodon_task_resolved``).

    ``duration`` is the time since the claim, for the plugins.
    """
    if run.canceled:
        log.info("task %s/%s was cancelled by the queue: nothing to report", run.task_id, run.run_id)
        plugins.task_resolved(
            task_id=run.task_id, run_id=run.run_id, state="exception", reason="canceled", duration=duration, run=run
        )
        return
    queue = run.queue()
    started = time.monotonic()
    method = _METHODS.get(state, "reportException")
    try:
        if state == "completed":
            await queue.reportCompleted(run.task_id, str(run.run_id))
        elif state == "failed":
            await queue.reportFailed(run.task_id, str(run.run_id))
        else:
            await queue.reportException(run.task_id, str(run.run_id), {"reason": reason})
    except (TaskclusterFailure, aiohttp.ClientError) as exc:
        log.error("task %s/%s: could not report %s/%s: %s", run.task_id, run.run_id, state, reason, exc)
    else:
        log.info("task %s/%s resolved %s/%s", run.task_id, run.run_id, state, reason)
    plugins.queue_call(method=method, seconds=time.monotonic() - started)
    plugins.task_resolved(
        task_id=run.task_id, run_id=run.run_id, state=state, reason=reason, duration=duration, run=run
    )
