"""Moving the worker-runner protocol's bytes: pipe transports on the loop, a thread for unpollable fds.

Everything runs on the asyncio loop through pipe transports (``connect_read_pipe`` / ``connect_write_pipe``),
so a slow or vanished runner can never stall the claim loop.  Only stdio that cannot be polled (a regular
file, ``/dev/null``) is read or written in a worker thread instead.  Opening the
``--worker-runner-protocol-pipe`` FIFOs never blocks (see :func:`open_fifo_pair`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Final

from .messages import ProtocolClosed, WorkerRunnerError

log = logging.getLogger(__name__)


#: Suffixes of the two FIFOs behind ``--worker-runner-protocol-pipe PIPE``.  generic-worker names them from
#: the runner's (the pipe server's) side: ``PIPE-input`` carries worker -> runner traffic (the worker opens it
#: for writing), ``PIPE-output`` carries runner -> worker traffic (the worker opens it for reading); see
#: ``generic-worker/main.go`` and ``worker-runner/worker/genericworker/runmethod_windows.go``.
PIPE_WORKER_TO_RUNNER_SUFFIX: Final = "-input"
PIPE_RUNNER_TO_WORKER_SUFFIX: Final = "-output"

READ_CHUNK: Final = 64 * 1024
_PIPE_OPEN_POLL_SECONDS: Final = 0.02


class Sink(ABC):
    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Hand ``data`` to the OS; raise :class:`ProtocolClosed` when the runner's end is gone."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether the runner's end is known to be gone (a pipe transport notices without writing)."""

    @abstractmethod
    async def aclose(self) -> None: ...


