"""OS accounts for the multiuser engine: one fresh ``task_<digits>`` user per task, and its removal.

Why each step is the way it is:

- Accounts are made with ``useradd``/``userdel``/``gpasswd`` (asyncio subprocesses, never on the loop
  thread) so the system's own tools keep ``/etc/passwd``, ``/etc/group`` and ``/etc/shadow`` consistent and
  locked against concurrent edits.
- The comment (GECOS) field records ``megalodon pid <pid> started <start time>`` of the worker process that made the
  account, so a later worker can tell a leftover of a crashed worker (its process is gone) from an account
  another live worker on the same host is using right now.  Accounts without the marker (generic-worker's)
  match the naming scheme and are swept, as generic-worker's ``purgeOldTasks`` does.
- Killing is by uid, from ``/proc/<pid>/status`` (real, effective and saved uid): process groups and
  sessions are under the task's control (``setsid``, double fork), and the owner of ``/proc/<pid>`` itself
  turns to root when a process makes itself non-dumpable.  A ``kill -9 -1`` sent *as the task user* first
  takes a fork bomb down in one kernel pass; the scan then repeats until no process of the uid is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

# One implementation of owner markers, in core: task cgroups carry the same marker.
from megalodon_core.owner import marker_alive, owner_marker

log = logging.getLogger(__name__)

#: generic-worker's task user names: ``task_`` and digits.
TASK_USER = re.compile(r"task_[0-9]+")
#: Directories every user may write to: files a task leaves there are removed with the task.
SHARED_WRITABLE = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
#: PATH of task commands (multiuser_posix.go: EnvVars).
TASK_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class UserError(Exception):
    """An account operation failed; the message carries the tool's own error output."""


@dataclass
class TaskUser:
    """A task's OS account.  ``groups`` are extra groups it was added to for the task (osGroups)."""

    name: str
    uid: int
    gid: int
    home: Path
    groups: list[str] = field(default_factory=list)

    def supplementary_gids(self) -> list[int]:
        """The groups a fresh login of the user gets (read at every command: osGroups may add some)."""
        return [g for g in os.getgrouplist(self.name, self.gid) if g != self.gid]


async def _tool(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def create_user(home: Path, *, shell: str = "/bin/bash") -> TaskUser:
    """A new locked account ``task_<digits>`` whose home is ``home`` (the task directory, as generic-worker)."""
    marker = await asyncio.to_thread(owner_marker)
    for _ in range(20):
        name = f"task_{time.time_ns() // 1000}"
        code, out = await _tool("useradd", "-M", "-U", "-d", str(home), "-s", shell, "-c", marker, name)
        if code == 0:
            entry = await asyncio.to_thread(pwd.getpwnam, name)
            return TaskUser(name, entry.pw_uid, entry.pw_gid, home)
        if code != 9:  # 9: name already in use (another task got the same microsecond)
            raise UserError(f"useradd {name} failed (exit code {code}): {out}")
    raise UserError("useradd kept reporting the generated task user name as taken")


async def add_to_group(user: TaskUser, group: str) -> None:
    code, out = await _tool("gpasswd", "-a", user.name, group)
    if code != 0:
        raise UserError(f"could not add {user.name} to group {group}: {out}")
    user.groups.append(group)


async def remove_from_group(user: TaskUser, group: str) -> None:
    code, out = await _tool("gpasswd", "-d", user.name, group)
    if code != 0:
        raise UserError(f"could not remove {user.name} from group {group}: {out}")
    with contextlib.suppress(ValueError):
        user.groups.remove(group)


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        real, effective, saved = (int(v) for v in line.split()[1:4])
                        if uid in (real, effective, saved):
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def kill_uid_processes_blocking(uid: int, *, rounds: int = 200) -> int:
    """SIGKILL every process of ``uid`` until a scan finds none; returns how many were signalled."""
    if uid == 0:
        raise ValueError("refusing to kill every process of root")
    killed = 0
    for _ in range(rounds):
        pids = _pids_of(uid)
        if not pids:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.01)
    raise UserError(f"processes of uid {uid} kept appearing after {rounds} rounds of SIGKILL")


async def kill_user_processes(user: TaskUser) -> int:
    """Kill everything the task user runs, however it detached (see module docstring)."""
    if user.uid == 0:
        raise ValueError("refusing to kill every process of root")
    with contextlib.suppress(OSError):
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            "kill -9 -1",
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": TASK_PATH},
        )
        await proc.wait()
    return await asyncio.to_thread(kill_uid_processes_blocking, user.uid)


#: Run as the task user to copy one file to stdout (the worker's staging file).  A path that exists but is
#: not a regular file (FIFO, socket, device) is refused (exit 3) without being opened; ``dd`` opens with
#: ``O_NONBLOCK``, so even a file swapped for a FIFO after that test cannot block: reading it gives EOF or
#: EAGAIN at once.  Coreutils' ``dd``, as ubiquitous as ``cat``, which generic-worker-style copies used.
_READ_AS_USER = (
    'if [ -e "$1" ] && [ ! -f "$1" ]; then echo "$1: not a regular file" >&2; exit 3; fi; '
    'exec dd if="$1" iflag=nonblock bs=1M status=none'
)
#: Exit code of the helper for a file that is not a regular file (FIFO, socket, device...).
NOT_REGULAR = 3


async def read_as_user(uid: int, gid: int, groups: list[int], source: Path, dest_fd: int) -> tuple[int, str]:
    """Copy ``source`` into ``dest_fd`` reading it as ``uid``; returns (helper exit code, its error text).

    Only whether ``source`` can be opened and read is decided with the task user's rights; the copy lands
    in a file the worker opened.  The helper never blocks on a special file, and it is a child of this call
    that is always waited for, so none is left behind.
    """
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        _READ_AS_USER,
        "read-as-task-user",
        str(source),
        user=uid,
        group=gid,
        extra_groups=groups,
        cwd="/",
        env={"PATH": TASK_PATH},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=dest_fd,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, err.decode(errors="replace").strip()


def _remove_shared_files_blocking(uid: int) -> None:
    """Entries of ``uid`` in /tmp, /var/tmp, /dev/shm: a later task user may get the same uid back."""
    for base in SHARED_WRITABLE:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


async def delete_user(user: TaskUser | str, *, remove_files: bool) -> None:
    """Kill the user's processes, drop the account (and its group), and optionally its leftover files."""
    if isinstance(user, str):
        entry = await asyncio.to_thread(pwd.getpwnam, user)
        user = TaskUser(user, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    await kill_user_processes(user)
    code, out = await _tool("userdel", user.name)
    if code not in (0, 6):  # 6: no such user (already gone)
        raise UserError(f"userdel {user.name} failed (exit code {code}): {out}")
    if remove_files:
        await asyncio.to_thread(_remove_shared_files_blocking, user.uid)


def stale_task_users() -> list[str]:
    """Task accounts no live worker process owns (crash leftovers, or generic-worker's)."""
    return sorted(
        entry.pw_name
        for entry in pwd.getpwall()
        if TASK_USER.fullmatch(entry.pw_name) and not marker_alive(entry.pw_gecos)
    )


async def sweep_stale_users(*, remove_files: bool) -> list[str]:
    """Delete every stale task account (and its processes); returns the names removed."""
    removed = []
    for name in await asyncio.to_thread(stale_task_users):
        try:
            await delete_user(name, remove_files=remove_files)
        except (UserError, KeyError) as exc:
            log.warning("could not remove stale task user %s: %s", name, exc)
            continue
        log.info("removed stale task user %s", name)
        removed.append(name)
    return removed
