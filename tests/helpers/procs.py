"""Processes the tests start or watch: task commands, pids, and ``megalodon run`` as a real process.

Shared by the test folders (import it relatively, ``from ..helpers.procs import ...``: pytest runs with
``--import-mode=importlib``, which names test modules after their path under the repository root).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import taskcluster

from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import PROVISIONER, make_task

#: ``megalodon`` run from this interpreter (what ``python -m megalodon_core`` runs: the CLI).
MEGALODON = [sys.executable, "-m", "megalodon_core"]


def sh(script: str) -> list[str]:
    """A payload command running ``script`` in ``/bin/sh``."""
    return ["/bin/sh", "-c", script]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting for its parent's ``wait`` is not)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


async def wait_for(predicate: Callable[[], object], limit: float = 30.0) -> None:
    """Poll ``predicate`` until it is true; AssertionError after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def wait_gone(pid: int, limit: float = 10.0) -> bool:
    """Whether ``pid`` is gone within ``limit`` seconds (False: it still runs)."""
    deadline = time.monotonic() + limit
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def write_worker_config(double: TaskclusterDouble, tmp_path: Path, worker_type: str, **extra: Any) -> Path:
    """``tmp_path/worker.json`` for a ``megalodon run`` process of pool ``megalodon-test/<worker_type>``
    against ``double`` (worker ``g/w``, the native executor, state and tasks under ``tmp_path``)."""
    creds = double.worker_credentials(PROVISIONER, worker_type, "g", "w")
    config = {
        "rootURL": double.root_url,
        "clientId": creds["clientId"],
        "accessToken": creds["accessToken"],
        "provisionerId": PROVISIONER,
        "workerType": worker_type,
        "workerGroup": "g",
        "workerId": "w",
        "tasksDir": str(tmp_path / "tasks"),
        "stateDir": str(tmp_path / "state"),
        "requiredDiskSpaceMegabytes": 16,
        "executor": "native",
        **extra,
    }
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(config))
    return path


async def create_task(double: TaskclusterDouble, payload: Any, worker_type: str, **overrides: Any) -> str:
    """Create a task for ``megalodon-test/<worker_type>`` with the root credentials; its taskId.

    The synchronous client, in a thread: the double answering it runs on this event loop.
    """
    queue = taskcluster.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    task_id: str = taskcluster.slugId()
    await asyncio.to_thread(queue.createTask, task_id, make_task(payload, worker_type, **overrides))
    return task_id
