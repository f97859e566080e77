"""Downloading one artifact to a local file: the one implementation executors and features share.

``taskcluster.aio.download.downloadArtifact`` follows the queue's answer (S3 or object service, retries)
and calls the writer factory again for every retry, so each call starts the file over.  Chunks are written
and hashed in a worker thread (the loop only buffers up to :data:`CHUNK`), and the size and SHA-256 of
what was written are returned, for the task log and for content checks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import taskcluster.aio.download

__all__ = ["CHUNK", "FileWriter", "ThreadRunner", "download_artifact_to_file"]

#: Bytes buffered on the loop before a write in the thread.
CHUNK = 1 << 20

#: Runs ``fn(*args)`` off the loop (``asyncio.to_thread`` by default; a plugin may bring its own thread).
ThreadRunner = Callable[..., Awaitable[Any]]


class FileWriter:
    """Writes downloaded chunks from a worker thread, hashing them there too; the loop only buffers.

    It has the ``async write(chunk)`` of ``taskcluster.aio.download`` writers, so it also serves plain URL
    downloads.
    """

    def __init__(self, path: Path, runner: ThreadRunner) -> None:
        self.path = path
        self.runner = runner
        self.size = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None

    @classmethod
    async def open(cls, path: Path, runner: ThreadRunner = asyncio.to_thread) -> FileWriter:
        writer = cls(path, runner)
        writer._file = await runner(open, path, "wb")
        return writer

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            await self.runner(self._write, data)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    async def finish(self) -> tuple[int, str]:
        """Flush, close, and return (size, sha256); the file is closed even when the last write fails."""
        try:
            await self._flush()
        except BaseException:
            await self.abandon()
            raise
        if self._file is not None:
            await self.runner(self._file.close)
        return self.size, self._digest.hexdigest()

    async def abandon(self) -> None:
        """Close without flushing (a failed or restarted attempt); the caller removes or rewrites the file."""
        if self._file is not None and not self._file.closed:
            await self.runner(self._file.close)


async def download_artifact_to_file(
    queue: Any, task_id: str, name: str, dest: Path, *, runner: ThreadRunner = asyncio.to_thread
) -> tuple[int, str]:
    """Download artifact ``name`` of ``task_id``'s latest run to ``dest``; return (size, sha256).

    ``queue`` is a ``taskcluster.aio.Queue`` with the credentials that decide access (usually the task's
    own, so the queue checks ``queue:get-artifact:`` against the task's scopes).  Exceptions of the client
    (``TaskclusterFailure``, ``aiohttp.ClientError``, ``TimeoutError``) propagate; ``dest`` is then left
    closed, possibly partial.
    """
    writers: list[FileWriter] = []

    async def writer_factory() -> FileWriter:
        if writers:
            await writers[-1].abandon()
        writers.append(await FileWriter.open(dest, runner))
        return writers[-1]

    try:
        await taskcluster.aio.download.downloadArtifact(
            taskId=task_id, name=name, queueService=queue, writerFactory=writer_factory
        )
    except BaseException:
        if writers:
            await writers[-1].abandon()
        raise
    if not writers:  # pragma: no cover - downloadArtifact always writes or raises
        raise RuntimeError(f"downloading {name} of {task_id} produced no content")
    return await writers[-1].finish()
