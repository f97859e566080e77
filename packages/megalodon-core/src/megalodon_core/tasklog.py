"""The task log: generic-worker's and docker-worker's line formats, one backing file, pluggable sinks.

Every byte a task prints and every line the worker says about it goes through :class:`TaskLog`, so the
format rules live here and nowhere else.  Two styles exist because the two workers megalodon replaces
print differently and downstream log parsers key on the exact text:

- ``generic-worker``: ``[taskcluster 2017-01-25T23:31:13.787Z] msg``, ``[taskcluster:warn <ts>] msg``,
  ``[taskcluster:error] msg`` (no timestamp).
- ``docker-worker``: ``[taskcluster 2017-01-25 23:31:13.787Z] msg`` and ``\\n[taskcluster:error] msg``
  (the leading newline is deliberate, for Treeherder).

Sinks (the live log, the chain-of-trust hasher) receive exactly the bytes written to the backing file.
Writes go to a buffered local file: they land in the page cache and never wait on the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from .timefmt import UTC, utcnow

LogStyle = Literal["generic-worker", "docker-worker"]
Sink = Callable[[bytes], None]
Filter = Callable[[bytes], bytes]

_BUFFER = 1 << 20


class TaskLog:
    """Append-only task log backed by a file, with the line prefixes of the worker being emulated."""

    def __init__(self, path: Path, style: LogStyle = "generic-worker") -> None:
        self.path = path
        self.style: LogStyle = style
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(path, "ab", buffering=_BUFFER)  # noqa: SIM115 - lives as long as the task
        self._sinks: list[Sink] = []
        self._filters: list[Filter] = []
        self.bytes_written = 0

    # -- plumbing ---------------------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        """Receive every byte from now on (callers wanting the past read :attr:`path` first)."""
        self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def add_filter(self, fn: Filter) -> None:
        """Rewrite bytes before they are stored (secret masking)."""
        self._filters.append(fn)

    def write(self, data: bytes) -> None:
        """Raw task output, stored as is."""
        if not data or self._file is None:
            return
        for fn in self._filters:
            data = fn(data)
        self._file.write(data)
        self.bytes_written += len(data)
        for sink in self._sinks:
            sink(data)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            # No fsync: the file is read back at once for upload and then deleted; durability buys nothing.
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    # -- formatted lines ----------------------------------------------------------------------------------
    def _stamp(self) -> str:
        now = utcnow().astimezone(UTC)
        millis = f"{now.microsecond // 1000:03d}"
        if self.style == "docker-worker":
            return now.strftime("%Y-%m-%d %H:%M:%S.") + millis + "Z"
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + millis + "Z"

    def _lines(self, prefix: str, message: str) -> None:
        out = "".join(f"{prefix} {line}\n" for line in message.split("\n"))
        self.write(out.encode())

    def info(self, message: str) -> None:
        self._lines(f"[taskcluster {self._stamp()}]", message)

    def warn(self, message: str) -> None:
        if self.style == "docker-worker":
            self._lines(f"[taskcluster {self._stamp()}]", message)
        else:
            self._lines(f"[taskcluster:warn {self._stamp()}]", message)

    def error(self, message: str) -> None:
        if self.style == "docker-worker":
            self.write(b"\n")
        self._lines("[taskcluster:error]", message)