class WritePipeProtocol(asyncio.Protocol):
    """Flow control for a write pipe, so a runner that stops reading only parks the writer task."""

    def __init__(self) -> None:
        self.closed = False
        self._paused = False
        self._waiters: list[asyncio.Future[None]] = []

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake(exc or BrokenPipeError("worker-runner closed its end of the protocol"))

    def _wake(self, exc: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(ProtocolClosed(str(exc)))

    async def drain(self) -> None:
        if self.closed:
            raise ProtocolClosed("worker-runner closed its end of the protocol")
        if not self._paused:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class PipeSink(Sink):
    def __init__(self, transport: asyncio.WriteTransport, protocol: WritePipeProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def closed(self) -> bool:
        return self._protocol.closed or self._transport.is_closing()

    async def write(self, data: bytes) -> None:
        if self._protocol.closed or self._transport.is_closing():
            raise ProtocolClosed("worker-runner closed its end of the protocol")
        self._transport.write(data)
        await self._protocol.drain()

    async def aclose(self) -> None:
        self._transport.close()


class StreamSink(Sink):
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ProtocolClosed("protocol stream is closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as e:
            raise ProtocolClosed(str(e)) from e

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class ThreadFdSink(Sink):
    """For an fd the selector cannot poll (a regular file): each write runs in a worker thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ProtocolClosed("protocol output is closed")
        try:
            await asyncio.to_thread(write_all, self._fd, data)
        except OSError as e:
            raise ProtocolClosed(str(e)) from e

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


def pollable(fd: int) -> bool:
    """Whether asyncio's pipe transports can serve ``fd``: epoll refuses regular files and ``/dev/null``."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def open_sink(fd: int) -> Sink:
    if not pollable(fd):
        os.set_blocking(fd, True)
        return ThreadFdSink(fd)
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(WritePipeProtocol, pipe)
    return PipeSink(transport, protocol)


async def feed_from_fd(fd: int, reader: asyncio.StreamReader) -> None:
    """Thread-based reading for an fd that cannot be polled; such reads never block for long."""
    try:
        while True:
            data = await asyncio.to_thread(os.read, fd, READ_CHUNK)
            if not data:
                break
            reader.feed_data(data)
    except OSError as e:
        log.warning("reading from worker-runner failed: %s", e)
    finally:
        reader.feed_eof()
        with contextlib.suppress(OSError):
            os.close(fd)


async def open_reader(
    read_fd: int, reader: asyncio.StreamReader
) -> tuple[asyncio.BaseTransport | None, Callable[[], Awaitable[None]] | None]:
    """Feed ``reader`` from ``read_fd``: a read-pipe transport, or (unpollable fd) a thread-based feeder.

    Returns ``(transport, None)`` or ``(None, feeder)``; the feeder is a coroutine function the protocol
    starts together with its reading task.
    """
    if pollable(read_fd):
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return transport, None
    os.set_blocking(read_fd, True)

    def feed() -> Awaitable[None]:
        return feed_from_fd(read_fd, reader)

    return None, feed


def isolate_stdio() -> tuple[int, int]:
    """Private duplicates of fds 0 and 1 for the protocol; fd 0 becomes ``/dev/null``, fd 1 stderr.

    That keeps the channel the protocol's alone: a stray ``print`` or a child process inheriting stdio can
    neither corrupt the runner's input nor swallow its messages, and the non-blocking mode asyncio sets on
    the pipes does not leak onto ``sys.stdout``.
    """
    sys.stdout.flush()
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)
    os.dup2(2, 1)
    return in_fd, out_fd


async def open_fifo_pair(path: str, connect_timeout: float) -> tuple[int, int, int]:
    """Open the FIFOs ``PATH-output`` (read) and ``PATH-input`` (write); return ``(read, write, keepalive)``.

    The worker reads ``PATH-output`` and writes ``PATH-input`` (generic-worker's names, given from the
    runner's side).  The runner creates both FIFOs.  Opening never blocks and never deadlocks, whatever
    order the runner opens its ends in:

    1. ``PATH-output`` is opened ``O_RDONLY|O_NONBLOCK``, which succeeds at once, so a runner blocked
       opening its write end is released.  A second, ``O_WRONLY`` descriptor of it (``keepalive``) is held
       until the runner's first bytes arrive: without it a read before the runner opened its end would be
       EOF.  (So a runner that dies before writing anything shows as a handshake timeout, not EOF.)
    2. ``PATH-input`` is opened ``O_WRONLY|O_NONBLOCK``, which fails with ``ENXIO`` until the runner has it
       open for reading; that is retried every 20 ms (sleeping on the loop) until ``connect_timeout``.

    Raises :class:`WorkerRunnerError` (generic-worker exits 78, CANT_CONNECT_PROTOCOL_PIPE) if a FIFO is
    missing or the runner does not open its end within ``connect_timeout`` seconds.
    """
    in_path = path + PIPE_RUNNER_TO_WORKER_SUFFIX
    out_path = path + PIPE_WORKER_TO_RUNNER_SUFFIX
    for p in (in_path, out_path):
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise WorkerRunnerError(f"cannot connect to protocol pipe {p}: {e}") from e
        if not stat.S_ISFIFO(mode):
            raise WorkerRunnerError(f"cannot connect to protocol pipe {p}: not a FIFO")
    flags = os.O_NONBLOCK | os.O_CLOEXEC
    read_fd = os.open(in_path, os.O_RDONLY | flags)
    keepalive_fd: int | None = None
    write_fd: int | None = None
    try:
        keepalive_fd = os.open(in_path, os.O_WRONLY | flags)
        deadline = time.monotonic() + connect_timeout
        while write_fd is None:
            try:
                write_fd = os.open(out_path, os.O_WRONLY | flags)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise WorkerRunnerError(f"cannot connect to protocol pipe {out_path}: {e}") from e
                if time.monotonic() >= deadline:
                    raise WorkerRunnerError(
                        f"cannot connect to protocol pipe {out_path}: worker-runner did not open it "
                        f"within {connect_timeout:g}s"
                    ) from e
                await asyncio.sleep(_PIPE_OPEN_POLL_SECONDS)
    except BaseException:
        for fd in (read_fd, keepalive_fd, write_fd):
            if fd is not None:
                os.close(fd)
        raise
    return read_fd, write_fd, keepalive_fd
