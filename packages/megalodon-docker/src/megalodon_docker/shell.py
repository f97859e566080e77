"""Interactive shells of docker tasks: ``docker exec`` with a TTY in the task's running container.

docker-worker (``features/interactive.js`` with ``docker-exec-websocket-server``) creates an exec instance
with ``AttachStdin/Stdout/Stderr`` and ``Tty``, starts it hijacked (the HTTP connection becomes the raw
terminal stream) and resizes it with the exec resize endpoint.  The same here through the docker SDK's
low-level API: ``exec_create`` -> ``exec_start(socket=True)`` -> ``exec_resize``.

The hijacked connection is a plain socket (unix or TCP engine endpoint) and is read and written by the event
loop directly, so a session holds no thread.  A TLS engine endpoint is refused with a clear error: its socket
cannot be driven that way.

A session can be opened before the container exists (features start before the run creates it): ``start``
then waits until the executor reports the container started, as generic-worker's d2g waits for its
container to be running.

docker-worker also kept an interactive task's container alive after its command ended, so that a shell can
still be opened: at least ``minTime`` (180 s) after the start and ``expirationAfterSession`` (900 s) after the
last session closed.  It replaced the entrypoint with a wrapper that runs the command, then waits on a lock
the worker holds.  :class:`KeepAlive` does the same with the image's ``/bin/sh`` (a shell is needed for
``docker exec`` anyway) and a FIFO the worker writes one byte to when the container may end; the wrapper
exits with the command's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker

from megalodon_core.errors import InternalError

#: docker-worker's shell page asked for bash and fell back to sh; images without bash are common.
SHELL_COMMAND = ("sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash; else exec /bin/sh; fi")
TERM = "xterm-256color"
READ_SIZE = 64 << 10


#: Where the keep-alive FIFO's directory is mounted in the container (read-only).
KEEP_ALIVE_MOUNT = "/.taskcluster-interactive"
#: The entrypoint wrapper (docker-worker's ``interactive_wrapper_run.sh``, written anew): run the command,
#: forward TERM/INT to it, then wait for the worker's release before exiting with the command's status.
KEEP_ALIVE_SCRIPT = (
    "trap 'kill -TERM $child 2>/dev/null' TERM INT; "
    '"$@" & child=$!; '
    "wait $child; trap - TERM INT; wait $child; status=$?; "
    f"read -r _ < {KEEP_ALIVE_MOUNT}/release; "
    "exit $status"
)


def keep_alive_entrypoint(image_entrypoint: Any) -> list[str]:
    """The container's entrypoint: the wrapper, then the image's own entrypoint (the command follows)."""
    if isinstance(image_entrypoint, str):
        original = ["/bin/sh", "-c", image_entrypoint]
    else:
        original = list(image_entrypoint or [])
    return ["/bin/sh", "-c", KEEP_ALIVE_SCRIPT, "megalodon-interactive", *original]


class KeepAlive:
    """Holds an interactive container open after its command, as docker-worker's session lock did.

    The container's wrapper blocks reading ``<directory>/release`` (a FIFO the worker keeps open for
    reading and writing, so the wrapper's open never fails and its read waits); one byte lets it exit.
    The release happens once no session is open and both ``min_time`` since the start and
    ``after_session`` since the last session's end have passed.  A session opening before the wrapper took
    the byte takes it back.
    """

    def __init__(self, directory: Path, min_time: float, after_session: float) -> None:
        self.directory = directory
        self.min_time = min_time
        self.after_session = after_session
        self.active = 0
        self.released = False
        self._deadline = 0.0
        self._fd: int | None = None
        self._timer: asyncio.TimerHandle | None = None

    def create(self) -> None:
        """Make the directory and FIFO (blocking: call in a thread)."""
        self.directory.mkdir(mode=0o755)
        os.chmod(self.directory, 0o755)
        fifo = self.directory / "release"
        os.mkfifo(fifo, 0o644)
        os.chmod(fifo, 0o644)  # the task's user in the container (any uid) must be able to read it
        self._fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def started(self) -> None:
        """The container started: it lives at least ``min_time`` from now."""
        self._deadline = max(self._deadline, time.monotonic() + self.min_time)
        self._schedule()

    def session_started(self) -> None:
        self.active += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.released and self._fd is not None:
            try:
                os.read(self._fd, 1)  # take the byte back: the wrapper has not read it yet
                self.released = False
            except BlockingIOError:
                pass  # already taken: the container is ending and the exec will end with it

    def session_ended(self) -> None:
        self.active = max(0, self.active - 1)
        self._deadline = max(self._deadline, time.monotonic() + self.after_session)
        self._schedule()

    def _schedule(self) -> None:
        if self.active or self.released or self._fd is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self._deadline - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.active:
            return
        if time.monotonic() < self._deadline:
            self._schedule()
            return
        self.release()

    def release(self) -> None:
        """Let the wrapper exit (idempotent)."""
        if self.released or self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, b"\n")
            self.released = True

    def close(self) -> None:
        """The run is over: release and drop the FIFO descriptor."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.release()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _plain_socket(hijacked: Any) -> socket.socket:
    """The socket under what ``exec_start(socket=True)`` returns (a ``SocketIO`` for unix endpoints)."""
    sock = hijacked if isinstance(hijacked, socket.socket) else getattr(hijacked, "_sock", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        raise InternalError(
            "interactive shells need a unix-socket or plain TCP docker endpoint (dockerConfig.host); "
            f"this engine connection is a {type(hijacked).__name__}"
        )
    return sock


class ExecShell:
    """One ``docker exec`` session: bytes in and out of its terminal, window size, close."""

    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        api: Any,
        exec_id: str,
        hijacked: Any,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self._call = call
        self._api = api
        self.exec_id = exec_id
        self._hijacked = hijacked
        self._on_close = on_close
        self._sock = _plain_socket(hijacked)
        self._sock.setblocking(False)
        self._closed = False

    async def read(self) -> bytes:
        """Next output bytes (a TTY exec stream is raw, not multiplexed); ``b""`` at the end."""
        if self._closed:
            return b""
        try:
            return await asyncio.get_running_loop().sock_recv(self._sock, READ_SIZE)
        except OSError:
            return b""  # closed under us: the session is over

    async def write(self, data: bytes) -> None:
        if self._closed:
            return
        with contextlib.suppress(OSError):  # the shell is gone; the reader sees the end
            await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def resize(self, rows: int, cols: int) -> None:
        if self._closed:
            return
        try:
            await self._call(self._api.exec_resize, self.exec_id, height=rows, width=cols)
        except docker.errors.APIError as exc:
            # The exec finished meanwhile (container exited): nothing to resize.
            if not exc.is_client_error():
                raise

    async def exit_status(self) -> int | None:
        """The exec's exit code from the engine; None while it runs or when the engine cannot tell."""
        try:
            info = await self._call(self._api.exec_inspect, self.exec_id)
        except docker.errors.APIError:
            return None
        code = info.get("ExitCode")
        return None if info.get("Running") or code is None else int(code)

    async def close(self) -> None:
        """Hang up the terminal: the shell gets SIGHUP; whatever survives ends with the container."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(Exception):
            self._hijacked.close()
        self._on_close()


class DockerShellLauncher:
    """Starts :class:`ExecShell` sessions in one run's container.

    ``call`` runs a blocking SDK call off the event loop (the executor's pool); ``container`` resolves to
    the container id once it has started (the executor sets it in ``run``); ``keep_alive``, when the
    container runs under the keep-alive wrapper, is told about each session.
    """

    def __init__(
        self,
        api: Any,
        call: Callable[..., Awaitable[Any]],
        container: asyncio.Future[str],
        keep_alive: KeepAlive | None = None,
    ) -> None:
        self.api = api
        self.call = call
        self.container = container
        self.keep_alive = keep_alive

    async def start(self, rows: int, cols: int, command: list[str] | None = None) -> ExecShell:
        container_id = await asyncio.shield(self.container)
        keep_alive = self.keep_alive
        if keep_alive is None:
            return await self._start(container_id, rows, cols, command, lambda: None)
        ended = False

        def end() -> None:  # once per session, whether the shell closes or never started
            nonlocal ended
            if not ended:
                ended = True
                keep_alive.session_ended()

        keep_alive.session_started()
        try:
            return await self._start(container_id, rows, cols, command, end)
        except BaseException:
            end()
            raise

    async def _start(
        self, container_id: str, rows: int, cols: int, command: list[str] | None, on_close: Callable[[], None]
    ) -> ExecShell:
        try:
            created = await self.call(
                self.api.exec_create,
                container_id,
                list(command or SHELL_COMMAND),
                stdin=True,
                stdout=True,
                stderr=True,
                tty=True,
                environment={"TERM": TERM},
            )
            exec_id = str(created["Id"])
            hijacked = await self.call(self.api.exec_start, exec_id, tty=True, socket=True)
        except docker.errors.APIError as exc:
            raise InternalError(f"docker exec into the task container failed: {exc.explanation or exc}") from None
        shell = ExecShell(self.call, self.api, exec_id, hijacked, on_close)
        try:
            await shell.resize(rows, cols)
        except BaseException:
            await shell.close()
            raise
        return shell
