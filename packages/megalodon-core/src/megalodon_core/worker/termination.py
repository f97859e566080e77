"""Asking worker-manager whether this worker should terminate (``shouldWorkerTerminate``).

generic-worker asks on every loop iteration, at most every 5 s, and only when run by worker-runner (a
worker-manager worker); the idle timeout likewise only exits when worker-manager agrees.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..worker_context import WorkerContext

log = logging.getLogger(__name__)

#: generic-worker asks worker-manager about termination about this often (every loop iteration, >= 5 s).
TERMINATE_CHECK_INTERVAL = 5.0


class TerminationCheck:
    """Rate-limited ``shouldWorkerTerminate`` calls; a failed call answers "no" (and is logged)."""

    def __init__(self, config: WorkerConfig, *, enabled: bool) -> None:
        self.config = config
        self.enabled = enabled
        self._last = 0.0

    async def says_terminate(self, ctx: WorkerContext, *, now: bool = False) -> bool:
        """Whether worker-manager wants this worker gone; ``now`` skips the rate limit (idle exit)."""
        if not self.enabled:
            return False
        t = time.monotonic()
        if not now and t - self._last < TERMINATE_CHECK_INTERVAL:
            return False
        self._last = t
        import taskcluster.aio

        wm = taskcluster.aio.WorkerManager(ctx.client_options(), session=ctx.session)
        try:
            answer = await wm.shouldWorkerTerminate(
                self.config.task_queue_id, self.config.workerGroup, self.config.workerId
            )
        except (TaskclusterFailure, aiohttp.ClientError, TimeoutError) as exc:
            # TimeoutError: the session's total timeout, which the taskcluster client does not wrap.
            log.warning("shouldWorkerTerminate failed: %s", (str(exc) or type(exc).__name__).splitlines()[0])
            return False
        return bool(answer.get("terminate"))
