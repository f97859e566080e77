"""Publishing artifacts: createArtifact, then the bytes, streamed from disk, with retries.

Two storage types carry content, as in generic-worker: ``s3`` (the default; the body is PUT to the
queue's ``putUrl`` with ``Content-Encoding: gzip`` when the artifact is gzip-encoded) and ``object``
(config ``createObjectArtifacts``; the body goes through the object service with the official
``taskcluster.aio.upload`` helper).  The object service has no notion of content encoding, so object
artifacts are stored as they are (generic-worker ignores ``contentEncoding`` there too).

Memory stays bounded whatever the size: files are read and compressed in 1 MiB chunks, in worker threads
so the event loop never waits on the disk.  Errors map to generic-worker's resolutions: a 409 from
createArtifact is the task's fault (malformed-payload), anything else the services' (resource-unavailable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import hashlib
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import taskcluster.aio.upload
from taskcluster.aio.retry import retry
from taskcluster.exceptions import TaskclusterFailure, TaskclusterRestFailure

from .errors import ExecutionError, MalformedPayload, ResourceUnavailable
from .logzip import GzipBody, discard_when_done
from .timefmt import iso

CHUNK = 1 << 20
#: Go's gzip.DefaultCompression (what generic-worker uses): level 9 costs ~3x the CPU for ~1% smaller logs.
GZIP_LEVEL = 6
#: Bodies up to this size are sent from memory, saving a dozen thread hand-offs per small artifact.
SMALL_BODY = 1 << 20
#: Files up to this size are read, hashed and compressed on the event loop (see :func:`_prepare_small`).
INLINE_BODY = 32 * 1024


@dataclass
class Published:
    sha256: str
    size: int


class _HashingFileReader:
    """A reader for ``taskcluster.aio.upload``: reads in a thread and hashes what it hands out."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()

    async def read(self, max_size: int) -> bytes:
        chunk = await asyncio.to_thread(self._fh.read, max_size)
        self.sha256.update(chunk)
        return chunk


def _gzip_to_temp(src: Path) -> tuple[Path, str, int]:
    """Compress ``src`` to a temp file; return it with the sha256 and size of the *uncompressed* bytes."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="megalodon-gz-", suffix=".gz")
    with (
        os.fdopen(fd, "wb") as raw,
        gzip.GzipFile(filename=src.name, mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz,
    ):
        with src.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                gz.write(chunk)
    return Path(tmp), digest.hexdigest(), size


async def _take_body(
    gzip_body: concurrent.futures.Future[GzipBody], path: Path
) -> tuple[Path, str, int, int, bytes | None] | None:
    """A ready-made gzip body of ``path`` as :func:`_prepare_body` gives it, or None (then it is removed)."""
    try:
        body = await asyncio.wrap_future(gzip_body)
    except Exception:
        return None  # compression failed: the file is compressed again the usual way
    try:
        size = os.stat(path).st_size
    except OSError:
        size = -1
    if size != body.size:  # something but the task log wrote the file: trust the file
        body.discard()
        return None
    return body.path, body.sha256, body.size, body.body_size, None


def gzip_small(data: bytes, name: str) -> bytes:
    """``data`` gzipped as :func:`_gzip_to_temp` would (header naming ``name``, mtime 0, :data:`GZIP_LEVEL`),
    with a deflate window no larger than the data needs.

    zlib's default window (32 KiB) and memory level cost ~80 µs to set up for every stream, ten times the
    compression of a trivial task's log; a window as large as the data reaches every match the default one
    would, so the body is as small, and it decompresses to the same bytes with any gzip reader.
    """
    wbits = max(9, min(zlib.MAX_WBITS, (len(data) - 1).bit_length()))
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -wbits, max(1, wbits - 7))
    body = deflate.compress(data) + deflate.flush()
    # The header GzipFile writes: FNAME only for a Latin-1 name (without ".gz"), mtime 0, its XFL, OS unknown.
    try:
        fname = name.encode("latin-1").removesuffix(b".gz")
    except UnicodeEncodeError:
        fname = b""
    xfl = 2 if GZIP_LEVEL == 9 else 4 if GZIP_LEVEL == 1 else 0
    flags = b"\x08" if fname else b"\x00"
    header = b"\x1f\x8b\x08" + flags + b"\x00\x00\x00\x00" + bytes((xfl, 255)) + (fname + b"\x00" if fname else b"")
    return header + body + struct.pack("<LL", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def _prepare_small(path: Path, encoding: str) -> tuple[Path, str, int, int, bytes | None] | None:
    """:func:`_prepare_body` in memory for a file of at most :data:`INLINE_BODY` bytes, else None.

    A trivial task's log is a few hundred bytes: compressing it costs microseconds, far less than the two
    thread hops (prepare, unlink the temp file) of the general path on the critical path of every task.
    """
    st = path.stat()
    if not stat.S_ISREG(st.st_mode) or st.st_size > INLINE_BODY:
        return None  # never open a FIFO or device on the loop
    with path.open("rb") as fh:
        data = fh.read(INLINE_BODY + 1)
    if len(data) > INLINE_BODY:
        return None  # grew since the stat
    sha = hashlib.sha256(data).hexdigest()
    if encoding != "gzip":
        return path, sha, len(data), len(data), data
    body = gzip_small(data, path.name)
    return path, sha, len(data), len(body), body


def _prepare_body(path: Path, encoding: str) -> tuple[Path, str, int, int, bytes | None]:
    """In one thread hop: the body file (gzipped copy or the file), sha256 and size of the content, size
    of the body, and the body itself when small enough to send from memory."""
    if encoding == "gzip":
        body_path, sha, size = _gzip_to_temp(path)
    else:
        body_path = path
        sha, size = _hash_file(path)
    body_size = body_path.stat().st_size
    small = body_path.read_bytes() if body_size <= SMALL_BODY else None
    return body_path, sha, size, body_size, small


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


def classify_create_error(name: str, exc: Exception) -> ExecutionError:
    """generic-worker's mapping of createArtifact failures to resolutions."""
    status = getattr(exc, "status_code", None)
    if status == 409:
        return MalformedPayload(
            f"Artifact {name!r} conflicts with an artifact of the same name already created for this "
            f"run (queue answered 409): {exc}"
        )
    return ResourceUnavailable(f"Could not create artifact {name!r}: {str(exc) or type(exc).__name__}")


