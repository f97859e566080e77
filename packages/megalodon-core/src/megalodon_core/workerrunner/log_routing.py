"""Routing the worker's own log records to worker-runner (``log`` capability), else to stderr.

Like generic-worker's ``loggingWriter``: with the ``log`` capability the worker's log goes to the runner,
which ships it to the pool's log destination.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections import deque

from .. import hookimpl
from .protocol import RunnerProtocol

#: The protocol's own loggers (``megalodon_core.workerrunner.*``): their records never go to the runner,
#: so a protocol reporting on itself cannot recurse into itself.
PROTOCOL_LOGGER = __name__.rpartition(".")[0]


class RunnerLogHandler(logging.Handler):
    """Send the worker's log records to worker-runner as ``log`` messages, else to a fallback (stderr).

    Like generic-worker's ``loggingWriter``: with the ``log`` capability the worker's own log goes to the
    runner (which ships it to the pool's log destination); without it, lines go to the fallback handler.
    Records arriving before the handshake settles are held (up to ``max_pending``) and replayed once it is
    known where they belong, because guessing would either lose them or print them twice.

    It never blocks (the protocol only queues) and never recurses: records from this module's own logger
    (the protocol reporting on itself) and records emitted while this handler is already emitting on the
    same thread go straight to the fallback.
    """

    def __init__(
        self,
        proto: RunnerProtocol,
        fallback: logging.Handler | None = None,
        *,
        level: int = logging.NOTSET,
        max_pending: int = 1000,
    ) -> None:
        super().__init__(level)
        self._proto = proto
        self._own_fallback = fallback is None
        self.fallback: logging.Handler = fallback if fallback is not None else logging.StreamHandler(sys.stderr)
        self._pending: deque[logging.LogRecord] = deque(maxlen=max_pending)
        self._local = threading.local()
        proto.on_settled(self._flush_pending)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """Format both destinations alike, unless the caller brought its own fallback."""
        super().setFormatter(fmt)
        if self._own_fallback:
            self.fallback.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        if (
            getattr(self._local, "busy", False)
            or record.name == PROTOCOL_LOGGER
            or record.name.startswith(PROTOCOL_LOGGER + ".")
        ):
            self._to_fallback(record)
            return
        self._local.busy = True
        try:
            if not self._proto.settled:
                self._pending.append(record)
                return
            if self._pending:
                self._flush_pending()
            self._deliver(record)
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False

    def _deliver(self, record: logging.LogRecord) -> None:
        if not self._proto.log(self.format(record)):
            self._to_fallback(record)

    def _to_fallback(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.fallback.level:
            self.fallback.handle(record)

    def _flush_pending(self) -> None:
        with self.lock or contextlib.nullcontext():
            while self._pending:
                self._deliver(self._pending.popleft())

    def flush(self) -> None:
        self.fallback.flush()

    def close(self) -> None:
        """Whatever is still held goes to the fallback, so a failed handshake does not lose early logs."""
        with self.lock or contextlib.nullcontext():
            while self._pending:
                self._to_fallback(self._pending.popleft())
        self.fallback.flush()
        if self._own_fallback:
            self.fallback.close()
        super().close()


class RunnerLogRouting:
    """Core's internal plugin that routes the worker's log to worker-runner while the worker loop runs.

    On ``megalodon_worker_started`` it replaces the root logger's handlers with a :class:`RunnerLogHandler`
    (formatted like the handler it replaces); on ``megalodon_worker_stopped`` it closes it — releasing any
    held records to stderr — and puts the previous handlers back.  ``tryfirst`` so a raising third-party
    observer cannot skip it.
    """

    def __init__(self, proto: RunnerProtocol, *, default_format: str) -> None:
        self.proto = proto
        self.default_format = default_format
        self.handler: RunnerLogHandler | None = None
        self._previous: list[logging.Handler] = []

    @hookimpl(tryfirst=True)
    def megalodon_worker_started(self) -> None:
        if self.handler is not None:
            return
        root = logging.getLogger()
        handler = RunnerLogHandler(self.proto)
        previous = root.handlers[0].formatter if root.handlers else None
        handler.setFormatter(previous or logging.Formatter(self.default_format))
        self._previous = list(root.handlers)
        for old in self._previous:
            root.removeHandler(old)
        root.addHandler(handler)
        self.handler = handler

    @hookimpl(tryfirst=True)
    def megalodon_worker_stopped(self) -> None:
        handler, self.handler = self.handler, None
        if handler is None:
            return
        root = logging.getLogger()
        root.removeHandler(handler)
        handler.close()
        for old in self._previous:
            root.addHandler(old)
        self._previous = []
