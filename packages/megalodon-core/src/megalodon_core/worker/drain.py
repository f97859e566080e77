"""Drain: claim nothing more, let running tasks finish (upload, report), then exit 0.

Operators retire a worker without killing tasks: SIGUSR1 (scriptworker's convention) or ``megalodon drain
[--state-dir DIR]``, which signals the worker process recorded in the state dir's ``megalodon-worker.json``.
That file (0600, written at start, removed at exit) also tells ``megalodon status`` the worker's state:
``running``, ``draining`` or ``quarantined`` (a self-check fails, :mod:`.self_checks`).

A drain is the mildest stop: SIGINT (71) or SIGTERM (72) after it still act as usual — SIGTERM aborts the
tasks being drained with worker-shutdown — and exit 0 says "drained on request, nothing lost".
generic-worker has no drain; its SIGUSR1 would kill the process (the signal's default action).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .state_files import write_private

#: The worker's process and state, for ``megalodon drain`` and ``megalodon status``.
WORKER_FILE = "megalodon-worker.json"

#: The signal that drains a worker.
DRAIN_SIGNAL = signal.SIGUSR1

WorkerState = Literal["running", "draining", "quarantined"]


class DrainError(Exception):
    """No worker to drain in that state dir (not running, or the file names another program)."""


@dataclass(frozen=True)
class WorkerProcess:
    """What ``megalodon-worker.json`` says about the worker using a state dir."""

    pid: int
    state: str
    problems: dict[str, str]


class WorkerFile:
    """``megalodon-worker.json`` of one worker: its pid, state and failing self-checks.

    Written on each change of state: a few dozen bytes in the worker's own state dir, like the runtime
    config file, so the write is done in place rather than in a thread.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / WORKER_FILE
        self.state: WorkerState = "running"
        self.problems: dict[str, str] = {}
        self._written = False

    def write(self) -> None:
        doc = {"pid": os.getpid(), "state": self.state, "problems": self.problems}
        write_private(self.path, json.dumps(doc) + "\n")
        self._written = True

    def set(self, state: WorkerState | None = None, *, problems: dict[str, str] | None = None) -> None:
        """Change the state (``draining`` is final) and/or the failing checks; rewrite the file if written."""
        if state is not None and self.state != "draining":
            self.state = state
        if problems is not None:
            self.problems = dict(problems)
        if self._written:
            self.write()

    def quarantine(self, problems: dict[str, str]) -> None:
        """The failing self-checks changed (:class:`~.self_checks.SelfChecks`): quarantined while any fails."""
        self.set("quarantined" if problems else "running", problems=problems)

    def remove(self) -> None:
        if self._written:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._written = False


def _is_megalodon(pid: int) -> bool:
    """Whether ``pid`` is alive and runs megalodon (a stale file's pid may have been reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's: the cmdline says whose
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no procfs: trust the liveness check
    return b"megalodon" in cmdline


def read_worker(state_dir: Path) -> WorkerProcess | None:
    """The live worker using ``state_dir``, or None (no file, unreadable, or its process is gone)."""
    try:
        data: Any = json.loads((state_dir / WORKER_FILE).read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_megalodon(pid):
        return None
    problems = data.get("problems") if isinstance(data.get("problems"), dict) else {}
    return WorkerProcess(pid, str(data.get("state", "running")), {str(k): str(v) for k, v in problems.items()})


def request_drain(state_dir: Path) -> WorkerProcess:
    """Send the drain signal to the worker using ``state_dir``; raises :class:`DrainError` when none runs."""
    worker = read_worker(state_dir)
    if worker is None:
        raise DrainError(f"no running megalodon worker uses state dir {state_dir} (no live {WORKER_FILE})")
    try:
        os.kill(worker.pid, DRAIN_SIGNAL)
    except ProcessLookupError:
        raise DrainError(f"the worker (pid {worker.pid}) exited before it could be drained") from None
    except PermissionError:
        raise DrainError(f"not allowed to signal the worker (pid {worker.pid}): run as its user") from None
    return worker


__all__ = ["DRAIN_SIGNAL", "WORKER_FILE", "DrainError", "WorkerFile", "WorkerProcess", "read_worker", "request_drain"]
