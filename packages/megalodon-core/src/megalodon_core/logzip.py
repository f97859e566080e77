"""The backing log's gzip body, compressed while the task writes it rather than after it exits.

A task printing hundreds of MiB would otherwise wait, between its command's exit and its resolution, for the
whole log to be read back, hashed and compressed (about a second per 200 MiB).  :class:`GzipShadow` takes the
log's bytes as :class:`~megalodon_core.tasklog.TaskLog` writes them, in chunks of about a MiB, and compresses
and hashes them in one background thread (zlib and hashlib release the GIL), so at close only the last chunk
is left.  The body is byte for byte what the uploader's own gzip of the file gives (same header name,
mtime 0, level; deflate does not depend on how its input is split), in a private temporary file as the
uploader's own (never in the task directory, whose names a task may change).  Small logs never start one:
below one chunk the uploader's in-memory path is cheaper.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: Go's gzip.DefaultCompression, as :data:`megalodon_core.upload.GZIP_LEVEL` (same bytes as the uploader's).
GZIP_LEVEL = 6

#: Most bytes a log may have waiting for compression: a task writing faster than gzip keeps up with makes
#: its shadow give up (memory stays bounded) and the uploader compresses the file after the task, as before.
MAX_QUEUED = 32 << 20

#: One thread for every log of the worker: jobs of one log run in order, and compression never takes more
#: than one core from the tasks.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="megalodon-log-gzip")


@dataclass(frozen=True)
class GzipBody:
    """A finished gzip body: its file, the sha256 and size of the uncompressed content, its own size."""

    path: Path
    sha256: str
    size: int
    body_size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class GzipShadow:
    """Compresses what it is fed, in order, off the event loop; :meth:`finish` gives the :class:`GzipBody`."""

    def __init__(self, log_path: Path) -> None:
        self.log_name = log_path.name
        self.path: Path | None = None
        self._raw: BinaryIO | None = None
        self._gz: gzip.GzipFile | None = None
        self._sha = hashlib.sha256()
        self._size = 0
        self._error: BaseException | None = None
        self._queued = 0
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> bool:
        """Queue ``data`` (the next bytes of the log) for compression; returns at once.  False: the shadow gave
        up (too much is waiting), feed it no more; :meth:`finish` then raises."""
        with self._lock:
            if self._error is not None:
                return False
            if self._queued + len(data) > MAX_QUEUED:
                self._error = RuntimeError("the task wrote its log faster than it could be compressed")
                return False
            self._queued += len(data)
        _EXECUTOR.submit(self._compress, data)
        return True

    def finish(self) -> concurrent.futures.Future[GzipBody]:
        """Queue the end of the stream; the future gives the body (or raises what went wrong)."""
        return _EXECUTOR.submit(self._close)

    def _compress(self, data: bytes) -> None:
        with self._lock:
            self._queued -= len(data)
        if self._error is not None:
            return
        try:
            if self._gz is None:
                fd, name = tempfile.mkstemp(prefix="megalodon-gz-", suffix=".gz")
                self.path = Path(name)
                self._raw = os.fdopen(fd, "wb")
                self._gz = gzip.GzipFile(
                    filename=self.log_name, mode="wb", fileobj=self._raw, mtime=0, compresslevel=GZIP_LEVEL
                )
            self._sha.update(data)
            self._size += len(data)
            self._gz.write(data)
        except BaseException as exc:  # reported by finish(); the uploader then compresses the file itself
            self._error = exc

    def _close(self) -> GzipBody:
        try:
            if self._error is not None:
                raise self._error
            if self._gz is None or self._raw is None or self.path is None:
                raise RuntimeError("nothing was compressed")
            self._gz.close()
            self._raw.flush()
            body_size = os.fstat(self._raw.fileno()).st_size
            self._raw.close()
            return GzipBody(self.path, self._sha.hexdigest(), self._size, body_size)
        except BaseException:
            if self._raw is not None:
                self._raw.close()
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            raise


def discard_when_done(body: concurrent.futures.Future[GzipBody]) -> None:
    """Remove the body's file once it is made (for a body nobody will upload)."""

    def discard(done: concurrent.futures.Future[GzipBody]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().discard()

    body.add_done_callback(discard)


def discard_untaken(holder: list[concurrent.futures.Future[GzipBody] | None]) -> None:
    """Finalizer of a task log: its body, unless someone took it (``holder[0]`` None then)."""
    if holder[0] is not None:
        discard_when_done(holder[0])
