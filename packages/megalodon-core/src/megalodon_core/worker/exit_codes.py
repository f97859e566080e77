"""The worker's exit codes (generic-worker's, NOTES.md 1.8) and the machine shutdown that follows some of them.

0 after ``numberOfTasksToRun`` tasks (a count persisted across restarts), 64 unreadable config, 68 idle
timeout, 69 internal error, 70 worker-manager says terminate, 71 stopped by SIGINT or graceful-termination
with finish-tasks (running tasks finish), 72 SIGTERM or graceful-termination without finish-tasks (running
tasks are resolved exception/worker-shutdown and still get their logs uploaded), 73 invalid config.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from .runner_link import RunnerLink

log = logging.getLogger(__name__)

EXIT_TASKS_COMPLETE = 0
EXIT_CANT_LOAD_CONFIG = 64
EXIT_IDLE_TIMEOUT = 68
EXIT_INTERNAL_ERROR = 69
EXIT_WORKER_MANAGER_SHUTDOWN = 70
EXIT_WORKER_STOPPED = 71
EXIT_WORKER_SHUTDOWN = 72
EXIT_INVALID_CONFIG = 73
#: megalodon's own: the watchdog saw no claim-loop progress for ``watchdogTimeoutSecs`` (generic-worker
#: has no watchdog and no code 90).
EXIT_WATCHDOG = 90


async def shutdown_after_exit(code: int, config: WorkerConfig, runner: RunnerLink, *, managed: bool) -> None:
    """generic-worker shuts the machine down after exit 70 always, 68/69 when configured.

    With worker-runner's ``shutdown`` capability the runner removes the worker (worker-manager's
    ``removeWorker``); otherwise the worker runs ``shutdown`` itself, except for exit 70 without a runner
    (nobody asked worker-manager then, so there is nothing to obey).  ``managed``: worker-runner started
    this worker (``runner`` is then a real link, else a null one).
    """
    wanted = (
        code == EXIT_WORKER_MANAGER_SHUTDOWN
        or (code == EXIT_IDLE_TIMEOUT and config.shutdownMachineOnIdle)
        or (code == EXIT_INTERNAL_ERROR and config.shutdownMachineOnInternalError)
    )
    if not wanted:
        return
    if runner.capable("shutdown"):
        await runner.shutdown()
        return
    if code != EXIT_WORKER_MANAGER_SHUTDOWN or managed:
        log.warning("shutting down the machine (exit code %d)", code)
        proc = await asyncio.create_subprocess_exec("sudo", "/sbin/shutdown", "-h", "now")
        await proc.wait()
