"""The worker-runner protocol's messages: framing (``~{json}\n``), capabilities, errors, incoming checks.

Nothing here does I/O; :mod:`.transport` moves the bytes and :mod:`.protocol` holds the conversation.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

#: Longest accepted protocol line (without its newline); longer lines are discarded with a log message.
MAX_LINE_BYTES: Final = 1024 * 1024

#: What this worker supports, in generic-worker's order (``workerrunner.go:startProtocol``).
WORKER_CAPABILITIES: Final[tuple[str, ...]] = (
    "graceful-termination",
    "new-credentials",
    "error-report",
    "log",
    "shutdown",
)

Message = dict[str, Any]
MessageCallback = Callable[[Message], Awaitable[None] | None]
EofCallback = Callable[[], Awaitable[None] | None]


class WorkerRunnerError(Exception):
    """The worker-runner protocol could not be set up or used (e.g. the protocol pipe cannot be opened)."""


class ProtocolClosed(WorkerRunnerError):
    """The runner is gone (EOF or broken pipe) or the protocol was closed; the message was not sent."""


class HandshakeTimeout(WorkerRunnerError, TimeoutError):
    """worker-runner did not send ``welcome`` in time."""


def encode(message: Mapping[str, Any]) -> bytes:
    """Frame one message; ``json.dumps`` escapes newlines, so the frame is always a single line.

    ``default=str`` keeps an odd value in an error report's ``extra`` from turning a report into a crash.
    """
    if not isinstance(message.get("type"), str):
        raise ValueError(f"worker-runner message needs a string 'type': {message!r}")
    return b"~" + json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def log_message(line: str) -> bytes:
    """A framed ``log`` message carrying one worker log line."""
    return encode({"type": "log", "body": {"textPayload": line}})


def invalid_reason(message: Message) -> str | None:
    """Why an incoming message of a known type must be ignored (its fields have the wrong types), or None."""
    kind = message["type"]
    if kind == "graceful-termination" and not isinstance(message.get("finish-tasks"), bool):
        return f"ignoring graceful-termination without a boolean finish-tasks: {message!r}"
    if kind == "new-credentials" and not (
        isinstance(message.get("client-id"), str)
        and isinstance(message.get("access-token"), str)
        and isinstance(message.get("certificate", ""), str)
    ):
        # Only the field names: the values are credentials.
        return f"ignoring malformed new-credentials message (fields: {sorted(message)})"
    return None


def preview(line: bytes, limit: int = 1000) -> str:
    """A line as text for the worker's log, cut at ``limit`` characters."""
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"
