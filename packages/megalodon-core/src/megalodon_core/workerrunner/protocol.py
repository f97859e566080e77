"""The worker side of Taskcluster's worker-runner protocol: the handshake, dispatch and the ordered outbox.

:class:`WorkerRunnerProtocol` runs over a transport from :mod:`.transport`; :class:`NullRunnerProtocol`
has the same interface with no capabilities, so callers never branch on whether worker-runner is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from .messages import (
    MAX_LINE_BYTES,
    WORKER_CAPABILITIES,
    EofCallback,
    HandshakeTimeout,
    Message,
    MessageCallback,
    ProtocolClosed,
    WorkerRunnerError,
    encode,
    invalid_reason,
    log_message,
    preview,
)
from .transport import READ_CHUNK, Sink, StreamSink, isolate_stdio, open_fifo_pair, open_reader, open_sink

log = logging.getLogger(__name__)

_MAX_QUEUED_LOGS: Final = 10_000
_CLOSE_FLUSH_SECONDS: Final = 5.0
_BEST_EFFORT_SEND_SECONDS: Final = 10.0


def _run_callback(result: Awaitable[None] | None, keep: set[asyncio.Future[None]], what: str) -> None:
    """Schedule an async callback's awaitable, keeping a reference and logging its failure."""
    if result is None or not inspect.isawaitable(result):
        return
    fut: asyncio.Future[None] = asyncio.ensure_future(result)
    keep.add(fut)

    def done(f: asyncio.Future[None]) -> None:
        keep.discard(f)
        if not f.cancelled() and f.exception() is not None:
            log.error("worker-runner %s callback failed", what, exc_info=f.exception())

    fut.add_done_callback(done)


# --------------------------------------------------------------------------------------------------------------
# The protocol


class RunnerProtocol(ABC):
    """What the worker uses of worker-runner; see :class:`WorkerRunnerProtocol` and :class:`NullRunnerProtocol`.

    ``capable(name)`` is ``False`` until the handshake is done; :meth:`on_settled` tells when the answers
    become final (so early log records can be held back instead of guessed about).
    """

    @property
    @abstractmethod
    def capabilities(self) -> frozenset[str]:
        """The effective capabilities: both sides listed them, and the runner is still reachable."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether the handshake completed (always true for the null protocol)."""

    @property
    @abstractmethod
    def settled(self) -> bool:
        """Whether :meth:`capable` answers are final: handshake done, failed, EOF, or closed."""

    def capable(self, name: str) -> bool:
        """Whether both sides support capability ``name`` (false before the handshake)."""
        return name in self.capabilities

    @abstractmethod
    def on(self, message_type: str, callback: MessageCallback) -> None:
        """Call ``callback(message)`` for each incoming message of ``message_type`` (sync or async)."""

    @abstractmethod
    def on_eof(self, callback: EofCallback) -> None:
        """Call ``callback()`` once when the runner closes its end (sync or async)."""

    @abstractmethod
    def on_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once when :attr:`settled` becomes true (immediately if it already is)."""

    @abstractmethod
    def start(self) -> None:
        """Begin reading (and handshaking); register callbacks first so no message finds none."""

    @abstractmethod
    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the timeout settles the handshake
        """Return once ``welcome`` arrived and ``hello`` was sent; raise on timeout or EOF.

        The timeout is a parameter (not left to ``asyncio.timeout``) because giving up is part of the
        handshake: it settles the protocol with no capabilities, so held-back log records are released,
        and raises :class:`HandshakeTimeout` rather than a bare cancellation.
        """

    @abstractmethod
    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message and wait until it was handed to the OS."""

    @abstractmethod
    def log(self, line: str) -> bool:
        """Queue ``line`` as a ``log`` message if capable; never blocks, safe from any thread.

        Returns whether it was queued, so the caller can write it elsewhere otherwise.
        """

    @abstractmethod
    async def close(self) -> None:
        """Flush what is queued (briefly) and release the transport."""

    async def error_report(
        self,
        description: str,
        extra: Mapping[str, Any] | None = None,
        *,
        title: str = "megalodon error",
        kind: str = "worker-error",
    ) -> bool:
        """Send an ``error-report`` (shown among the worker pool's errors); return whether it was sent.

        worker-runner forwards it to worker-manager's ``reportWorkerError`` only if ``title``, ``kind`` and
        ``description`` are strings and ``extra`` is an object (``errorreport.go``), hence the fixed shape.
        """
        if not self.capable("error-report"):
            return False
        message = {
            "type": "error-report",
            "title": title,
            "kind": kind,
            "description": description,
            "extra": dict(extra or {}),
        }
        try:
            await self._send_bounded(message)
        except (WorkerRunnerError, TimeoutError) as e:
            log.warning("could not send error-report to worker-runner: %s", e)
            return False
        return True

    async def _send_bounded(self, message: Mapping[str, Any]) -> None:
        """Best-effort sends on the way out must not hang on a runner that stopped reading."""
        async with asyncio.timeout(_BEST_EFFORT_SEND_SECONDS):
            await self.send(message)

    async def shutdown(self) -> bool:
        """Ask worker-runner to remove this worker; ``False`` means the caller must shut down the OS itself.

        worker-runner calls worker-manager's ``removeWorker`` (and falls back to an OS shutdown itself).
        """
        if not self.capable("shutdown"):
            return False
        try:
            await self._send_bounded({"type": "shutdown"})
        except (WorkerRunnerError, TimeoutError) as e:
            log.warning("could not send shutdown to worker-runner: %s", e)
            return False
        return True


