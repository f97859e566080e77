"""Task directories: made for each claim and, once the run is cleaned up, recycled for the next one.

Every run gets ``task_<id>_<run>/`` and its ``generic-worker/`` (the task log's directory).  On ext4 making and
removing a directory costs about 50 µs of CPU and twice that in wall time each (the journal), four per task,
where the two renames that move an emptied directory out of the way and back in under the next run's name
cost about 15 µs (issue 13).  So an emptied task directory becomes a *spare* (``.megalodon-spare-<pid>-<n>``
beside the task directories), and the next claim renames it into place.

Only a directory exactly as this worker makes it is recycled: owned by the worker's user and group, with the
mode a fresh one gets, without extended attributes (so without ACLs: a default ACL the task set must not
reach the next run's files), holding nothing but a ``generic-worker/`` of the same kind.  Anything
else (the multiuser engine gives the directory to the task user; the task chmodded it) is removed as
before, and a fresh one is made.  A spare is as empty as a fresh directory (a kept log is empty); what could reach it is
only what could reach a fresh one: the same user (tasks sharing a user share everything it can write).

The previous run's log file stays too, emptied, when nothing but this worker ever held it (:meth:`_kept_log`):
the next run's log then opens an existing file.  Creating a file is where an ext4 without a journal is slow:
it skips every inode freed in the last minutes before it allocates one, 0.4-0.6 ms per task once a worker has
run for a while (issue 13; ``recently_deleted`` in ``fs/ext4/ialloc.c``).  The emptying happens under the
spare's name, so whatever still reaches the run's files by path finds nothing there.

Spares live as long as the worker: :meth:`TaskDirs.discard` removes them at exit, and a worker's start
removes what a killed one left (:func:`remove_leftover_spares`).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import signal
import stat
from pathlib import Path

from .small_tree import BUDGET, DIR_FLAGS, clear_dir, remove_small_tree

#: The task log's directory inside each task directory (generic-worker's layout).
LOG_DIR = "generic-worker"
#: The task log's file in :data:`LOG_DIR`.
LOG_NAME = "live_backing.log"
#: Whether this platform has file leases (Linux): without them a log is never reused.
_LEASES = hasattr(fcntl, "F_SETLEASE") and hasattr(fcntl, "F_SETSIG")
#: Names of spare directories; never a name a run's directory gets (``task_…``).
SPARE_PREFIX = ".megalodon-spare-"
#: Spares kept at most: a run's start may come before the previous run's cleanup at capacity > 1, and more
#: spares would be empty directories for nothing.
SPARES = 2


class TaskDirs:
    """This worker's task directories: :meth:`make` one per claim, :meth:`recycle` it when the run is done."""

    def __init__(self) -> None:
        self._spares: list[Path] = []
        #: (uid, gid, permission bits) of a directory as this worker makes it; None before the first.
        self._made: tuple[int, int, int] | None = None
        self._names = itertools.count()

    def make(self, task_dir: Path) -> None:
        """``task_dir`` and its :data:`LOG_DIR`, empty: a spare renamed into place, else made anew."""
        while self._spares:
            spare = self._spares.pop()
            try:
                os.rename(spare, task_dir)
                return
            except OSError:  # removed by hand, or by a worker sharing tasksDir at its start: make one
                remove_small_tree(spare)
        task_dir.mkdir(parents=True)
        (task_dir / LOG_DIR).mkdir()
        if self._made is None:
            made = os.stat(task_dir)
            self._made = (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode))

    def recycle(self, task_dir: Path) -> bool:
        """Empty ``task_dir`` and keep it as a spare; True when it is one now.

        False when it is not as this worker makes it, when it holds more than :data:`BUDGET` entries, when
        enough spares are kept, or when something could not be removed: then it may be partly emptied and
        the caller removes it as it would have.
        """
        if self._made is None or len(self._spares) >= SPARES:
            return False
        try:
            fd = os.open(task_dir, DIR_FLAGS)
        except OSError:
            return False
        try:
            return self._recycle(task_dir, fd)
        except OSError:
            return False
        finally:
            os.close(fd)

    def _recycle(self, task_dir: Path, fd: int) -> bool:
        if not self._as_made(fd):
            return False
        try:
            log_fd = os.open(LOG_DIR, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            log_fd = None
        except OSError:  # a symlink or a file in its place: not as made
            return False
        try:
            if log_fd is not None and (not self._as_made(log_fd) or clear_dir(log_fd, BUDGET, keep=LOG_NAME) is None):
                return False
            if clear_dir(fd, BUDGET, keep=LOG_DIR) is None:
                return False
            spare = task_dir.parent / f"{SPARE_PREFIX}{os.getpid()}-{next(self._names)}"
            os.rename(task_dir, spare)
            if log_fd is not None and not self._kept_log(log_fd):
                try:
                    os.unlink(LOG_NAME, dir_fd=log_fd)
                except FileNotFoundError:
                    pass
                except OSError:  # a log the next run would append to: back, for the caller to remove
                    os.rename(spare, task_dir)
                    return False
        finally:
            if log_fd is not None:
                os.close(log_fd)
        self._spares.append(spare)
        return True

    def _as_made(self, fd: int) -> bool:
        found = os.fstat(fd)
        if (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) != self._made:
            return False
        return _no_xattrs(fd)

    def _kept_log(self, log_fd: int) -> bool:
        """Empty the previous run's log in place (True) if it is the file this worker wrote and closed.

        It must be a regular file with one name, the worker's owner and the mode a fresh log gets, without
        extended attributes; and no open file description of it may exist but this one: a write lease is
        granted only then.  A live log reader still streaming the finished log, or a descriptor a task process
        got hold of, keeps the file from being reused (it is unlinked as before, and the reader keeps its
        bytes).  While the lease is held a concurrent open waits for it; the signal that tells the holder
        is SIGURG, ignored by default (SIGIO, the default, would kill the worker).
        """
        assert self._made is not None
        if not _LEASES:
            return False
        try:
            found = os.stat(LOG_NAME, dir_fd=log_fd, follow_symlinks=False)
        except OSError:
            return False
        expected = (self._made[0], self._made[1], self._made[2] & 0o666)  # what open(..., "ab") makes
        if not stat.S_ISREG(found.st_mode) or (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) != expected:
            return False
        try:
            fd = os.open(LOG_NAME, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=log_fd)
        except OSError:
            return False
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino, opened.st_nlink) != (found.st_dev, found.st_ino, 1):
                return False
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)  # EAGAIN while another description is open
            if not _no_xattrs(fd):
                return False
            os.ftruncate(fd, 0)
        except OSError:  # no leases here (NFS, leases-enable off): removed and made anew, as before
            return False
        finally:
            os.close(fd)  # releases the lease
        return True

    def discard(self) -> None:
        """Remove the spares (the worker exits); blocking: run it in a thread."""
        while self._spares:
            spare = self._spares.pop()
            if not remove_small_tree(spare):  # empty when kept: only a hand could have filled it since
                shutil.rmtree(spare, ignore_errors=True)


def _no_xattrs(fd: int) -> bool:
    try:
        return not os.listxattr(fd)
    except OSError:  # a filesystem without extended attributes has no ACLs either
        return True


def remove_leftover_spares(tasks_dir: Path) -> None:
    """Remove the spares a killed worker left in ``tasks_dir`` (its start); blocking: run it in a thread.

    A worker sharing ``tasksDir`` loses its spares too, and makes fresh directories instead.
    """
    try:
        entries = [entry for entry in os.scandir(tasks_dir) if entry.name.startswith(SPARE_PREFIX)]
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):  # a file or link of that name is nobody's spare
            shutil.rmtree(entry.path, ignore_errors=True)


__all__ = ["LOG_DIR", "LOG_NAME", "SPARES", "SPARE_PREFIX", "TaskDirs", "remove_leftover_spares"]
