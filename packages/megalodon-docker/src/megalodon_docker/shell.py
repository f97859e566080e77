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
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import docker

from megalodon_core.errors import InternalError

#: docker-worker's shell page asked for bash and fell back to sh; images without bash are common.
SHELL_COMMAND = ("sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash; else exec /bin/sh; fi")
TERM = "xterm-256color"
READ_SIZE = 64 << 10


def _plain_socket(hijacked: Any) -> socket.socket:
    """The socket under what ``exec_start(socket=True)`` returns (a ``SocketIO`` for unix endpoints)."""
    sock = hijacked if isinstance(hijacked, socket.socket) else getattr(hijacked, "_sock", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        raise InternalError(
            "interactive shells need a unix-socket or plain TCP docker endpoint (dockerConfig.baseUrl); "
            f"this engine connection is a {type(hijacked).__name__}"
        )
    return sock


class ExecShell:
    """One ``docker exec`` session: bytes in and out of its terminal, window size, close."""

    def __init__(self, call: Callable[..., Awaitable[Any]], api: Any, exec_id: str, hijacked: Any) -> None:
        self._call = call
        self._api = api
        self.exec_id = exec_id
        self._hijacked = hijacked
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


class DockerShellLauncher:
    """Starts :class:`ExecShell` sessions in one run's container.

    ``call`` runs a blocking SDK call off the event loop (the executor's pool); ``container`` resolves to
    the container id once it has started (the executor sets it in ``run``).
    """

    def __init__(self, api: Any, call: Callable[..., Awaitable[Any]], container: asyncio.Future[str]) -> None:
        self.api = api
        self.call = call
        self.container = container

    async def start(self, rows: int, cols: int, command: list[str] | None = None) -> ExecShell:
        container_id = await asyncio.shield(self.container)
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
        shell = ExecShell(self.call, self.api, exec_id, hijacked)
        try:
            await shell.resize(rows, cols)
        except BaseException:
            await shell.close()
            raise
        return shell
