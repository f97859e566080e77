"""Running one command the way generic-worker does: argv (no shell), own process group, stdin /dev/null,
stdout and stderr merged into the task log, killable as a whole group.

The child is reaped through a pidfd watched by the event loop, so no thread is parked per running
command and the exit status comes with its resource usage (user and kernel time for the result block).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How long to keep reading output after the command exited (a detached child may hold the pipe open).
DRAIN_SECONDS = 0.5


@dataclass
class CommandResult:
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


class _Output(asyncio.Protocol):
    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _reap(pid: int) -> tuple[int, Any] | None:
    """Wait for ``pid`` without blocking the loop; returns (wait status, rusage)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    if pidfd >= 0:
        ready: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await ready
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        # The pidfd is readable: the child has exited, so this wait returns at once.
        _, status, usage = os.wait4(pid, os.WNOHANG)  # noqa: ASYNC222
        return status, usage
    # Kernels without pidfd (< 5.3): a dedicated thread, never the shared pool, so waits cannot starve it.
    fut: asyncio.Future[tuple[int, Any]] = loop.create_future()

    def wait() -> None:
        _, status, usage = os.wait4(pid, 0)
        loop.call_soon_threadsafe(fut.set_result, (status, usage))

    import threading

    threading.Thread(target=wait, daemon=True).start()
    return await fut


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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
) -> CommandResult:
    """Run ``argv`` to completion or until ``abort`` is set (then its whole process group is killed).

    ``user``, ``group`` and ``extra_groups`` (the multiuser engine's task user) are applied in the child
    between fork and exec, so the command never runs a single instruction with the worker's identity.
    """
    loop = asyncio.get_running_loop()
    result = CommandResult()
    begin = time.monotonic()
    read_fd, write_fd = os.pipe()
    try:
        # fork/exec on the loop thread, as asyncio's own subprocess support does: it is brief and bounded.
        proc = subprocess.Popen(  # noqa: ASYNC220
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
            close_fds=True,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
    except OSError as exc:
        os.close(read_fd)
        result.system_error = f"{argv[0]}: {exc.strerror or exc}"
        result.exit_code = -2
        result.duration = time.monotonic() - begin
        return result
    finally:
        os.close(write_fd)
    started(proc.pid)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    transport, protocol = await loop.connect_read_pipe(lambda: _Output(output), pipe)
    reaper = asyncio.create_task(_reap(proc.pid))
    aborter = asyncio.create_task(abort.wait())
    try:
        await asyncio.wait({reaper, aborter}, return_when=asyncio.FIRST_COMPLETED)
        if not reaper.done():
            result.aborted = True
            kill_group(proc.pid)
        reaped = await reaper
    finally:
        aborter.cancel()
    result.duration = time.monotonic() - begin
    assert reaped is not None
    status, usage = reaped
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by us: keep Popen from waiting again
    result.user_time = usage.ru_utime
    result.kernel_time = usage.ru_stime
    if os.WIFSIGNALED(status):
        result.signalled = os.WTERMSIG(status)
        result.exit_code = -1
    else:
        result.exit_code = os.WEXITSTATUS(status)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(protocol.closed), DRAIN_SECONDS)
    transport.close()
    return result
