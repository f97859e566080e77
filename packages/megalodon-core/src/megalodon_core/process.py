"""Running one command for a task: argv (no shell), its own session, stdin ``/dev/null``, stdout and stderr
merged into a callback (the task log), killed as a whole when the run is aborted.

Any executor that runs host processes needs exactly this, so it lives in the core and third-party executors
need not rewrite it (the native executor is its first user):

- the child is reaped through a pidfd watched by the event loop (:func:`exit_of`), so no thread is parked
  per running command, and the exit status comes with its resource usage (user and kernel time for the
  result block);
- ``user``/``group``/``extra_groups`` are applied between fork and exec, so the command never runs one
  instruction with the worker's identity;
- with a :class:`~megalodon_core.cgroup.TaskCgroup` the child joins that cgroup before it execs, and an
  abort kills the whole cgroup (detached daemons included); without one, the command's process group;
- in a v1 freezer cgroup (no memory limit) with no identity to take, the worker moves itself into the
  cgroup for the instant of a vfork, so the command inherits it without a fork of the worker;
- otherwise, with a :class:`~megalodon_core.spawner.Spawner`, a command that needs those steps is forked by
  the spawner process (small, so its fork is cheap; on cgroup v2 straight into the cgroup), which reaps it
  and sends back the same exit status and resource usage.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import NonNegativeInt

from .cgroup import CgroupError, TaskCgroup
from .spawner import ChildExit, Spawner, SpawnUnavailable

log = logging.getLogger(__name__)

#: The output pipe's size (the default 1 MiB ``/proc/sys/fs/pipe-max-size``), and Linux's fcntl to set it.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

#: How long to keep reading output after the command exited (a detached child may hold the pipe open).
DRAIN_SECONDS = 0.5

#: Config key of the optional per-task memory limit in MiB (0: none, the default).  Executors that enforce
#: it declare it with :data:`MEMORY_LIMIT_FIELD` in ``megalodon_config_fields`` (one key for every executor).
MEMORY_LIMIT_KEY = "taskMemoryLimitMegabytes"
MEMORY_LIMIT_FIELD: tuple[Any, Any] = (NonNegativeInt, 0)


def memory_limit_bytes(config: Any) -> int:
    """The configured per-task memory limit in bytes (0: none)."""
    return int(config.extra(MEMORY_LIMIT_KEY, 0) or 0) * 1024 * 1024


def memory_limit_message(config: Any) -> str:
    """The task log line of a task the kernel killed for the memory limit (the same for every executor)."""
    return (
        f"[memory limit] The task exceeded the worker's per-task memory limit of "
        f"{config.extra(MEMORY_LIMIT_KEY, 0)} MB ({MEMORY_LIMIT_KEY}) and was killed by the kernel"
    )


@dataclass
class CommandResult:
    """How one command ended.  ``exit_code`` -1: killed by a signal (``signalled``), -2: never started."""

    exit_code: int = -3
    user_time: float = 0.0
    kernel_time: float = 0.0
    duration: float = 0.0
    aborted: bool = False
    system_error: str | None = None
    signalled: int | None = None

    @property
    def succeeded(self) -> bool:
        return not self.aborted and self.system_error is None and self.exit_code == 0


class _ReadBuffer(threading.local):
    """A pipe-sized buffer for each thread's reads (an event loop's thread: one read at a time), made at the
    thread's first read."""

    def __init__(self) -> None:
        self.buffer = bytearray(PIPE_SIZE)
        self.view = memoryview(self.buffer)


_READ = _ReadBuffer()


