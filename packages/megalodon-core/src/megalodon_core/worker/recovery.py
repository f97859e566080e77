"""Crash recovery: resolve the runs a previous, hard-killed process of this worker still held.

Each record left in the claim journal is a run nobody will finish: its leftover processes are killed, it
is reported exception/worker-shutdown with the task credentials the record kept (so the queue retries it
at once instead of after claim-expired), and its task directory is removed when ``cleanUpTaskDirs``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from ..journal import ClaimJournal, kill_leftovers
from ..worker_context import WorkerContext

log = logging.getLogger(__name__)


async def recover_runs(journal: ClaimJournal, ctx: WorkerContext, *, clean_task_dirs: bool) -> int:
    """Resolve every journalled run; return how many were resolved (already-resolved ones are skipped)."""
    recovered = 0
    for entry in await asyncio.to_thread(journal.entries):
        task_dir = Path(entry.task_dir)
        killed = await asyncio.to_thread(kill_leftovers, entry)  # its cgroup, then processes in task_dir
        queue = ctx.queue(entry.credentials)
        try:
            await queue.reportException(entry.task_id, str(entry.run_id), {"reason": "worker-shutdown"})
            log.warning(
                "recovered run %s/%s left by a previous worker process: resolved exception/worker-shutdown "
                "(%d leftover processes killed)",
                entry.task_id,
                entry.run_id,
                killed,
            )
            recovered += 1
        except (TaskclusterFailure, aiohttp.ClientError, TimeoutError) as exc:
            # 409: already resolved (cancelled, deadline, claim expired); 401: credentials long expired;
            # TimeoutError: the session's total timeout, which the taskcluster client does not wrap.
            log.warning(
                "run %s/%s left by a previous process could not be resolved: %s",
                entry.task_id,
                entry.run_id,
                (str(exc) or type(exc).__name__).splitlines()[0],
            )
        if clean_task_dirs:
            await asyncio.to_thread(shutil.rmtree, task_dir, True)
        await asyncio.to_thread(journal.remove, entry.task_id, entry.run_id)
    return recovered
