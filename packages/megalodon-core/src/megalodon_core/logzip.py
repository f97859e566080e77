"""The backing log's gzip body, compressed while the task writes it rather than after it exits.

A task printing hundreds of MiB would otherwise wait, between its command's exit and its resolution, for the
whole log to be read back, hashed and compressed (about a second per 200 MiB). A :class:`GzipShadow` follows
the log file as :class:`~megalodon_core.tasklog.TaskLog` writes it: a thread of its own, at a low priority
(:data:`NICE`), reads what has reached the file (the page cache, through a descriptor of the very file the log
writes) and compresses and hashes it (ISA-L and hashlib release the GIL), so at close only what the thread has
not caught up with is left. Memory stays bounded (one chunk at a time) however fast the task writes. The body
holds exactly the file's bytes (the uploader checks the size and falls back to its own gzip otherwise),
compressed at :data:`GZIP_LEVEL`, in a private temporary file as the uploader's own (never in the task
directory, whose names a task may change). Small logs never start one: below a MiB the uploader's in-memory
path is cheaper.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from isal import igzip

#: ISA-L's level 1 (``isal.igzip``, levels 0-3), not zlib's: zlib at the uploader's 6 (Go's default,
#: :data:`megalodon_core.upload.GZIP_LEVEL`) compresses log text at ~70-250 MiB/s and at level 1 at ~160-750
#: MiB/s, taking a core from the task on a small machine while it prints; ISA-L's level 1 runs at ~800-6,700
#: MiB/s for bodies as small as zlib's level 6 (measured on this project's 2-core test machine, issue 13).
GZIP_LEVEL = 1
#: The follower thread's nice value: on a busy host the task (and the worker's loop reading its output) come
#: first, and the thread catches up when a core is free or, at worst, after the task (its 200 MiB of
#: sha256 and compression took a core from a task printing as fast as it could on 2 cores: 0.53-0.71x of
#: ``sh > file`` with it, 0.95-0.98x without; issue 13).
NICE = 19
#: Bytes read from the log per step.
CHUNK = 1 << 20


@dataclass(frozen=True)
class GzipBody:
    """A finished gzip body: its file, the sha256 and size of the uncompressed content, its own size."""

    path: Path
    sha256: str
    size: int
    body_size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _gzip_writer(name: str, raw: BinaryIO) -> BinaryIO:
    """ISA-L's GzipFile, typed (the library ships no annotations for it)."""
    writer: BinaryIO = igzip.GzipFile(  # type: ignore[no-untyped-call,assignment]
        filename=name, mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL
    )
    return writer


class GzipShadow:
    """Follows the log behind descriptor ``source_fd``; :meth:`finish` (after the log's close) gives the body."""

    def __init__(self, log_name: str, source_fd: int) -> None:
        self.log_name = log_name
        # Our own descriptor of the same open file (not the path: the task may rename things under it).
        self._fd = os.open(f"/proc/self/fd/{source_fd}", os.O_RDONLY | os.O_CLOEXEC)
        self._wake = threading.Event()
        self._closed = False
        self._abandoned = False
        self.body: concurrent.futures.Future[GzipBody] = concurrent.futures.Future()
        threading.Thread(target=self._follow, name="megalodon-log-gzip", daemon=True).start()

    def poke(self) -> None:
        """More of the log has reached the file."""
        self._wake.set()

    def finish(self) -> concurrent.futures.Future[GzipBody]:
        """The log is closed (everything is in the file): read the rest, end the stream."""
        self._closed = True
        self._wake.set()
        return self.body

    def abandon(self) -> None:
        """The log moved to another file (:meth:`TaskLog.reopen_at_path`): this body would be wrong."""
        self._abandoned = True
        self.finish()

    def _follow(self) -> None:
        path: Path | None = None
        try:
            with contextlib.suppress(OSError):  # Linux: a thread's own nice value; raising it is never refused
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
            fd, name = tempfile.mkstemp(prefix="megalodon-gz-", suffix=".gz")
            path = Path(name)
            sha = hashlib.sha256()
            offset = 0
            with os.fdopen(fd, "wb") as raw, _gzip_writer(self.log_name, raw) as gz:
                while not self._abandoned:
                    closed = self._closed  # read before the file: once set, the file holds the whole log
                    chunk = os.pread(self._fd, CHUNK, offset)
                    if chunk:
                        sha.update(chunk)
                        gz.write(chunk)
                        offset += len(chunk)
                        continue
                    if closed:
                        break
                    self._wake.wait()
                    self._wake.clear()
            if self._abandoned:
                raise RuntimeError("the task log moved to another file")
            self.body.set_result(GzipBody(path, sha.hexdigest(), offset, path.stat().st_size))
        except BaseException as exc:  # the uploader then compresses the file itself
            if path is not None:
                path.unlink(missing_ok=True)
            self.body.set_exception(exc)
        finally:
            os.close(self._fd)


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
