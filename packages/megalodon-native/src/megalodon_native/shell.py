"""Interactive shells of native tasks: ``bash`` on a pseudo-terminal, as the task's user, in its directory.

generic-worker (``interactive/interactivejob_posix.go``, ``newCommandForInteractive``) starts ``bash`` on a
pty with ``Setsid`` + ``Setctty``, in the task directory, with the task's environment plus
``TERM=xterm-256color``; a resize is ``TIOCSWINSZ`` on the pty.  This module does the same without a thread
per session: the pty master is non-blocking and watched by the event loop.

The shell is its own session leader with the pty as controlling terminal (job control and Ctrl-C work).
``subprocess`` cannot set a controlling terminal without ``preexec_fn`` (unsafe in a threaded worker), so
the child is util-linux's ``setsid --ctty``, which calls ``setsid()`` and ``TIOCSCTTY`` and then execs the
shell: no Python code runs between fork and exec.  User and groups (the multiuser engine's task user) are
applied by ``subprocess`` in the child before that exec, as for the task's commands.

Closing a session kills every process of the shell's session (found through ``/proc``), so a
``sleep 1000 &`` typed into the shell does not outlive it.  A shell started while the task's cgroup exists
also joins it (right after spawn, from the worker's side), so what leaves the session (``setsid``) is killed
with the task's processes when its commands end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from megalodon_core.cgroup import CgroupError, TaskCgroup
from megalodon_core.errors import InternalError

#: generic-worker's interactive shell (``generic-worker/insecure.go``, ``multiuser_posix.go``).
SHELL_ARGV = ("bash",)
#: generic-worker sets this since v60 (xterm rather than hterm since v85).
TERM = "xterm-256color"
#: Bytes read from the pty per call.
READ_SIZE = 64 << 10


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """``TIOCSWINSZ`` on a terminal: the kernel then sends ``SIGWINCH`` to its foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def session_pids(sid: int) -> list[int]:
    """Pids of every live process whose session id is ``sid`` (``/proc/<pid>/stat`` field 6)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the shell, its jobs, their children)."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class PtyShell:
    """One running shell: bytes in and out of its pty, window size, and a close that kills it all."""

    def __init__(self, master: int, proc: subprocess.Popen[bytes]) -> None:
        self._fd = master
        self._proc = proc
        self._closed = False
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def pid(self) -> int:
        """The shell's pid, which is also its session and process group id."""
        return self._proc.pid

    async def _ready(self, writer: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        (loop.add_writer if writer else loop.add_reader)(self._fd, wake)
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            if not self._closed:  # after close the descriptor number may already belong to someone else
                (loop.remove_writer if writer else loop.remove_reader)(self._fd)

    async def read(self) -> bytes:
        """The next output bytes; ``b""`` once no process holds the terminal any more (or after close)."""
        while not self._closed:
            try:
                return os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                await self._ready(writer=False)
            except OSError as exc:
                if exc.errno == errno.EIO:  # Linux: every slave descriptor is closed
                    return b""
                raise
        return b""

    async def write(self, data: bytes) -> None:
        """Keystrokes to the shell, waiting while the terminal's input queue is full."""
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await self._ready(writer=True)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return  # the shell is gone; the reader sees EOF
                raise
            view = view[written:]

    async def resize(self, rows: int, cols: int) -> None:
        if not self._closed:
            set_window_size(self._fd, rows, cols)

    async def exit_status(self) -> int | None:
        """The shell's exit code (waits briefly for it to be reaped); None if killed or still running."""
        try:
            code = await asyncio.to_thread(self._proc.wait, 5)
        except subprocess.TimeoutExpired:
            return None
        return code if code >= 0 else None

    async def close(self) -> None:
        """Kill the shell and everything it started in its session, reap it, release the terminal."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        loop.remove_writer(self._fd)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        os.close(self._fd)
        await asyncio.to_thread(kill_session, self._proc.pid)
        # Killed: the wait is immediate (a zombie), so the thread returns at once.
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self._proc.wait, 10)


class NativeShellLauncher:
    """Starts :class:`PtyShell` sessions for one run.

    ``environment`` and ``identity`` are called at each start, not when the launcher is built, because the
    launcher is set during ``prepare`` and features (the taskcluster proxy) add variables after that.
    ``identity`` returns ``run_command``-style keyword arguments (``user``, ``group``, ``extra_groups``).
    ``cgroup`` returns the run's cgroup when it has one at that moment (the commands' kill boundary).
    """

    def __init__(
        self,
        cwd: Path,
        environment: Callable[[], dict[str, str]],
        identity: Callable[[], Awaitable[dict[str, Any]]],
        cgroup: Callable[[], TaskCgroup | None] = lambda: None,
        argv: tuple[str, ...] = SHELL_ARGV,
    ) -> None:
        self.cwd = cwd
        self.environment = environment
        self.identity = identity
        self.cgroup = cgroup
        self.argv = argv

    @staticmethod
    async def _join(cgroup: TaskCgroup, pid: int) -> None:
        """Move ``pid`` into the run's cgroup (best effort: the session kill still covers the shell)."""

        def join() -> None:
            fds = cgroup.open_procs()
            try:
                for fd in fds:
                    os.write(fd, str(pid).encode())
            finally:
                for fd in fds:
                    os.close(fd)

        with contextlib.suppress(CgroupError, OSError):
            await asyncio.to_thread(join)

    async def start(self, rows: int, cols: int, command: list[str] | None = None) -> PtyShell:
        """A shell on a new pty of ``rows`` x ``cols``; ``command`` replaces ``bash`` when given."""
        setsid = shutil.which("setsid", path=os.defpath + ":/usr/bin:/bin")
        if setsid is None:
            raise InternalError("interactive shell: util-linux's setsid is not installed on this worker")
        env = dict(self.environment())
        env["TERM"] = TERM
        identity = await self.identity()
        master, slave = os.openpty()
        try:
            set_window_size(slave, rows, cols)
            os.set_blocking(master, False)
            # fork/exec on the loop thread, as asyncio's own subprocess support does: brief and bounded.
            proc = subprocess.Popen(  # noqa: ASYNC220
                [setsid, "--ctty", *(command or self.argv)],
                cwd=self.cwd,
                env=env,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                close_fds=True,
                **identity,
            )
        except OSError as exc:
            os.close(master)
            raise InternalError(f"interactive shell could not start: {exc.strerror or exc}") from None
        finally:
            os.close(slave)
        cgroup = self.cgroup()
        if cgroup is not None:
            await self._join(cgroup, proc.pid)
        return PtyShell(master, proc)
