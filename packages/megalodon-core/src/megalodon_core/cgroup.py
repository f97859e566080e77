"""Per-task control groups: the kill boundary of a task's processes and its optional memory limit.

Process groups and sessions belong to the task (``setsid``, a double fork, ``cd /`` and a daemon is out of
reach of every walk by process group or working directory); a cgroup does not: a process cannot leave the
cgroup it was started in without write access to another cgroup's ``cgroup.procs``, which only root has.
So every command of a task is started inside ``megalodon/task-<digest of taskId/runId>`` and, when the run
ends, everything still in it is killed, whatever it did to detach.

Both hierarchies are supported, chosen once per process by :func:`detect`:

- **cgroup v2** (the unified hierarchy: ``/sys/fs/cgroup/cgroup.controllers`` exists): one directory
  ``/sys/fs/cgroup/megalodon/<name>``; ``cgroup.kill`` (Linux 5.14+) kills the whole tree in one write,
  otherwise ``cgroup.freeze`` then a SIGKILL loop; the memory limit is ``memory.max``, a task killed for it
  shows as ``oom_kill`` in ``memory.events``.  The base is created at the root of the hierarchy because v2
  forbids enabling controllers below a cgroup that holds processes (the worker's own cgroup does).
- **cgroup v1** (separate ``freezer`` and ``memory`` hierarchies, as on the CI machines): the same name in
  each mounted controller; the freezer stops the tree while it is killed (a fork bomb cannot outrun the
  loop); the memory limit is ``memory.limit_in_bytes``, OOM kills are ``oom_kill`` in ``memory.oom_control``
  (``memory.failcnt`` on kernels without that line).

The v1 path is exercised by the tests against the real kernel; the v2 file protocol (which files are
written, in which order, with what) is checked against a fake tree in a temporary directory
(``tests/core/test_cgroup.py``), since the CI hosts have no unified hierarchy.

Joining happens between fork and exec: :meth:`TaskCgroup.open_procs` opens each ``cgroup.procs`` in the
worker (as root) and the child writes ``0`` ("myself") to those descriptors before it execs.  The kernel
checks the opener's credentials, so this works after the child has switched to a task user, and the
command never runs one instruction outside its cgroup.

Each task cgroup has an owner marker (:mod:`megalodon_core.owner`: the creating worker's pid and start
time), a file named after the cgroup in :data:`OWNERS_DIR`, written before the cgroup is made: cgroupfs holds
no regular files.  A worker killed without a later recovery run leaves its empty cgroups behind; at start,
:meth:`CgroupHost.sweep_orphans` removes every empty ``megalodon/task-<digest>`` whose owner is no live
process.  Nothing outside ``megalodon/``, and nothing not named as megalodon names its cgroups, is touched.
A worker keeps the markers of its finished cgroups as spares (``.spare-<pid>-<n>``, the same text) and renames
one into place for its next cgroup; the sweep removes the spares of workers that are gone.

Everything here blocks on small pseudo-files: callers run it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .owner import marker_alive, owner_marker
from .spawner_process import cgroup_joiner

log = logging.getLogger(__name__)

#: Where cgroup hierarchies are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Directory below each hierarchy that holds the task cgroups of every megalodon worker on the host.
BASE = "megalodon"
#: v1 controllers used: the freezer stops a tree while it is killed, memory limits it (a task gets a memory
#: cgroup only when there is a limit to enforce, see CgroupHost.task_base_dirs).
V1_CONTROLLERS = ("freezer", "memory")
#: Rounds of "read cgroup.procs, SIGKILL each" before giving up; each round sleeps a little.
KILL_ROUNDS = 500
KILL_PAUSE = 0.01
#: How long to wait for a v1 freezer to report FROZEN before killing anyway.
FREEZE_WAIT = 1.0
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
#: The names :func:`task_cgroup_name` gives: the only cgroups a sweep may remove.
TASK_NAME = re.compile(r"task-[0-9a-f]{32}")
#: Owner markers of task cgroups, one file per cgroup (tmpfs: gone at reboot, like the cgroups).
OWNERS_DIR = Path("/run/megalodon/cgroups")
#: Held while this process passes through a task cgroup (:meth:`TaskCgroup.passage`) and while
#: :meth:`TaskCgroup.kill` freezes one: a freeze with the worker inside would stop the worker with its task.
#: One lock for every cgroup (kills are rare, a passage lasts microseconds); a passage never waits for it.
_PASSAGE = threading.Lock()
#: A passage whose two migrations took longer than this is slow: the host waits for an RCU grace period on
#: each ``cgroup.procs`` write (v1 without ``favordynmods``: ~10 ms), and a passage runs on the event loop.
MIGRATION_SLOW = 0.001
#: After this many slow passages in a row, passages are given up for this process's lifetime.
SLOW_MIGRATIONS = 3
#: [consecutive slow passages, given up].
_MIGRATE = [0, False]
#: What the worker exits with when it cannot leave a task cgroup (see :func:`_leave`).
EXIT_STUCK_IN_TASK_CGROUP = 69


class CgroupError(Exception):
    """A cgroup could not be created, joined or emptied; the message names the file."""


def task_cgroup_name(task_id: str, run_id: int) -> str:
    """The cgroup of one run: stable, so a restarted worker finds what a killed one left (crash recovery).

    A digest, not the task id: ``/proc/<pid>/cgroup`` and the cgroup directories are readable by every
    user, and a task must not learn its neighbours' task ids (it could read their live logs by id).
    """
    digest = hashlib.sha256(f"{task_id}/{run_id}".encode()).hexdigest()[:32]
    return f"task-{digest}"


@dataclass(frozen=True)
class CgroupHost:
    """What this host offers: the hierarchy version and, for v1, the mounted controllers."""

    version: int
    root: Path
    #: v1: controller name -> its hierarchy's mount; v2: {"unified": root}.
    mounts: dict[str, Path] = field(default_factory=dict)
    #: Where each task cgroup's owner marker is kept.
    owners: Path = OWNERS_DIR

    @property
    def has_memory(self) -> bool:
        if self.version == 2:
            return "memory" in _read(self.root / "cgroup.controllers").split()
        return "memory" in self.mounts

    def base_dirs(self) -> list[Path]:
        return [mount / BASE for mount in self.mounts.values()]

    def task_base_dirs(self, memory_limit: int) -> list[Path]:
        """Where a new task cgroup is made: v1 skips the memory hierarchy when there is no limit to enforce
        and the freezer is the kill boundary (one directory, one migration and one removal less per task)."""
        if self.version == 1 and not memory_limit and "freezer" in self.mounts:
            return [self.mounts["freezer"] / BASE]
        return self.base_dirs()

    def create(self, name: str, *, memory_limit: int = 0) -> TaskCgroup:
        """A fresh task cgroup ``name`` (a leftover of that name is emptied and reused)."""
        if not _NAME.fullmatch(name):
            raise CgroupError(f"invalid cgroup name {name!r}")
        if memory_limit and not self.has_memory:
            raise CgroupError(f"no memory controller in the cgroup hierarchy at {self.root}")
        if self.version == 2:
            self._enable_v2_controllers()
        # The marker first: a sweep by another worker starting now never sees this cgroup without an owner.
        try:
            _place_marker(self.owners, name)
        except OSError as exc:
            raise CgroupError(f"could not write the owner marker {self.owners / name}: {exc.strerror or exc}") from exc
        dirs: list[Path] = []
        for base in self.task_base_dirs(memory_limit):
            path = base / name
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"could not create cgroup {path}: {exc.strerror or exc}") from exc
            dirs.append(path)
        group = TaskCgroup(self, name, dirs)
        if memory_limit:
            group.set_memory_limit(memory_limit)
        return group

    def existing(self, name: str) -> TaskCgroup | None:
        """The task cgroup ``name`` if any hierarchy still has it (crash recovery)."""
        if not _NAME.fullmatch(name):
            return None
        dirs = [base / name for base in self.base_dirs() if (base / name).is_dir()]
        return TaskCgroup(self, name, dirs) if dirs else None

    def sweep_orphans(self) -> list[str]:
        """Remove the empty task cgroups no live worker owns; returns their names (worker start).

        Only ``megalodon/task-<digest>`` directories are candidates (:data:`TASK_NAME`), so no cgroup
        megalodon did not create is touched.  A cgroup whose marker names a live process is kept (that
        worker may be between two commands of a task); one that still holds processes is kept too and
        logged (crash recovery of the run that made it kills them).  A cgroup without a marker was made by
        no running worker: markers are written before the cgroup.  Markers whose cgroup is gone are dropped.
        """
        names = {
            entry.name
            for base in self.base_dirs()
            if base.is_dir()
            for entry in base.iterdir()
            if TASK_NAME.fullmatch(entry.name) and entry.is_dir()
        }
        removed: list[str] = []
        for name in sorted(names):
            if marker_alive(_read(self.owners / name)):
                continue
            group = TaskCgroup(self, name, [base / name for base in self.base_dirs() if (base / name).is_dir()])
            try:
                emptied = group.try_rmdir()
            except CgroupError as exc:
                log.warning("leftover task cgroup %s: %s", name, exc)
                continue
            if emptied:
                removed.append(name)
            else:
                log.warning("leftover task cgroup %s of no live worker still holds processes: kept", name)
        # Markers of cgroups that no longer exist (removed by hand, or by a worker killed before the unlink),
        # and the spare markers of workers that are gone.
        if self.owners.is_dir():
            for marker in self.owners.iterdir():
                kind = TASK_NAME.fullmatch(marker.name) or marker.name.startswith(SPARE_MARKER_PREFIX)
                if kind and marker.name not in names and not marker_alive(_read(marker)):
                    with contextlib.suppress(OSError):
                        marker.unlink()
        return removed

    def drop_marker(self, name: str) -> None:
        """The marker goes: one this process placed is kept as a spare for its next cgroup (renamed aside,
        :data:`SPARE_MARKER_PREFIX`), any other (a dead worker's, found by recovery) is unlinked."""
        key = (os.getpid(), self.owners)
        spares = _spare_markers.setdefault(key, [])
        if name in _placed.get(key, ()) and len(spares) < SPARE_MARKERS:
            _placed[key].discard(name)
            spare = f"{SPARE_MARKER_PREFIX}{key[0]}-{next(_spare_names)}"
            try:
                os.rename(f"{self.owners}/{name}", f"{self.owners}/{spare}")
                spares.append(spare)
                return
            except FileNotFoundError:
                return
            except OSError:
                pass
        _placed.get(key, set()).discard(name)
        with contextlib.suppress(OSError):
            (self.owners / name).unlink()

    def _enable_v2_controllers(self) -> None:
        """Delegate memory and pids to ``megalodon/`` and its children (best effort: the root may refuse)."""
        base = self.root / BASE
        base.mkdir(exist_ok=True)
        available = set(_read(self.root / "cgroup.controllers").split())
        wanted = " ".join(f"+{c}" for c in ("memory", "pids") if c in available)
        if not wanted:
            return
        for directory in (self.root, base):
            current = set(_read(directory / "cgroup.subtree_control").split())
            if all(c[1:] in current for c in wanted.split()):
                continue
            try:
                (directory / "cgroup.subtree_control").write_text(wanted)
            except OSError as exc:
                log.warning("could not enable %s in %s/cgroup.subtree_control: %s", wanted, directory, exc)


#: Names of kept markers (never a task cgroup's name): ``.spare-<pid>-<n>``, holding their process's marker.
SPARE_MARKER_PREFIX = ".spare-"
#: Spare markers kept per process at most (one per run in flight is enough).
SPARE_MARKERS = 4
#: This process's spare markers and the markers it placed, by (pid, owners directory).
_spare_markers: dict[tuple[int, Path], list[str]] = {}
_placed: dict[tuple[int, Path], set[str]] = {}
_spare_names = itertools.count()


def _place_marker(owners: Path, name: str) -> None:
    """``owners/name`` holding this process's marker: a spare of this process's renamed into place, else
    written.  A marker is the same text for every cgroup of a process, and a rename costs a fraction of
    creating a file and unlinking it (issue 13: on ext4 an inode allocation skips every recently freed one)."""
    key = (os.getpid(), owners)
    spares = _spare_markers.get(key)
    while spares:
        spare = spares.pop()
        try:
            os.rename(f"{owners}/{spare}", f"{owners}/{name}")
            break
        except OSError:  # removed by hand or by a sweep: write one
            continue
    else:
        _write_marker(owners, name, owner_marker())
    _placed.setdefault(key, set()).add(name)


def _write_marker(owners: Path, name: str, text: str) -> None:
    """``owners/name`` holding ``text`` (the directory made when missing): three syscalls per task."""
    try:
        fd = os.open(owners / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        owners.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(owners / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    """A small pseudo-file's text ("" when unreadable): one open, reads, one close (``Path.read_text``
    adds a stat, an ioctl and seeks, per read of ``cgroup.procs`` on every task)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


@dataclass
class TaskCgroup:
    """One task's cgroup (one directory per v1 hierarchy, one in v2)."""

    host: CgroupHost
    name: str
    dirs: list[Path]

    @functools.cached_property
    def _kill_dir(self) -> Path:
        """The directory whose ``cgroup.procs`` lists the tree: the freezer's in v1 when mounted (computed
        once: several reads per task use it)."""
        if self.host.version == 1 and "freezer" in self.host.mounts:
            return self.host.mounts["freezer"] / BASE / self.name
        return self.dirs[0]

    def _memory_dir(self) -> Path | None:
        if self.host.version == 2:
            return self.dirs[0]
        if "memory" not in self.host.mounts:
            return None
        return self.host.mounts["memory"] / BASE / self.name

    # -- joining ------------------------------------------------------------------------------------------
    def open_procs(self) -> list[int]:
        """Write-only descriptors of each ``cgroup.procs`` (opened as the worker; close them after spawn)."""
        fds: list[int] = []
        try:
            for directory in self.dirs:
                fds.append(os.open(directory / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise CgroupError(f"could not open {directory}/cgroup.procs: {exc.strerror or exc}") from exc
        return fds

    def home_procs(self) -> list[int]:
        """Where this process goes back to after a :meth:`passage`: a write-only descriptor of its own
        ``cgroup.procs`` for each of :attr:`dirs` — only for a v1 cgroup in the freezer alone.

        Empty otherwise: in a memory cgroup the kernel's OOM killer may pick any member, and v2 kills a whole
        cgroup in one write (``cgroup.kill``) that could spare no passer-by.

        The descriptor is opened once per process and kept (:data:`_home_fds`; not the caller's to close): the
        way home is the same for every passage, and an open and a close of it were a tenth of a passage.
        """
        if self.host.version != 1 or self.dirs != [self._kill_dir] or "freezer" not in self.host.mounts:
            return []
        home = _own_cgroup("freezer")
        if home is None:
            return []
        mount = self.host.mounts["freezer"]
        key = (os.getpid(), mount, home)
        fd = _home_fds.get(key)
        if fd is None:
            try:
                fd = _home_fds[key] = os.open(mount / home.lstrip("/") / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                return []
        return [fd]

    @contextlib.contextmanager
    def passage(self, join: list[int]) -> Iterator[bool]:
        """This process inside the cgroup while the block runs (yields True), so that a command it starts by
        ``vfork`` inherits the cgroup: no fork of the worker and no round trip to the spawner process, the
        cheapest way to start a command in its cgroup (issue 13).  ``join`` is :meth:`open_procs`.

        Yields False, having moved nothing, where a passage is not safe or not cheap: anything but a v1
        freezer cgroup alone (:meth:`home_procs`), while a :meth:`kill` freezes a cgroup, when the write
        is refused, and for good after :data:`SLOW_MIGRATIONS` slow passages in a row.  The block must not
        await: nothing else of the worker runs while it is inside, and :meth:`kill` waits for the way out.
        """
        if _MIGRATE[1] or len(join) != 1 or not _PASSAGE.acquire(blocking=False):
            yield False
            return
        try:
            homes = self.home_procs()
            begin = time.monotonic()
            try:
                entered = bool(homes) and os.write(join[0], b"0") == 1
            except OSError:
                entered = False
            if not entered:
                yield False
                return
            moved = time.monotonic() - begin
            try:
                yield True
            finally:
                back = time.monotonic()
                _leave(homes[0], self)
                slow = moved + (time.monotonic() - back) > MIGRATION_SLOW
                _MIGRATE[0] = _MIGRATE[0] + 1 if slow else 0
                if _MIGRATE[0] >= SLOW_MIGRATIONS and not _MIGRATE[1]:
                    _MIGRATE[1] = True
                    log.warning(
                        "moving the worker through task cgroups is slow on this host (%d in a row over %.0f ms): "
                        "commands are started by the spawner process from now on",
                        SLOW_MIGRATIONS,
                        MIGRATION_SLOW * 1000,
                    )
        finally:
            _PASSAGE.release()

    def open_dir(self) -> int | None:
        """v2: a descriptor of the cgroup's directory, for ``clone3(CLONE_INTO_CGROUP)``; None on v1."""
        if self.host.version != 2:
            return None
        try:
            return os.open(self.dirs[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupError(f"could not open {self.dirs[0]}: {exc.strerror or exc}") from exc

    @staticmethod
    def joiner(fds: list[int]) -> Callable[[], None]:
        """A ``preexec_fn`` moving the forked child into the cgroup (only async-signal-safe work in it)."""
        return cgroup_joiner(fds)

    def pids(self) -> list[int]:
        """The task's processes in the cgroup."""
        return [int(p) for p in _read(self._kill_dir / "cgroup.procs").split() if p.isdigit()]

    # -- memory -------------------------------------------------------------------------------------------
    def set_memory_limit(self, limit: int) -> None:
        directory = self._memory_dir()
        if directory is None:
            raise CgroupError("no memory controller mounted")
        name = "memory.max" if self.host.version == 2 else "memory.limit_in_bytes"
        try:
            (directory / name).write_text(str(limit))
        except OSError as exc:
            raise CgroupError(f"could not write {directory / name}: {exc.strerror or exc}") from exc
        if self.host.version == 2:
            # Swap would let a task exceed its limit unseen; absent without swap accounting.
            with contextlib.suppress(OSError):
                (directory / "memory.swap.max").write_text("0")
        else:
            with contextlib.suppress(OSError):
                (directory / "memory.swappiness").write_text("0")

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the memory limit (0 when nothing says so)."""
        directory = self._memory_dir()
        if directory is None:
            return 0
        if self.host.version == 2:
            return _field(_read(directory / "memory.events"), "oom_kill")
        control = _read(directory / "memory.oom_control")
        if "oom_kill " in control:
            return _field(control, "oom_kill")
        text = _read(directory / "memory.failcnt").strip()  # old kernels: hits of the limit
        return int(text) if text.isdigit() else 0

    # -- killing ------------------------------------------------------------------------------------------
    def kill(self) -> int:
        """SIGKILL every process in the cgroup until it is empty; returns how many were signalled."""
        with _PASSAGE:  # the worker is never inside a cgroup it freezes (a passage lasts microseconds)
            return self._kill()

    def _kill(self) -> int:
        if self.host.version == 2:
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
        frozen = self._freeze(True)
        killed = 0
        try:
            for _ in range(KILL_ROUNDS):
                pids = self.pids()
                if not pids:
                    return killed
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed += 1
                if frozen:
                    # SIGKILL is delivered to frozen tasks only once they thaw; nothing forks meanwhile
                    # because the signal is pending before the thaw.
                    self._freeze(False)
                    frozen = False
                time.sleep(KILL_PAUSE)
        finally:
            if frozen:
                self._freeze(False)
        raise CgroupError(f"processes kept appearing in cgroup {self._kill_dir} after {KILL_ROUNDS} rounds of SIGKILL")

    def _freeze(self, on: bool) -> bool:
        """Freeze (or thaw) the tree; True when a freeze was requested and took effect (or timed out)."""
        if self.host.version == 2:
            path = self.dirs[0] / "cgroup.freeze"
            value = "1" if on else "0"
        elif "freezer" in self.host.mounts:
            path = self._kill_dir / "freezer.state"
            value = "FROZEN" if on else "THAWED"
        else:
            return False
        try:
            path.write_text(value)
        except OSError:
            return False
        if on and self.host.version == 1:
            deadline = time.monotonic() + FREEZE_WAIT
            while _read(path).strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(KILL_PAUSE)
        return on

    def try_rmdir(self) -> bool:
        """Delete the directories of an empty cgroup at once; False (nothing lost) when one is still busy.

        Cheap enough for the event loop: the common end of a task, whose cgroup emptied with its commands.
        The kernel refuses (EBUSY) to remove a cgroup that holds a process, so the kill directory goes first
        and its removal is the emptiness test: no read of ``cgroup.procs`` before.
        """
        kill_dir = self._kill_dir
        for directory in sorted(self.dirs, key=lambda d: d != kill_dir):
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    return False
                raise CgroupError(f"could not remove cgroup {directory}: {exc.strerror or exc}") from exc
        self.host.drop_marker(self.name)
        return True

    def remove(self) -> None:
        """Kill what is left, then delete the directories (a cgroup with processes cannot be removed)."""
        self.kill()
        for directory in self.dirs:
            for attempt in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == 49:
                        raise CgroupError(f"could not remove cgroup {directory}: {exc.strerror or exc}") from exc
                    time.sleep(KILL_PAUSE)  # the last killed process is still being torn down
        self.host.drop_marker(self.name)


def _leave(home: int, group: TaskCgroup) -> None:
    """Back out of ``group`` after a passage: to this process's own cgroup, else to the freezer root.

    A worker that can do neither exits (:data:`EXIT_STUCK_IN_TASK_CGROUP`) rather than stay: the task's end
    would freeze it with the task, for good.  Its journal lets the next worker process recover its runs.
    """
    try:
        os.write(home, b"0")
        return
    except OSError as exc:
        first = exc
    try:
        (group.host.mounts["freezer"] / "cgroup.procs").write_text("0")
    except OSError as exc:
        log.critical(
            "the worker cannot leave task cgroup %s (its own cgroup: %s; the freezer root: %s): exiting",
            group.name,
            first.strerror or first,
            exc.strerror or exc,
        )
        logging.shutdown()
        os._exit(EXIT_STUCK_IN_TASK_CGROUP)
    _forget_home()  # now in the root: the next passage comes back there
    log.error(
        "the worker could not go back to its own freezer cgroup (%s) after starting a command of %s: it is now "
        "in the freezer hierarchy's root",
        first.strerror or first,
        group.name,
    )


#: This process's own cgroup in each v1 hierarchy, by pid (a forked child reads its own).
_own_cgroups: dict[int, dict[str, str]] = {}
#: Kept descriptors of the way home after a passage (:meth:`TaskCgroup.home_procs`), by (pid, freezer mount,
#: own cgroup): a forked child, or a process that moved, opens its own.
_home_fds: dict[tuple[int, Path, str], int] = {}


def _forget_home() -> None:
    """This process's own cgroups are to be read again, and the way home opened again."""
    _own_cgroups.clear()
    while _home_fds:
        with contextlib.suppress(OSError):
            os.close(_home_fds.popitem()[1])


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path in the v1 hierarchy of ``controller`` (``/proc/self/cgroup``), or None."""
    me = os.getpid()
    if me not in _own_cgroups:
        paths: dict[str, str] = {}
        for line in _read(Path("/proc/self/cgroup")).splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for name in parts[1].split(","):
                    paths[name] = parts[2]
        _own_cgroups[me] = paths
    return _own_cgroups[me].get(controller)


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def detect(root: Path = CGROUP_ROOT, owners: Path = OWNERS_DIR) -> CgroupHost | None:
    """The cgroup hierarchy this process can create task cgroups in, or None (then callers fall back to
    killing by process group and say so once in the worker log)."""
    if os.geteuid() != 0:
        return None
    if (root / "cgroup.controllers").is_file():
        host = CgroupHost(2, root, {"unified": root}, owners)
    else:
        mounts = {c: root / c for c in V1_CONTROLLERS if (root / c / "cgroup.procs").is_file()}
        if not mounts:
            return None
        host = CgroupHost(1, root, mounts, owners)
    try:
        for base in host.base_dirs():
            base.mkdir(exist_ok=True)
    except OSError as exc:
        log.warning("cgroups unusable (%s): %s", root, exc)
        return None
    return host


_HOST: list[CgroupHost | None] = []


def host() -> CgroupHost | None:
    """:func:`detect` once per process."""
    if not _HOST:
        _HOST.append(detect())
    return _HOST[0]


def kill_task_cgroup(task_id: str, run_id: int) -> int:
    """Kill and remove what a run's cgroup still holds (a previous worker process crashed); returns the count."""
    found = host()
    group = found.existing(task_cgroup_name(task_id, run_id)) if found is not None else None
    if group is None:
        return 0
    killed = group.kill()
    with contextlib.suppress(CgroupError):
        group.remove()
    return killed


def sweep_orphan_cgroups() -> list[str]:
    """:meth:`CgroupHost.sweep_orphans` on this host (none without usable cgroups); for executors' start."""
    found = host()
    return found.sweep_orphans() if found is not None else []