class Publisher:
    """Creates artifacts of one run with the run's *current* task credentials."""

    def __init__(self, queue_factory: Any, object_factory: Any, session: aiohttp.ClientSession) -> None:
        self._queue_factory = queue_factory
        self._object_factory = object_factory
        self._session = session

    async def _create(self, task_id: str, run_id: int, name: str, body: dict[str, Any]) -> Any:
        try:
            return await self._queue_factory().createArtifact(task_id, str(run_id), name, body)
        except (TaskclusterFailure, aiohttp.ClientError, TimeoutError) as exc:
            # TimeoutError: the session's total timeout, which the taskcluster client does not wrap.
            raise classify_create_error(name, exc) from exc

    async def error(self, task_id: str, run_id: int, name: str, reason: str, message: str, expires: Any) -> None:
        await self._create(
            task_id,
            run_id,
            name,
            {"storageType": "error", "reason": reason, "message": message, "expires": iso(expires)},
        )

    async def reference(self, task_id: str, run_id: int, name: str, url: str, content_type: str, expires: Any) -> None:
        await self._create(
            task_id,
            run_id,
            name,
            {"storageType": "reference", "url": url, "contentType": content_type, "expires": iso(expires)},
        )

    async def link(self, task_id: str, run_id: int, name: str, target: str, content_type: str, expires: Any) -> None:
        await self._create(
            task_id,
            run_id,
            name,
            {"storageType": "link", "artifact": target, "contentType": content_type, "expires": iso(expires)},
        )

    async def file(
        self,
        task_id: str,
        run_id: int,
        name: str,
        path: Path,
        *,
        content_type: str,
        content_encoding: str,
        expires: Any,
        object_storage: bool,
        gzip_body: concurrent.futures.Future[GzipBody] | None = None,
        created: Callable[[], None] | None = None,
    ) -> Published:
        """Upload ``path``; ``gzip_body``: its gzip body made beforehand (a big task log), used for s3 uploads
        when it holds exactly the file's bytes, else removed and the file compressed here as usual.

        ``created`` is called once the queue has the artifact, before its bytes are sent: the task log's
        link is created then, beside the upload (:func:`megalodon_core.pipeline._upload_logs`).
        """
        if object_storage or content_encoding != "gzip":
            if gzip_body is not None:
                discard_when_done(gzip_body)
            if object_storage:
                return await self._object(task_id, run_id, name, path, content_type, expires, created)
            gzip_body = None
        return await self._s3(task_id, run_id, name, path, content_type, content_encoding, expires, gzip_body, created)

    async def _s3(
        self,
        task_id: str,
        run_id: int,
        name: str,
        path: Path,
        content_type: str,
        encoding: str,
        expires: Any,
        gzip_body: concurrent.futures.Future[GzipBody] | None = None,
        created: Callable[[], None] | None = None,
    ) -> Published:
        prepared = await _take_body(gzip_body, path) if gzip_body is not None else None
        if prepared is None:
            prepared = _prepare_small(path, encoding)
        if prepared is None:
            prepared = await asyncio.to_thread(_prepare_body, path, encoding)
        body_path, sha, size, body_size, small = prepared
        creation: asyncio.Handle | None = None
        try:
            resp = await self._create(
                task_id,
                run_id,
                name,
                {
                    "storageType": "s3",
                    "contentType": content_type,
                    "expires": iso(expires),
                    "contentLength": size,
                },
            )
            if created is not None:
                # On the loop's next turn: the PUT below is on its way first, and what ``created`` starts (the
                # live log's link, a queue call signed and built in ~0.3 ms) is built while the bytes travel.
                creation = asyncio.get_running_loop().call_soon(created)
            headers = {
                "Content-Type": resp.get("contentType", content_type),
                "Content-Encoding": encoding,
                "Content-Length": str(body_size),
            }

            async def attempt(retry_for: Any) -> None:
                data: Any = small if small is not None else _file_chunks(body_path)
                try:
                    async with self._session.put(resp["putUrl"], data=data, headers=headers) as r:
                        if r.status >= 500 or r.status in (400, 408, 429):  # S3 answers 400 on timeouts
                            retry_for(aiohttp.ClientResponseError(r.request_info, (), status=r.status))
                        elif r.status >= 300:
                            raise ResourceUnavailable(f"Upload of artifact {name!r} rejected with HTTP {r.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    retry_for(exc)

            try:
                await retry(5, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ResourceUnavailable(
                    f"Could not upload artifact {name!r}: {str(exc) or type(exc).__name__}"
                ) from exc
        finally:
            if creation is not None:
                creation.cancel()  # an upload that failed before the loop's next turn starts nothing left unawaited
            if body_path != path:
                await asyncio.to_thread(body_path.unlink, missing_ok=True)
        return Published(sha, size)

    async def _object(
        self,
        task_id: str,
        run_id: int,
        name: str,
        path: Path,
        content_type: str,
        expires: Any,
        created: Callable[[], None] | None,
    ) -> Published:
        size = (await asyncio.to_thread(path.stat)).st_size
        resp = await self._create(
            task_id,
            run_id,
            name,
            {"storageType": "object", "contentType": content_type, "expires": iso(expires)},
        )
        if created is not None:
            created()
        fh = await asyncio.to_thread(path.open, "rb")
        readers: list[_HashingFileReader] = []

        async def reader_factory() -> _HashingFileReader:
            await asyncio.to_thread(fh.seek, 0)
            readers.append(_HashingFileReader(fh))
            return readers[-1]

        try:
            await taskcluster.aio.upload.upload(
                projectId=resp["projectId"],
                name=resp["name"],
                contentType=content_type,
                contentLength=size,
                expires=resp["expires"],
                readerFactory=reader_factory,
                uploadId=resp["uploadId"],
                objectService=self._object_factory(resp["credentials"]),
            )
            await self._queue_factory().finishArtifact(task_id, str(run_id), name, {"uploadId": resp["uploadId"]})
        except (TaskclusterFailure, aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            raise ResourceUnavailable(f"Could not upload artifact {name!r}: {exc}") from exc
        finally:
            await asyncio.to_thread(fh.close)
        return Published(readers[-1].sha256.hexdigest(), size)


__all__ = ["Published", "Publisher", "TaskclusterRestFailure", "classify_create_error"]
