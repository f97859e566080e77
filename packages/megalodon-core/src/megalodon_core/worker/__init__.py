"""The worker: claim work for free capacity, run each claim, report its resolution, exit when told.

Exit codes are generic-worker's (:mod:`.exit_codes`).  Before each claim the worker makes sure
``requiredDiskSpaceMegabytes`` are free, asking features and executors to evict what they keep
(:mod:`.disk_gate`); it never claims a task it could not run.  The loop itself is :mod:`.loop`.
"""

from __future__ import annotations

from .executor_choice import NoExecutor
from .exit_codes import (
    EXIT_CANT_LOAD_CONFIG,
    EXIT_IDLE_TIMEOUT,
    EXIT_INTERNAL_ERROR,
    EXIT_INVALID_CONFIG,
    EXIT_TASKS_COMPLETE,
    EXIT_WORKER_MANAGER_SHUTDOWN,
    EXIT_WORKER_SHUTDOWN,
    EXIT_WORKER_STOPPED,
)
from .loop import Worker
from .state_files import RUNTIME_CONFIG_FILE, running_task_ids

__all__ = [
    "EXIT_CANT_LOAD_CONFIG",
    "EXIT_IDLE_TIMEOUT",
    "EXIT_INTERNAL_ERROR",
    "EXIT_INVALID_CONFIG",
    "EXIT_TASKS_COMPLETE",
    "EXIT_WORKER_MANAGER_SHUTDOWN",
    "EXIT_WORKER_SHUTDOWN",
    "EXIT_WORKER_STOPPED",
    "RUNTIME_CONFIG_FILE",
    "NoExecutor",
    "Worker",
    "running_task_ids",
]
