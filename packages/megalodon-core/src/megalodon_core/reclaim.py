"""Keeping a claim alive: reclaim before ``takenUntil``, swap in the new credentials, notice cancellation.

The queue tells a worker that a run was cancelled (or passed its deadline, or expired) only by answering a
reclaim with 409, so a 409 aborts the run with :class:`~megalodon_core.errors.Canceled` and nothing is
reported for it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from .errors import Canceled, InternalError
from .task import TaskRun
from .timefmt import parse_iso, utcnow

log = logging.getLogger(__name__)

#: generic-worker reclaims 3 minutes before takenUntil; short claims (tests) reclaim at half-time instead.
MARGIN = 180.0


def next_reclaim_delay(seconds_left: float) -> float:
    if seconds_left <= 0:
        return 0.0
    return max(seconds_left - MARGIN, seconds_left / 2)


class Reclaimer:
    """The reclaims of one run: a timer until the first is due, then :func:`reclaim_loop` in a task.

    Most runs end long before their first reclaim (minutes away on the real queue): they cost a timer, not a
    task, a sleep and a cancellation each (issue 13).
    """

    def __init__(self, run: TaskRun, on_failure: Callable[[], None] | None = None) -> None:
        self._run = run
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        left = (run.taken_until - utcnow()).total_seconds()
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            next_reclaim_delay(left), self._due
        )

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(reclaim_loop(self._run, self._on_failure, due=True))

    async def stop(self) -> None:
        """No reclaim after this (the run is over); one under way is cancelled."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def reclaim_loop(run: TaskRun, on_failure: Callable[[], None] | None = None, *, due: bool = False) -> None:
    """Runs until cancelled by the pipeline (after resolution) or until a reclaim fails for good; ``due``: the
    first reclaim is due now (the :class:`Reclaimer`'s timer waited for it)."""
    while True:
        if due:
            due = False
        else:
            left = (run.taken_until - utcnow()).total_seconds()
            await asyncio.sleep(next_reclaim_delay(left))
        try:
            resp = await run.queue().reclaimTask(run.task_id, str(run.run_id))
        except TaskclusterFailure as exc:
            if on_failure is not None:
                on_failure()
            status = getattr(exc, "status_code", None)
            if status == 409:
                log.info(
                    "task %s/%s: run was cancelled, or its claim was lost (reclaimTask answered 409): stopping it",
                    run.task_id,
                    run.run_id,
                )
                run.abort(
                    Canceled(
                        "Task has been canceled, or its claim was lost (the queue answered the reclaim with "
                        f"409): {str(exc).splitlines()[0]}"
                    )
                )
                return
            if (run.taken_until - utcnow()).total_seconds() > 10:
                log.warning("reclaim of %s/%s failed, retrying: %s", run.task_id, run.run_id, exc)
                await asyncio.sleep(5)
                continue
            log.warning("reclaim of %s/%s failed, giving the run up: %s", run.task_id, run.run_id, exc)
            run.abort(InternalError(f"Could not reclaim task before its claim expired: {exc}"))
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            # TimeoutError: the session's total timeout, which the taskcluster client does not wrap.
            log.warning("reclaim of %s/%s failed: %s", run.task_id, run.run_id, str(exc) or type(exc).__name__)
            await asyncio.sleep(5)
            continue
        run.update_credentials(resp["credentials"], parse_iso(resp["takenUntil"]))
        log.info("reclaimed %s/%s until %s", run.task_id, run.run_id, resp["takenUntil"])
