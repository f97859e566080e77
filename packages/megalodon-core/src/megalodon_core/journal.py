"""The claim journal: what this worker holds, on disk, so a restart after a hard kill can clean up.

generic-worker leaves the runs of a killed worker to expire (claim-expired, after up to 20 minutes, with
their processes possibly still running).  megalodon records each claim before running it — task id, run
id, the task credentials (needed to resolve the run), ``takenUntil`` and the task directory — and
removes the record once the run is reported.  At start, every record left over is a run the previous
process could not finish: its processes are killed, it is reported exception/worker-shutdown (so the
queue retries it at once), and its directory is removed.

Records hold task credentials: the directory is 0700 and each file 0600, written atomically.

A removed record is not unlinked: it is emptied and kept under a hidden name for the next record to be
written into (then renamed into place).  A worker running a task every few milliseconds would otherwise
allocate and free an inode per claim, and ext4's inode allocator skips every inode freed in the last
seconds (issue 13).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cgroup import CgroupError, kill_task_cgroup


def overwrite(fd: int, data: bytes, size: int | None = None) -> None:
    """Make the file behind ``fd`` hold exactly ``data``: written from offset 0, then cut to length if it
    was longer.  ``size``: the file's size when the caller knows it (else it is looked up).

    Never truncated to zero first: on ext4 a file truncated to zero and rewritten is flushed to disk at close
    (``auto_da_alloc``), 20x the cost of the write, and the worker rewrites its small files on every task
    (issue 13).  Nor cut when it was not longer: a truncate that changes nothing still rewrites the inode.
    """
    if size is None:
        size = os.fstat(fd).st_size
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], written)
    if size > len(data):
        os.ftruncate(fd, len(data))


@dataclass
class ClaimRecord:
    task_id: str
    run_id: int
    credentials: dict[str, str]
    taken_until: str
    task_dir: str


#: Hidden names of emptied record files kept for reuse, and how many are kept (one per concurrent claim
#: is enough; the rest are unlinked).
FREE_PREFIX = ".free-"
FREE_KEEP = 16


class ClaimJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: The directory as text: the names below are joined to it on every claim, and a ``Path`` join costs
        #: several times a string's (issue 13).
        self._dir = str(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._free: list[str] = []
        self._freed = 0
        for leftover in directory.iterdir():  # a previous process's temporary and emptied files
            if leftover.name.startswith((".claim-", FREE_PREFIX)):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _path(self, task_id: str, run_id: int) -> str:
        return f"{self._dir}/{task_id}-{run_id}.json"

    def _reused(self) -> tuple[int, str] | None:
        """An emptied record file, opened for writing (None when there is none to reuse)."""
        while self._free:
            path = self._free.pop()
            try:
                return os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC), path
            except OSError:
                continue
        return None

    def record(self, entry: ClaimRecord) -> None:
        # The record's own fields as they are: asdict's deep copy of the credentials is a dozen calls more
        # on every claim, for the same bytes.
        data = json.dumps(vars(entry)).encode()
        reused = self._reused()
        # 0600 from the start either way (credentials): mkstemp's mode, or an emptied record's.
        fd, tmp = reused if reused is not None else tempfile.mkstemp(dir=self.directory, prefix=".claim-")
        try:
            try:
                overwrite(fd, data, size=0)  # an emptied record or a new file
            finally:
                os.close(fd)
            os.replace(tmp, self._path(entry.task_id, entry.run_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, task_id: str, run_id: int) -> None:
        """Forget a record: renamed aside (recovery never sees it again) and emptied of its credentials."""
        free = f"{self._dir}/{FREE_PREFIX}{self._freed}"
        try:
            os.rename(self._path(task_id, run_id), free)
        except FileNotFoundError:
            return
        self._freed += 1
        try:
            # Emptied through a descriptor, not by name: ext4 marks a file cut to zero for a flush at its next
            # close (``auto_da_alloc``), and this close, with nothing to flush, clears the mark; by name, the
            # next record's close would flush it to disk (three times the whole cycle).
            fd = os.open(free, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(free)
            return
        if len(self._free) < FREE_KEEP:
            self._free.append(free)
        else:
            with contextlib.suppress(OSError):
                os.unlink(free)

    def discard_free(self) -> None:
        """Unlink the emptied files kept for reuse (the worker exits: its state directory holds records only)."""
        while self._free:
            with contextlib.suppress(OSError):
                os.unlink(self._free.pop())

    def entries(self) -> list[ClaimRecord]:
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                out.append(ClaimRecord(**data))
            except (OSError, ValueError, TypeError):
                with contextlib.suppress(OSError):
                    path.unlink()  # a torn or foreign file: nothing can be recovered from it
        return out


def kill_leftovers(entry: ClaimRecord) -> int:
    """Kill what a lost run left running: its cgroup (detached daemons included, see
    :mod:`megalodon_core.cgroup`), then any process still working inside its task directory (hosts without
    cgroups, or executors that use none).  Blocking: run it in a thread."""
    killed = 0
    with contextlib.suppress(CgroupError):
        killed += kill_task_cgroup(entry.task_id, entry.run_id)
    return killed + kill_processes_under(Path(entry.task_dir))


def kill_processes_under(directory: Path) -> int:
    """SIGKILL every process whose working directory is inside ``directory`` (leftovers of a lost run)."""
    root = directory.resolve()
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed
