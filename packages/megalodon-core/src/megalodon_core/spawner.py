"""The worker's side of the spawner process (:mod:`megalodon_core.spawner_process`).

An executor that runs host commands owns one :class:`Spawner` for the worker's lifetime and passes it to
:func:`megalodon_core.process.run_command`; the spawner process starts on the first command and ends with
:meth:`Spawner.close` (or, whatever happens, when the worker exits and its socket closes).  Why a separate
process at all is told in :mod:`megalodon_core.spawner_process`: a fork there costs a fraction of a fork here.

Nothing about a command changes: the same ``subprocess.Popen`` call runs there with the same arguments, its
errors come back as the same exceptions, and its exit status and resource usage come back when it ends.  A
request too big for one message (an environment over 128 KiB) is refused with :class:`SpawnUnavailable`, and so is
every request for :data:`RESTART_AFTER` seconds after the spawner process died (then a new one starts):
``run_command`` then forks the command itself, as it does without a spawner.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import spawner_process

log = logging.getLogger(__name__)


#: After the spawner process died, how long the worker forks commands itself before it starts a new one (a
#: spawner that dies at once again costs one attempt per period, not one per command).
RESTART_AFTER = 10.0


class SpawnUnavailable(Exception):
    """The spawner cannot take this command (too big a request, or its process is gone): fork it here."""


@dataclass(frozen=True)
class ChildExit:
    """How a command the spawner started ended: its wait status and resource usage."""

    status: int
    user_time: float
    kernel_time: float


def _kill_when_started(reply: asyncio.Future[dict[str, Any]]) -> None:
    """A spawn whose caller went away: kill the command's session as soon as its pid is known."""
    if not reply.cancelled() and reply.exception() is None and "pid" in reply.result():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(reply.result()["pid"], signal.SIGKILL)


class Spawner:
    """One spawner process and the commands it started; safe to share between the worker's tasks."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, asyncio.Future[ChildExit]] = {}
        self._dead = False
        self._died_at = 0.0
        self._closed = False
        #: How its commands were started: "clone3" (straight into a cgroup v2), "clone3+join" or "fork" (a
        #: child that joins, then execs).
        self.started_via: collections.Counter[str] = collections.Counter()

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                str(Path(spawner_process.__file__)),
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_loop(), name="megalodon-spawner-reader")

    async def _ensure(self) -> socket.socket:
        if self._closed:
            raise SpawnUnavailable("the spawner is closed")
        if self._dead:
            if time.monotonic() - self._died_at < RESTART_AFTER:
                raise SpawnUnavailable("the spawner process exited")
            log.warning("starting a new spawner process")
            self._dead, self._starting = False, None
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._starting)
        except OSError as exc:
            self._dead, self._died_at = True, time.monotonic()
            log.warning("cannot start the spawner process (%s): the worker forks commands itself", exc)
            raise SpawnUnavailable(str(exc)) from exc
        assert self._sock is not None
        return self._sock

    async def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    break
                message = json.loads(data)
                if "exit" in message:
                    exit_future = self._exits.pop(message["exit"], None)
                    if exit_future is not None and not exit_future.done():
                        exit_future.set_result(ChildExit(message["status"], message["utime"], message["stime"]))
                    continue
                reply = self._replies.pop(message["id"], None)
                if reply is None or reply.done():
                    continue
                if "pid" in message:
                    # Registered before the reply is handed over: the exit event always follows the reply, and
                    # may be read before the spawning coroutine resumes.
                    exit_future = self._exits[message["pid"]] = loop.create_future()
                    message["exit_future"] = exit_future
                reply.set_result(message)
        except (OSError, ValueError) as exc:
            log.error("the spawner process's socket failed: %s", exc)
        finally:
            self._died()

    def _died(self) -> None:
        if not self._dead:
            self._dead, self._died_at = True, time.monotonic()
            if not self._closed:
                log.error(
                    "the spawner process exited with %d command(s) running; the worker forks commands itself "
                    "for %.0f s, then starts a new one",
                    len(self._exits),
                    RESTART_AFTER,
                )
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        gone = SpawnUnavailable("the spawner process exited")
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(gone)
        for exit_future in self._exits.values():
            if not exit_future.done():
                exit_future.set_exception(gone)
                exit_future.exception()  # a spawn whose caller went away has no one to retrieve it
        self._replies.clear()
        self._exits.clear()

    async def spawn(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        output_fd: int,
        cgroup_fds: list[int],
        cgroup_dir_fd: int | None = None,
        user: int | None,
        group: int | None,
        extra_groups: list[int] | None,
    ) -> tuple[int, asyncio.Future[ChildExit]]:
        """Start ``argv`` there; its pid and a future of its exit.  Raises what ``subprocess.Popen`` raised."""
        request: dict[str, Any] = {
            "argv": [os.fsdecode(a) for a in argv],
            "cwd": os.fsdecode(cwd),
            "env": env,
            "user": user,
            "group": group,
            "extra_groups": extra_groups,
            "cgroups": len(cgroup_fds),
            "cgroup_dir": int(cgroup_dir_fd is not None),
        }
        if 2 * len(cgroup_fds) + 2 > spawner_process.MAX_FDS:
            raise SpawnUnavailable("too many cgroup hierarchies for one request")
        sock = await self._ensure()
        self._next_id += 1
        request["id"] = self._next_id
        data = json.dumps(request).encode()
        if len(data) > spawner_process.MAX_MESSAGE:
            raise SpawnUnavailable(f"request of {len(data)} bytes")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._replies[request["id"]] = reply
        fds = array.array("i", [output_fd, *cgroup_fds, *([] if cgroup_dir_fd is None else [cgroup_dir_fd])])
        try:
            # One datagram of at most MAX_MESSAGE bytes: sent whole or not at all (SOCK_SEQPACKET).
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except BlockingIOError:
            self._replies.pop(request["id"], None)
            raise SpawnUnavailable("the spawner's socket is full") from None
        except OSError as exc:
            self._replies.pop(request["id"], None)
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS):  # this request only: the spawner is fine
                raise SpawnUnavailable(f"request of {len(data)} bytes: {exc.strerror}") from exc
            self._died()
            raise SpawnUnavailable(str(exc)) from exc
        try:
            message = await asyncio.shield(reply)
        except asyncio.CancelledError:
            reply.add_done_callback(_kill_when_started)  # the command may be starting there: it must not run on
            raise
        if "error" in message:
            error = message["error"]
            if error["kind"] == "os":
                raise OSError(error["errno"], error["strerror"], error["filename"])
            raise subprocess.SubprocessError(error["message"])
        self.started_via[str(message.get("via", "fork"))] += 1
        exit_future: asyncio.Future[ChildExit] = message["exit_future"]
        return int(message["pid"]), exit_future

    async def close(self) -> None:
        """End the spawner process (commands it started are the executor's to kill, before this)."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # the spawner process reads the end of its socket and exits
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()


__all__ = ["ChildExit", "SpawnUnavailable", "Spawner"]
