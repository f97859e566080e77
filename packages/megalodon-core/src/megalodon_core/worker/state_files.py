"""The files a worker keeps in its ``stateDir``, as generic-worker keeps them, and their readers.

``tasks-resolved-count.txt`` (the ``numberOfTasksToRun`` count survives restarts), ``worker-status.json``
(``megalodon status``: the tasks running now), ``generic-worker-metadata.json`` (``enableMetadata``), the
claim journal directory, and ``worker-runner-config.json`` (which config values a running worker received
from worker-runner, for ``megalodon config explain``; never the secrets themselves).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..journal import overwrite

RESOLVED_COUNT_FILE = "tasks-resolved-count.txt"
#: Config values the running worker received from worker-runner, for ``megalodon config explain``.
RUNTIME_CONFIG_FILE = "worker-runner-config.json"
STATUS_FILE = "worker-status.json"
#: Where the status file goes while no task runs (generic-worker removes it then): renamed back and
#: overwritten at the next claim, so no file is created and freed per task (an ext4 inode allocation skips
#: every recently freed inode, and a busy worker frees thousands a minute).
IDLE_STATUS_FILE = ".worker-status.idle"
METADATA_FILE = "generic-worker-metadata.json"
JOURNAL_DIR = "megalodon-claims"


class _Paths(NamedTuple):
    resolved_count: str
    status: str
    idle: str


@functools.lru_cache(maxsize=16)
def _paths(state_dir: Path) -> _Paths:
    """The files rewritten on every claim, as text, joined once per state directory (a ``Path`` join costs
    several times a string's, and these are written twice per task; issue 13)."""
    return _Paths(*(os.path.join(state_dir, name) for name in (RESOLVED_COUNT_FILE, STATUS_FILE, IDLE_STATUS_FILE)))


def write_private(path: str | Path, text: str) -> None:
    """Write a state file only the worker's user can read (0600, also when it already existed).

    A multiuser task must not read them: the status file names the tasks running next to it, the metadata
    file the last task (with a task id, a neighbour's live log can be read through the queue).

    Overwritten in place (:func:`megalodon_core.journal.overwrite`): the count and status files are rewritten
    on every task.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        found = os.fstat(fd)
        if stat.S_IMODE(found.st_mode) != 0o600:  # a look is cheaper than a chmod that changes nothing
            os.fchmod(fd, 0o600)
        overwrite(fd, text.encode(), size=found.st_size)
    finally:
        os.close(fd)


def read_resolved_count(state_dir: Path) -> int:
    """The persisted count of resolved tasks (0 when missing or unreadable)."""
    try:
        return int((state_dir / RESOLVED_COUNT_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_resolved_count(state_dir: Path, resolved: int) -> None:
    write_private(_paths(state_dir).resolved_count, f"{resolved}\n")


def write_status(state_dir: Path, current: list[str], *, was_idle: bool = False) -> None:
    """The running task ids; the status file is gone when none run (renamed aside, see
    :data:`IDLE_STATUS_FILE`).  ``was_idle``: it was put aside since, so it is written there and renamed back
    (readers see the whole new file or none)."""
    _, status, idle = _paths(state_dir)
    if current:
        text = json.dumps({"currentTaskIds": current}) + "\n"
        if was_idle:
            write_private(idle, text)
            os.replace(idle, status)
        else:
            write_private(status, text)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.replace(status, idle)


def running_task_ids(state_dir: Path) -> list[str]:
    """What ``megalodon status`` shows: the tasks a worker using ``state_dir`` runs now."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("currentTaskIds", []))


def clear_runtime_config(state_dir: Path) -> None:
    """What a previous worker process received from its runner does not describe this one."""
    with contextlib.suppress(OSError):
        (state_dir / RUNTIME_CONFIG_FILE).unlink()


def write_runtime_config(state_dir: Path, values: Mapping[str, Any]) -> None:
    """Record which keys came from worker-runner (secrets as ``<set>``): a few bytes, fine on the loop."""
    write_private(state_dir / RUNTIME_CONFIG_FILE, json.dumps(dict(values)) + "\n")


def metadata_document(root_url: str, task_id: str, run_id: int) -> str:
    """generic-worker's ``generic-worker-metadata.json`` content after a task."""
    return json.dumps({"lastTaskUrl": f"{root_url}/tasks/{task_id}/runs/{run_id}"}) + "\n"
