"""The worker side of Taskcluster's worker-runner protocol (NOTES.md section 7).

worker-runner starts the worker with ``run --with-worker-runner`` and talks to it over the worker's stdin
(runner -> worker) and stdout (worker -> runner), one message per line: ``~{json}\\n``.  The runner opens
with ``welcome`` listing its capabilities, the worker answers ``hello`` with its own, and from then on only
messages of capabilities both sides listed may be used.  This is how a pool switching from generic-worker
keeps spot-termination handling (``graceful-termination``), credential rotation (``new-credentials``),
worker-pool error reports, ``removeWorker`` on shutdown and centralised worker logs.

The parts, each in its own module:

- :mod:`.messages`: framing, capabilities, errors and the checks on incoming messages.  Incoming lines
  longer than :data:`MAX_LINE_BYTES` are discarded up to their newline; lines that are not ``~{json}`` are
  logged and ignored, as ``tools/workerproto`` does.
- :mod:`.transport`: pipe transports on the asyncio loop (a slow or vanished runner never stalls the claim
  loop), a thread only for stdio that cannot be polled, and the non-blocking FIFO opening.
- :mod:`.protocol`: the handshake and dispatch, and one ordered outbox drained by one writer task, so
  ``hello`` always precedes anything else and :meth:`RunnerProtocol.log` (called from any thread, from
  inside logging) only appends, never waits; log lines beyond a bound are dropped and counted.  Losing the
  runner (EOF, or a broken pipe when writing) is logged and the worker keeps running, as generic-worker
  does; after a failed write :meth:`RunnerProtocol.capable` answers ``False`` for everything, so logs fall
  back to stderr and :meth:`RunnerProtocol.shutdown` reports ``False`` (the caller then shuts the machine
  down itself).  :class:`NullRunnerProtocol` has the same interface with no capabilities, so callers never
  branch on whether worker-runner is in use.
- :mod:`.log_routing`: the logging handler that sends the worker's own log to the runner.
"""

from __future__ import annotations

from .log_routing import RunnerLogHandler, RunnerLogRouting
from .messages import (
    MAX_LINE_BYTES,
    WORKER_CAPABILITIES,
    EofCallback,
    HandshakeTimeout,
    Message,
    MessageCallback,
    ProtocolClosed,
    WorkerRunnerError,
)
from .protocol import NullRunnerProtocol, RunnerProtocol, WorkerRunnerProtocol, connect
from .transport import PIPE_RUNNER_TO_WORKER_SUFFIX, PIPE_WORKER_TO_RUNNER_SUFFIX

__all__ = [
    "MAX_LINE_BYTES",
    "PIPE_RUNNER_TO_WORKER_SUFFIX",
    "PIPE_WORKER_TO_RUNNER_SUFFIX",
    "WORKER_CAPABILITIES",
    "EofCallback",
    "HandshakeTimeout",
    "Message",
    "MessageCallback",
    "NullRunnerProtocol",
    "ProtocolClosed",
    "RunnerLogHandler",
    "RunnerLogRouting",
    "RunnerProtocol",
    "WorkerRunnerError",
    "WorkerRunnerProtocol",
    "connect",
]