class _Output:
    """The command's output pipe, read on the loop: each chunk to ``write`` as it comes, :attr:`closed` at
    EOF.  A reader callback on the descriptor, as asyncio's pipe transport has, without the transport's own
    scheduled steps (connection made, reader added, EOF, connection lost: four loop callbacks per command).
    """

    def __init__(self, fd: int, write: Callable[[bytes], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self.write = write
        self.closed: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            # As much as the pipe holds, per wake-up, into the thread's one buffer: a fresh pipe-sized bytes
            # per read was a MiB allocated and given back each time.
            data = bytes(_READ.view[: os.readv(self._fd, [_READ.buffer])])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            self.write(data)
        except Exception:
            # What asyncio's transport does with a protocol that fails: stop reading, close the pipe.
            log.exception("the task output's consumer failed; the output pipe is closed")
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if not self.closed.done():
            self.closed.set_result(None)


def exit_of(pid: int) -> asyncio.Future[ChildExit]:
    """Child ``pid``'s end (wait status and user/kernel time), reaped without blocking the loop: a callback on
    its pidfd, no task and no thread (a thread of its own on kernels without pidfd, < 5.3).  A caller that
    stops waiting (cancels the future) leaves the child to be reaped all the same when it ends."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[ChildExit] = loop.create_future()

    def settle(status: int, usage: Any) -> None:
        if not ended.done():
            ended.set_result(ChildExit(status, usage.ru_utime, usage.ru_stime))

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    if pidfd >= 0:

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            try:
                # The pidfd is readable: the child has exited, so this wait returns at once.
                _, status, usage = os.wait4(pid, os.WNOHANG)
            except OSError as exc:  # reaped elsewhere: nothing to report, and nothing may wait forever
                if not ended.done():
                    ended.set_exception(exc)
                return
            settle(status, usage)

        loop.add_reader(pidfd, on_exit)
        return ended

    def wait() -> None:  # a dedicated thread, never the shared pool, so waits cannot starve it
        _, status, usage = os.wait4(pid, 0)
        loop.call_soon_threadsafe(settle, status, usage)

    threading.Thread(target=wait, daemon=True).start()
    return ended


def kill_group(pgid: int) -> None:
    """SIGKILL a process group (the fallback boundary when there is no cgroup)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def kill_tree(pgid: int, cgroup: TaskCgroup | None) -> None:
    """Kill a command's processes: the whole cgroup when there is one, and its process group anyway."""
    kill_group(pgid)
    if cgroup is not None:
        with contextlib.suppress(CgroupError):
            await asyncio.to_thread(cgroup.kill)


#: How :func:`run_command` started commands in this process, by path: ``vfork+migrate`` (through the task's
#: v1 freezer cgroup), ``vfork`` (nothing to do before exec), ``fork`` (a pre-exec step or an identity, and
#: no spawner to take it).  The spawner process's own count is :attr:`Spawner.started_via`.
STARTED_HERE: collections.Counter[str] = collections.Counter()

#: What subprocess (and the spawner, alike) raises when the pre-exec step failed: here, the cgroup join.
PREEXEC_FAILED = "Exception occurred in preexec_fn."


async def run_command(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    output: Callable[[bytes], None],
    abort: asyncio.Event,
    started: Callable[[int], None] = lambda pgid: None,
    user: int | None = None,
    group: int | None = None,
    extra_groups: list[int] | None = None,
    cgroup: TaskCgroup | None = None,
    spawner: Spawner | None = None,
) -> CommandResult:
    """Run ``argv`` to completion or until ``abort`` is set (then its cgroup, or process group, is killed).

    ``started`` gets the child's pid (= its process group id) as soon as it runs.  A command that cannot be
    started (no such program, no permission, cgroup not joinable) is a ``system_error``, never an exception.
    Processes the command leaves behind are not killed here when it exits normally: the caller decides when
    the task's processes end (usually when all of its commands have run).

    Where it starts, cheapest first (:data:`STARTED_HERE` counts them): in a v1 freezer cgroup and with no
    identity to take, this process passes through the cgroup and vforks (:meth:`TaskCgroup.passage`); else,
    with a ``spawner`` (:mod:`megalodon_core.spawner`), that small process forks it, identically; when it
    cannot take the command, or when nothing is to be done between fork and exec (no cgroup to join, no
    identity to take: subprocess then uses vfork), the command is forked here.
    """
    result = CommandResult()
    begin = time.monotonic()
    cgroup_dir: int | None = None
    cgroup_fds: list[int] = []
    identity = user is not None or group is not None or extra_groups is not None
    try:
        # Opening cgroupfs files is kernel memory, no disk: on the loop, not worth a thread hop per command.
        cgroup_fds = cgroup.open_procs() if cgroup is not None else []
        if cgroup is not None and spawner is not None:
            cgroup_dir = cgroup.open_dir()
    except CgroupError as exc:
        for fd in cgroup_fds:
            os.close(fd)
        result.system_error = f"{argv[0]}: {exc}"
        result.exit_code = -2
        return result
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        # A MiB of pipe instead of 64 KiB: a chatty command blocks less and the loop reads bigger chunks.
        fcntl.fcntl(read_fd, F_SETPIPE_SZ, PIPE_SIZE)
    proc: subprocess.Popen[bytes] | None = None
    spawned: asyncio.Future[ChildExit] | None = None

    def popen(**steps: Any) -> subprocess.Popen[bytes]:
        # fork/exec on the loop thread, as asyncio's own subprocess support does: it is brief and bounded;
        # with nothing to do between fork and exec (no identity, no pre-exec step) subprocess uses vfork.
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
            close_fds=True,
            **steps,
        )

    try:
        if cgroup is not None and not identity:
            # The cheapest start in a cgroup: the worker passes through it (v1 freezer alone) and vforks.
            with cgroup.passage(cgroup_fds) as inside:
                if inside:
                    proc = popen()
                    STARTED_HERE["vfork+migrate"] += 1
        if proc is None and spawner is not None and (cgroup_fds or identity):
            with contextlib.suppress(SpawnUnavailable):
                pid, spawned = await spawner.spawn(
                    argv,
                    cwd=cwd,
                    env=env,
                    output_fd=write_fd,
                    cgroup_fds=cgroup_fds,
                    cgroup_dir_fd=cgroup_dir,
                    user=user,
                    group=group,
                    extra_groups=extra_groups,
                )
        if proc is None and spawned is None:
            proc = popen(
                user=user,
                group=group,
                extra_groups=extra_groups,
                # Only os.write on descriptors opened above: safe in the forked child of a threaded process.
                preexec_fn=TaskCgroup.joiner(cgroup_fds) if cgroup_fds else None,
            )
            STARTED_HERE["fork" if cgroup_fds or identity else "vfork"] += 1
        if proc is not None:
            pid = proc.pid
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(read_fd)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if cgroup_fds and isinstance(exc, subprocess.SubprocessError) and detail == PREEXEC_FAILED:
            detail = "could not join the task's cgroup before exec"  # the only pre-exec step, either path
        result.system_error = f"{argv[0]}: {detail}"
        result.exit_code = -2
        result.duration = time.monotonic() - begin
        return result
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
        for fd in [*cgroup_fds, *([] if cgroup_dir is None else [cgroup_dir])]:
            os.close(fd)
    started(pid)
    reading = _Output(read_fd, output)
    reaper = spawned if spawned is not None else exit_of(pid)
    aborter = asyncio.create_task(abort.wait())
    try:
        either: set[asyncio.Future[Any]] = {reaper, aborter}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not reaper.done():
            result.aborted = True
            await kill_tree(pid, cgroup)
        ended = await reaper
    except SpawnUnavailable:
        # The spawner process died with the command running: it can no longer be waited for, so kill it.
        reading.close()
        await kill_tree(pid, cgroup)
        result.system_error = f"{argv[0]}: the worker's spawner process exited while the command ran"
        result.duration = time.monotonic() - begin
        return result
    except BaseException:
        # Cancelled rather than aborted (the caller is going away): close the pipe and kill the command's
        # group now, so neither the descriptor nor the process outlives the call; the cgroup is the caller's.
        # Nobody waits for its end any more (cancelled: nothing is reported of it); the pidfd callback still
        # reaps the killed child, unless subprocess's own clean-up of the dropped Popen gets there first.
        reading.close()
        if not reaper.done():
            kill_group(pid)
            reaper.cancel()
        raise
    finally:
        aborter.cancel()
    status = ended.status
    result.duration = time.monotonic() - begin
    if proc is not None:
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by us: keep Popen from waiting again
    result.user_time = ended.user_time
    result.kernel_time = ended.kernel_time
    if os.WIFSIGNALED(status):
        result.signalled = os.WTERMSIG(status)
        result.exit_code = -1
    else:
        result.exit_code = os.WEXITSTATUS(status)
    if not reading.closed.done():  # usually at EOF already: the command's end closed its output
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading.closed), DRAIN_SECONDS)
    reading.close()
    return result


__all__ = [
    "DRAIN_SECONDS",
    "MEMORY_LIMIT_FIELD",
    "MEMORY_LIMIT_KEY",
    "STARTED_HERE",
    "CommandResult",
    "exit_of",
    "kill_group",
    "kill_tree",
    "memory_limit_bytes",
    "memory_limit_message",
    "run_command",
]
