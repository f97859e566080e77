"""Object uploads/downloads through the real helpers, and raw s3 artifact storage."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import taskcluster
import taskcluster.aio
from taskcluster.aio.download import downloadArtifactToFile, downloadToBuf
from taskcluster.aio.upload import upload, uploadFromBuf

from megalodon_core.double import TaskclusterDouble

TaskDef = Callable[..., dict[str, Any]]
CLAIM = {"workerGroup": "g", "workerId": "w", "tasks": 1}


async def claimed(double: TaskclusterDouble, root_queue: Any, task_def: TaskDef, tq: str) -> tuple[str, Any]:
    task_id = taskcluster.slugId()
    await root_queue.createTask(task_id, task_def(tq))
    [claim] = (await root_queue.claimWork(tq, CLAIM))["tasks"]
    queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": claim["credentials"]})
    return task_id, queue


async def test_large_object_artifact_roundtrip(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef, tmp_path: Path
) -> None:
    task_id, queue = await claimed(double, root_queue, task_def, "prov/big")
    source = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        for _ in range(50):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            out.write(chunk)
    expires = taskcluster.stringDate(taskcluster.fromNow("1 hour"))
    art = await queue.createArtifact(
        task_id, "0", "public/big.bin", {"storageType": "object", "contentType": "application/zip", "expires": expires}
    )
    objects = taskcluster.aio.Object({"rootUrl": double.root_url, "credentials": art["credentials"]})

    with source.open("rb") as f:

        async def reader_factory() -> Any:
            f.seek(0)
            return taskcluster.aio.reader_writer.FileReader(f)

        await upload(
            projectId=art["projectId"],
            name=art["name"],
            contentType="application/zip",
            contentLength=source.stat().st_size,
            expires=art["expires"],
            uploadId=art["uploadId"],
            readerFactory=reader_factory,
            objectService=objects,
        )
    await queue.finishArtifact(task_id, "0", "public/big.bin", {"uploadId": art["uploadId"]})
    target = tmp_path / "out.bin"
    with target.open("wb") as sink:
        content_type = await downloadArtifactToFile(
            sink, taskId=task_id, name="public/big.bin", queueService=root_queue
        )
    assert content_type == "application/zip"
    out_digest = hashlib.sha256()
    with target.open("rb") as f:
        while chunk := f.read(1 << 20):
            out_digest.update(chunk)
    assert out_digest.hexdigest() == digest.hexdigest()
    _, meta = double.artifact_content(task_id, 0, "public/big.bin")
    assert meta["hashes"]["sha256"] == digest.hexdigest() and meta["storedSize"] == 50 * 1024 * 1024


async def test_object_service_direct(double: TaskclusterDouble) -> None:
    objects = taskcluster.aio.Object({"rootUrl": double.root_url, "credentials": double.root_credentials})
    expires = taskcluster.stringDate(taskcluster.fromNow("1 hour"))
    await uploadFromBuf(
        projectId="p", name="some/small.txt", contentType="text/plain", contentLength=5, expires=expires,
        data=b"hello", objectService=objects,
    )  # fmt: skip
    data, content_type = await downloadToBuf(name="some/small.txt", objectService=objects)
    assert bytes(data) == b"hello" and content_type == "text/plain"
    metadata = await objects.object("some/small.txt")
    assert metadata["hashes"]["sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_s3_gzip_put_is_stored_and_replayed(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef
) -> None:
    task_id, queue = await claimed(double, root_queue, task_def, "prov/s3")
    body = b"line of log output\n" * 5000
    expires = taskcluster.stringDate(taskcluster.fromNow("1 hour"))
    art = await queue.createArtifact(
        task_id, "0", "public/logs/live.log", {"storageType": "s3", "contentType": "text/plain", "expires": expires}
    )
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
        async with session.put(art["putUrl"], data=gzip.compress(body), headers=headers) as resp:
            assert resp.status == 200
        location = (await root_queue.getArtifact(task_id, "0", "public/logs/live.log"))["url"]
        async with session.get(location) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Content-Type"] == "text/plain"
            assert gzip.decompress(await resp.read()) == body
    async with aiohttp.ClientSession() as session, session.get(location) as resp:
        assert await resp.read() == body  # a normal client transparently inflates
    data, meta = double.artifact_content(task_id, 0, "public/logs/live.log")
    assert data == body and meta["contentEncoding"] == "gzip" and meta["storageType"] == "s3"


async def test_private_storage_urls_are_signed(double: TaskclusterDouble, root_queue: Any, task_def: TaskDef) -> None:
    task_id, queue = await claimed(double, root_queue, task_def, "prov/priv")
    expires = taskcluster.stringDate(taskcluster.fromNow("1 hour"))
    art = await queue.createArtifact(
        task_id, "0", "private/x.txt", {"storageType": "s3", "contentType": "text/plain", "expires": expires}
    )
    async with aiohttp.ClientSession() as session:
        async with session.put(art["putUrl"], data=b"secret", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 200
        async with session.put(art["putUrl"].split("?")[0], data=b"x") as resp:
            assert resp.status == 403
        url = (await root_queue.artifact(task_id, "0", "private/x.txt"))["url"]
        async with session.get(url) as resp:
            assert await resp.read() == b"secret"
        async with session.get(url.split("?")[0]) as resp:
            assert resp.status == 403
