"""The task log: line formats, one backing file, pluggable sinks.

Every byte a task prints and every line the worker says about it goes through :class:`TaskLog`.  How the
worker's own lines look is a :class:`LogStyle`, declared by the executor (``TaskExecutor.log_style``),
because the workers megalodon replaces print differently and downstream log parsers key on the exact text.
The core knows one style, generic-worker's, as the default; the docker executor declares docker-worker's:

- generic-worker: ``[taskcluster 2017-01-25T23:31:13.787Z] msg``, ``[taskcluster:warn <ts>] msg``,
  ``[taskcluster:error] msg`` (no timestamp).
- docker-worker: ``[taskcluster 2017-01-25 23:31:13.787Z] msg`` and ``\\n[taskcluster:error] msg``
  (the leading newline is deliberate, for Treeherder).

Secrets (task credentials, values read from the secrets service) are replaced by ``[REDACTED]`` before
anything is stored or sent, also when a secret is split across two writes: the few trailing bytes that
could start a secret are held back until the next write shows whether they do.

Sinks (the live log, the chain-of-trust hasher) receive exactly the bytes written to the backing file.
Writes go to a buffered local file: they land in the page cache and never wait on the network.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .logstyle import GENERIC_WORKER, LogStyle
from .logzip import GzipBody, GzipShadow, discard_untaken
from .timefmt import UTC, utcnow

log = logging.getLogger(__name__)

#: Content type of task log artifacts (the backing log, the live log's reference and link).
LOG_CONTENT_TYPE = "text/plain; charset=utf-8"

Sink = Callable[[bytes], None]

REDACTED = b"[REDACTED]"
#: Shorter values are not masked: replacing every "1" or "abc" would shred the log and protect nothing.
MIN_SECRET_LENGTH = 6

#: Bytes written between two pokes of the gzip shadow (the first one starts it: logs under a MiB have none).
_SHADOW_STEP = 1 << 20
#: The log file's write buffer.  Output arrives in chunks of up to a pipe's worth (:mod:`.process`), which
#: go to the file directly; only small writes are gathered.  Below the allocator's mmap threshold, so a
#: task's buffer comes from the heap instead of growing and trimming it again for every task.
_WRITE_BUFFER = 64 << 10
#: Output chunks at least this big are first checked for a few of the bytes each secret holds: a secret
#: with a byte the chunk lacks cannot be in it.  ``byte in chunk`` is a memchr scan (tens of GB/s), while
#: the search for a whole secret runs at 1.5-10 GB/s depending on the output (1.1 ms per MiB for three
#: secrets in repetitive output, issue 13).  Smaller chunks are searched at once: there the checks would
#: cost more than the search.
PROBE_MIN = 64 << 10
#: Bytes of each secret checked, rarest in text first (see :func:`_probes`).
PROBES = 4
#: Bytes ordered from the most common in logs (English text, spaces, newlines); the others come first.
_COMMON = b" etaoinsrhldcumfpgwybvkxjqz\n"


def _open_log(path: Path) -> BinaryIO:
    """The log file, opened for appending (it lives as long as the task); its directory is made only when
    missing (the worker's task directories come with it: no mkdir and stat per task for one that exists)."""
    try:
        return open(path, "ab", buffering=_WRITE_BUFFER)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab", buffering=_WRITE_BUFFER)


def _probes(secret: bytes) -> bytes:
    """Up to :data:`PROBES` distinct bytes of ``secret``, those least common in log text first."""
    return bytes(sorted(set(secret), key=_COMMON.find)[:PROBES])


class TaskLog:
    """Append-only task log backed by a file, with the line prefixes of the worker being emulated."""

    def __init__(self, path: Path, style: LogStyle = GENERIC_WORKER) -> None:
        self.path = path
        self.style: LogStyle = style
        self._file: BinaryIO | None = _open_log(path)
        self._sinks: list[Sink] = []
        self._secrets: list[bytes] = []
        #: Each secret's probe bytes (:data:`PROBE_MIN`), worked out at the first big chunk: most logs have none.
        self._probes: dict[bytes, bytes] = {}
        self._held = b""
        self.bytes_written = 0
        # The gzip shadow following the file (started once the log passes a MiB), and the bytes written since
        # it was last told (None after close).
        self._unzipped: int | None = 0
        self._shadow: GzipShadow | None = None
        self._gzip_body: concurrent.futures.Future[GzipBody] | None = None
        self._untaken: list[concurrent.futures.Future[GzipBody] | None] = [None]
        #: The second of the last stamp and its formatted text.
        self._second: tuple[dt.datetime, str] | None = None
        self._on_close: list[Callable[[], None]] = []

    # -- plumbing ---------------------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        """Receive every byte from now on (callers wanting the past read :attr:`path` first)."""
        self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def add_secret(self, value: str) -> None:
        """Mask ``value`` (and its longer variants first) from now on."""
        raw = value.encode()
        if len(raw) >= MIN_SECRET_LENGTH and raw not in self._secrets:
            self._secrets.append(raw)
            self._secrets.sort(key=len, reverse=True)

    def _redact(self, data: bytes) -> bytes:
        data = self._held + data
        self._held = b""
        big = len(data) >= PROBE_MIN
        for secret in self._secrets:
            if big:
                probes = self._probes.get(secret)
                if probes is None:
                    probes = self._probes[secret] = _probes(secret)
                if not all(byte in data for byte in probes):
                    continue  # a byte of it is nowhere in the chunk
            data = data.replace(secret, REDACTED)
        # Hold back the longest tail that is the beginning of a secret: the next write may complete it.
        # Only positions holding the secret's first byte can start one, so look at those alone; and only a
        # write ending in a byte of some secret can end in one (most end in a newline: no search at all).
        last = data[-1:]
        for secret in self._secrets:
            if last in secret:  # a byte search (memchr), not a set of each secret's bytes made per task
                break
        else:
            return data
        hold = 0
        end = len(data)
        for secret in self._secrets:
            first = secret[:1]
            at = data.find(first, max(0, end - len(secret) + 1), end - hold)
            while at != -1:
                if secret.startswith(data[at:]):
                    hold = end - at  # the earliest match is the longest tail
                    break
                at = data.find(first, at + 1, end - hold)
        if hold:
            self._held = data[-hold:]
            data = data[:-hold]
        return data

    def write(self, data: bytes) -> None:
        """Raw task output, stored as is (secrets masked)."""
        if not data or self._file is None:
            return
        if self._secrets:
            data = self._redact(data)
            if not data:
                return
        self._emit(data)

    def _release_held(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            self._emit(held)

    def _emit(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self.bytes_written += len(data)
        if self._unzipped is not None:
            self._shadow_feed(len(data))
        for sink in self._sinks:
            sink(data)

    def _shadow_feed(self, size: int) -> None:
        assert self._unzipped is not None and self._file is not None
        self._unzipped += size
        if self._unzipped >= _SHADOW_STEP:  # another MiB has been written
            self._unzipped = 0
            if self._shadow is None:
                self._shadow = GzipShadow(self.path.name, self._file.fileno())
            self._shadow.poke()

    def flush(self) -> None:
        """Push everything to the file, held-back bytes included (a secret cannot follow any more)."""
        if self._file is not None:
            self._release_held()
            self._file.flush()

    def reopen_at_path(self) -> None:
        """Copy what was written so far to a new file at :attr:`path` and keep writing there (blocking).

        For an executor whose task could move or replace the log's directory (the multiuser engine puts a
        fresh root-owned one back first): the open handle still reaches the original content whatever
        happened to the names, so nothing the worker wrote is lost and nothing the task wrote is taken.
        """
        if self._file is None:
            raise ValueError("the task log is closed")
        self.flush()
        if self._shadow is not None:  # it follows the old file; a new one follows the new file from its start
            self._shadow.abandon()
            self._shadow = None
        self._unzipped = _SHADOW_STEP if self._unzipped is not None else None
        with open(f"/proc/self/fd/{self._file.fileno()}", "rb") as src, open(self.path, "xb") as dst:
            shutil.copyfileobj(src, dst)
        new = open(self.path, "ab", buffering=_WRITE_BUFFER)  # noqa: SIM115 - replaces the long-lived handle
        self._file.close()
        self._file = new

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the log is closed (at once when it already is): a feature streaming the
        log learns that every byte is in the file without polling :attr:`closed`."""
        if self._file is None:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        if self._file is not None:
            self._release_held()
            # No fsync: the file is read back at once for upload and then deleted; durability buys nothing.
            self._file.close()
            self._file = None
            if self._shadow is not None:
                self._gzip_body = self._shadow.finish()
                self._shadow = None
                # A body nobody takes (a crashed task runner) is removed when this log is collected.
                self._untaken = [self._gzip_body]
                weakref.finalize(self, discard_untaken, self._untaken)
            self._unzipped = None
            callbacks, self._on_close = self._on_close, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("a task log close callback failed")

    def take_gzip_body(self) -> concurrent.futures.Future[GzipBody] | None:
        """After :meth:`close`: the log's gzip body made while it was written (None for a small log).

        The caller owns it from now on: upload it, or :meth:`GzipBody.discard` it.
        """
        body, self._gzip_body = self._gzip_body, None
        self._untaken[:] = [None]
        return body

    @property
    def closed(self) -> bool:
        return self._file is None

    # -- formatted lines ----------------------------------------------------------------------------------
    def _stamp(self) -> str:
        now = utcnow().astimezone(UTC)
        second = now.replace(microsecond=0)
        if self._second is None or self._second[0] != second:
            self._second = (second, now.strftime(self.style.timestamp))  # strftime once per second, not per line
        return f"{self._second[1]}.{now.microsecond // 1000:03d}Z"

    def _lines(self, prefix: str, message: str) -> None:
        if "{ts}" in prefix:
            prefix = prefix.replace("{ts}", self._stamp())
        out = "".join(f"{prefix} {line}\n" for line in message.split("\n"))
        self.write(out.encode())

    def info(self, message: str) -> None:
        self._lines(self.style.info, message)

    def warn(self, message: str) -> None:
        self._lines(self.style.warn, message)

    def error(self, message: str) -> None:
        if self.style.error_lead:
            self.write(self.style.error_lead.encode())
        self._lines(self.style.error, message)