class NullRunnerProtocol(RunnerProtocol):
    """No worker-runner (``run`` without ``--with-worker-runner``): no capabilities, everything a no-op."""

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset()

    @property
    def ready(self) -> bool:
        return True

    @property
    def settled(self) -> bool:
        return True

    def on(self, message_type: str, callback: MessageCallback) -> None:
        """Nothing ever arrives, so callbacks are not kept."""

    def on_eof(self, callback: EofCallback) -> None:
        """There is no runner to lose."""

    def on_settled(self, callback: Callable[[], None]) -> None:
        callback()

    def start(self) -> None:
        """Nothing to read."""

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the timeout settles the handshake
        """Ready from the start, as generic-worker's ``SetInitialized`` for the null transport."""

    async def send(self, message: Mapping[str, Any]) -> None:
        log.debug("no worker-runner; dropping %s message", message.get("type"))

    def log(self, line: str) -> bool:
        return False

    async def close(self) -> None:
        """Nothing to release."""


class WorkerRunnerProtocol(RunnerProtocol):
    """The protocol over a real transport: stdio, the ``--worker-runner-protocol-pipe`` FIFOs, or streams.

    Typical use::

        proto = await WorkerRunnerProtocol.from_stdio()
        proto.on("graceful-termination", lambda m: graceful.terminate(m["finish-tasks"]))
        proto.on("new-credentials", update_credentials)
        proto.start()
        await proto.wait_ready(timeout=60)
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        sink: Sink,
        *,
        capabilities: tuple[str, ...] = WORKER_CAPABILITIES,
        read_transport: asyncio.BaseTransport | None = None,
        feeder: Callable[[], Awaitable[None]] | None = None,
        keepalive_fd: int | None = None,
    ) -> None:
        """Use the ``from_*`` constructors; this one takes already opened plumbing."""
        self._reader = reader
        self._sink = sink
        self._local: tuple[str, ...] = tuple(dict.fromkeys(capabilities))
        self._read_transport = read_transport
        self._feeder = feeder
        self._keepalive_fd = keepalive_fd

        self._effective: frozenset[str] = frozenset()
        self._ready = asyncio.Event()
        self._eof = asyncio.Event()
        self._settled = False
        self._broken = False
        self._closed = False
        self._started = False

        self._callbacks: dict[str, list[MessageCallback]] = {}
        self._eof_callbacks: list[EofCallback] = []
        self._settled_callbacks: list[Callable[[], None]] = []
        self._pending: set[asyncio.Future[None]] = set()

        self._outbox: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()
        self._queued_logs = 0
        self._dropped_logs = 0
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tasks: list[asyncio.Future[None]] = []
        self._writer_task: asyncio.Future[None] | None = None

    # -- constructors ------------------------------------------------------------------------------------------

    @classmethod
    def from_streams(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        capabilities: tuple[str, ...] = WORKER_CAPABILITIES,
    ) -> WorkerRunnerProtocol:
        """Run over existing asyncio streams (tests, or a transport opened elsewhere)."""
        return cls(reader, StreamSink(writer), capabilities=capabilities)

    @classmethod
    async def from_fds(
        cls,
        read_fd: int,
        write_fd: int,
        *,
        capabilities: tuple[str, ...] = WORKER_CAPABILITIES,
        keepalive_fd: int | None = None,
    ) -> WorkerRunnerProtocol:
        """Run over two file descriptors (pipes, FIFOs, sockets, ttys or files); takes ownership of them.

        ``keepalive_fd`` is an extra write end of the input FIFO, closed when the runner's first bytes
        arrive (see :func:`.transport.open_fifo_pair`).
        """
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES + 1)
        read_transport: asyncio.BaseTransport | None = None
        try:
            read_transport, feeder = await open_reader(read_fd, reader)
            sink = await open_sink(write_fd)
        except BaseException:
            if read_transport is not None:
                read_transport.close()
            if keepalive_fd is not None:
                os.close(keepalive_fd)
            raise
        return cls(
            reader,
            sink,
            capabilities=capabilities,
            read_transport=read_transport,
            feeder=feeder,
            keepalive_fd=keepalive_fd,
        )

    @classmethod
    async def from_stdio(
        cls, *, isolate: bool = True, capabilities: tuple[str, ...] = WORKER_CAPABILITIES
    ) -> WorkerRunnerProtocol:
        """The ``--with-worker-runner`` transport: runner messages on stdin, ours on stdout.

        With ``isolate`` (the default) the protocol gets private duplicates of fds 0 and 1 and the process's
        own stdio is moved out of the way (:func:`.transport.isolate_stdio`).
        """
        in_fd, out_fd = isolate_stdio() if isolate else (0, 1)
        return await cls.from_fds(in_fd, out_fd, capabilities=capabilities)

    @classmethod
    async def from_pipe(
        cls, path: str, *, connect_timeout: float = 30.0, capabilities: tuple[str, ...] = WORKER_CAPABILITIES
    ) -> WorkerRunnerProtocol:
        """The ``--worker-runner-protocol-pipe PATH`` transport on posix: FIFOs ``PATH-output`` and ``PATH-input``.

        Opening never blocks (:func:`.transport.open_fifo_pair`); a runner that never opens its end makes
        this raise :class:`WorkerRunnerError` after ``connect_timeout`` seconds (generic-worker exits 78).
        """
        if sys.platform == "win32":  # pragma: no cover - megalodon runs on posix
            raise WorkerRunnerError("named-pipe protocol transport is not supported on Windows")
        read_fd, write_fd, keepalive_fd = await open_fifo_pair(path, connect_timeout)
        return await cls.from_fds(read_fd, write_fd, capabilities=capabilities, keepalive_fd=keepalive_fd)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        if self._broken or self._closed or self._sink.closed:
            return frozenset()
        return self._effective

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def eof(self) -> bool:
        """Whether the runner closed its end (we may still be able to write to it)."""
        return self._eof.is_set()

    @property
    def dropped_logs(self) -> int:
        """Log lines dropped so far because the runner was not reading fast enough."""
        return self._dropped_logs

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        callbacks, self._settled_callbacks = self._settled_callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("worker-runner settled callback failed")

    # -- registration ------------------------------------------------------------------------------------------

    def on(self, message_type: str, callback: MessageCallback) -> None:
        self._callbacks.setdefault(message_type, []).append(callback)

    def on_eof(self, callback: EofCallback) -> None:
        self._eof_callbacks.append(callback)

    def on_settled(self, callback: Callable[[], None]) -> None:
        if self._settled:
            callback()
        else:
            self._settled_callbacks.append(callback)

    # -- running -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise ProtocolClosed("protocol is closed")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._feeder is not None:
            self._tasks.append(asyncio.ensure_future(self._feeder()))
        self._tasks.append(asyncio.ensure_future(self._read_loop()))
        self._writer_task = asyncio.ensure_future(self._write_loop())
        self._tasks.append(self._writer_task)

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the timeout settles the handshake
        self.start()
        if self._ready.is_set():
            return
        waiters = {asyncio.ensure_future(self._ready.wait()), asyncio.ensure_future(self._eof.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self._ready.is_set():
            return
        self._settle()
        if self._eof.is_set() or self._closed:
            raise ProtocolClosed("worker-runner closed the protocol before sending welcome")
        raise HandshakeTimeout(f"no welcome from worker-runner within {timeout:g}s")

    async def _read_loop(self) -> None:
        """Split the input into lines, discarding over-long ones up to their newline."""
        buf = bytearray()
        discarding = False
        try:
            while True:
                chunk = await self._reader.read(READ_CHUNK)
                if not chunk:
                    break
                self._release_keepalive()
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE_BYTES:
                            if not discarding:
                                log.warning("discarding a worker-runner line longer than %d bytes", MAX_LINE_BYTES)
                            discarding = True
                            buf.clear()
                        break
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if discarding:
                        discarding = False
                        continue
                    if len(line) > MAX_LINE_BYTES:
                        log.warning("discarding a worker-runner line longer than %d bytes", MAX_LINE_BYTES)
                        continue
                    await self._handle_line(line)
            if buf.strip() and not discarding:
                log.info("worker-runner (unterminated line at EOF): %s", preview(bytes(buf)))
        except Exception:
            log.exception("reading from worker-runner failed")
        finally:
            self._release_keepalive()
        log.warning("worker-runner closed its end of the protocol (EOF); the worker keeps running")
        self._eof.set()
        self._settle()
        callbacks, self._eof_callbacks = self._eof_callbacks, []
        for cb in callbacks:
            try:
                _run_callback(cb(), self._pending, "eof")
            except Exception:
                log.exception("worker-runner eof callback failed")

    async def _handle_line(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        if not line.startswith(b"~"):
            log.info("worker-runner: %s", preview(line))
            return
        try:
            message = json.loads(line[1:])
        except ValueError:
            log.warning("ignoring invalid worker-runner protocol line: %s", preview(line))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            log.warning("ignoring worker-runner message without a string type: %s", preview(line))
            return
        await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        kind = message["type"]
        if kind == "welcome":
            await self._on_welcome(message)
            return
        problem = invalid_reason(message)
        if problem is not None:
            log.warning("%s", problem)
            return
        callbacks = self._callbacks.get(kind)
        if not callbacks:
            log.warning("no callback registered for worker-runner message %r", kind)
            return
        for cb in list(callbacks):
            try:
                _run_callback(cb(dict(message)), self._pending, kind)
            except Exception:
                log.exception("worker-runner %s callback failed", kind)

    async def _on_welcome(self, message: Message) -> None:
        if self._ready.is_set():
            log.warning("ignoring a second welcome from worker-runner")
            return
        offered = message.get("capabilities")
        if not isinstance(offered, list) or not all(isinstance(c, str) for c in offered):
            log.warning("worker-runner welcome has no list of capabilities; assuming none: %r", offered)
            offered = []
        self._effective = frozenset(self._local) & frozenset(offered)
        try:
            await self.send({"type": "hello", "capabilities": list(self._local)})
        except (WorkerRunnerError, TimeoutError) as e:
            log.warning("could not send hello to worker-runner: %s", e)
        self._ready.set()
        self._release_keepalive()
        log.info("worker-runner protocol ready; capabilities: %s", ", ".join(sorted(self._effective)) or "none")
        self._settle()

    def _release_keepalive(self) -> None:
        if self._keepalive_fd is not None:
            fd, self._keepalive_fd = self._keepalive_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- sending -----------------------------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        """Queue ``message`` behind anything already queued and wait until it was written.

        Bound it with ``asyncio.timeout``; if that fires, the message stays queued (it is written when the
        runner reads again).
        """
        if self._broken or self._closed or self._sink.closed:
            raise ProtocolClosed("worker-runner is not reachable")
        data = encode(message)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((data, fut))
        self._wakeup.set()
        await asyncio.shield(fut)

    def log(self, line: str) -> bool:
        if not self.capable("log"):
            return False
        data = log_message(line)
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self._queue_log(data)
            return True
        try:
            loop.call_soon_threadsafe(self._queue_log, data)
        except RuntimeError:  # the loop is closed: nobody will write it
            return False
        return True

    def _queue_log(self, data: bytes) -> None:
        if self._queued_logs >= _MAX_QUEUED_LOGS:
            self._dropped_logs += 1
            return
        self._queued_logs += 1
        self._outbox.append((data, None))
        self._wakeup.set()

    async def _write_loop(self) -> None:
        """Write queued frames in order, batching whatever piled up since the last write."""
        reported_drops = 0
        while True:
            while not self._outbox:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = list(self._outbox)
            self._outbox.clear()
            self._queued_logs = 0
            chunks = [data for data, _ in batch]
            if self._dropped_logs > reported_drops and "log" in self._effective:
                chunks.append(
                    encode(
                        {
                            "type": "log",
                            "body": {
                                "textPayload": f"megalodon: {self._dropped_logs - reported_drops} log lines "
                                "dropped while worker-runner was not reading"
                            },
                        }
                    )
                )
                reported_drops = self._dropped_logs
            try:
                await self._sink.write(b"".join(chunks))
            except (ProtocolClosed, OSError) as e:
                self._broken = True
                log.warning("cannot write to worker-runner (%s); continuing without it", e)
                for _, fut in [*batch, *self._outbox]:
                    if fut is not None and not fut.done():
                        fut.set_exception(ProtocolClosed(str(e)))
                self._outbox.clear()
                return
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        writer = self._writer_task
        if writer is not None and not writer.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), _CLOSE_FLUSH_SECONDS)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for _, fut in self._outbox:
            if fut is not None and not fut.done():
                fut.set_exception(ProtocolClosed("protocol closed"))
        self._outbox.clear()
        if self._read_transport is not None:
            self._read_transport.close()
        self._release_keepalive()
        await self._sink.aclose()
        self._settle()


async def connect(
    *, with_worker_runner: bool, protocol_pipe: str | None = None, pipe_timeout: float = 30.0
) -> RunnerProtocol:
    """Pick the transport as generic-worker's ``run`` does; the result is not started yet.

    ``protocol_pipe`` only counts with ``with_worker_runner``, as in generic-worker.
    """
    if not with_worker_runner:
        return NullRunnerProtocol()
    if protocol_pipe:
        return await WorkerRunnerProtocol.from_pipe(protocol_pipe, connect_timeout=pipe_timeout)
    return await WorkerRunnerProtocol.from_stdio()
