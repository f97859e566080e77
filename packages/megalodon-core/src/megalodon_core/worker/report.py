"""Reporting a run's resolution to the queue (reportCompleted / reportFailed / reportException).

A run the queue cancelled is not reported (the queue already resolved it).  A cancellation the worker did not
notice at a reclaim shows up here as a 409 answer to the report: that is the same cancellation, logged as
such (not an error), and the worker moves on.  Any other failed report is logged and not retried beyond the
client's own retries; the claim then stays in the journal and is resolved before the worker exits.

Each resolution is one INFO line of the worker's log: state, reason, duration, artifacts and bytes uploaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

if TYPE_CHECKING:
    from ..errors import State
    from ..plugins import PluginHost
    from ..task import TaskRun

log = logging.getLogger(__name__)

_METHODS = {"completed": "reportCompleted", "failed": "reportFailed"}


def _uploads(run: TaskRun) -> str:
    count = len(run.uploaded)
    size = sum(a.size for a in run.uploaded.values())
    return f"{count} artifact{'' if count == 1 else 's'}, {size} bytes uploaded"


async def _nothing() -> None:
    return None


async def report_resolution(
    run: TaskRun,
    state: State,
    reason: str,
    *,
    plugins: PluginHost,
    duration: float,
    settled: Callable[[], Awaitable[None]] = _nothing,
) -> bool:
    """Report ``state``/``reason`` for ``run`` and tell plugins (``megalodon_task_resolved``).

    ``duration`` is the time since the claim (logged, and given to the plugins).  True when the run is
    resolved on the queue (reported now, or cancelled there); False when the report failed.

    ``settled`` is awaited as soon as the queue holds the run resolved, before the resolution is logged and
    told: the worker loop frees the run's capacity there and lets its next claimWork go out first (issue 13).
    """
    if run.canceled:
        await settled()
        log.info(
            "task %s/%s: run was cancelled (the queue answered a reclaim with 409) after %.2fs (%s): nothing to report",
            run.task_id,
            run.run_id,
            duration,
            _uploads(run),
        )
        plugins.task_resolved(
            task_id=run.task_id, run_id=run.run_id, state="exception", reason="canceled", duration=duration, run=run
        )
        return True
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
    except TaskclusterFailure as exc:
        plugins.queue_call(method=method, seconds=time.monotonic() - started)
        if getattr(exc, "status_code", None) != 409:
            log.error("task %s/%s: could not report %s/%s: %s", run.task_id, run.run_id, state, reason, exc)
            return False
        # The queue resolved the run meanwhile: a cancellation between two reclaims (or its deadline).
        await settled()
        log.warning(
            "task %s/%s: run was cancelled (%s answered 409: %s) after %.2fs; its %s/%s is not reported",
            run.task_id,
            run.run_id,
            method,
            str(exc).splitlines()[0] if str(exc) else "conflict",
            duration,
            state,
            reason,
        )
        plugins.task_resolved(
            task_id=run.task_id, run_id=run.run_id, state="exception", reason="canceled", duration=duration, run=run
        )
        return True
    except (aiohttp.ClientError, TimeoutError) as exc:
        # TimeoutError: the session's total timeout, which the taskcluster client does not wrap.
        plugins.queue_call(method=method, seconds=time.monotonic() - started)
        detail = str(exc) or type(exc).__name__
        log.error("task %s/%s: could not report %s/%s: %s", run.task_id, run.run_id, state, reason, detail)
        return False
    seconds = time.monotonic() - started
    await settled()
    plugins.queue_call(method=method, seconds=seconds)
    log.info("task %s/%s resolved %s/%s in %.2fs (%s)", run.task_id, run.run_id, state, reason, duration, _uploads(run))
    plugins.task_resolved(
        task_id=run.task_id, run_id=run.run_id, state=state, reason=reason, duration=duration, run=run
    )
    return True
