"""Downloading an artifact to a file (megalodon_core.artifact_download) against the double, over HTTP."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import taskcluster.aio

from megalodon_core.artifact_download import download_artifact_to_file
from megalodon_core.testing import Harness

from ..features.test_mounts import publish_artifacts


async def test_a_failed_final_write_closes_the_file(harness: Harness, tmp_path: Path) -> None:
    """The last chunks are written by ``finish`` after the download: a disk that fills up then must not
    leave the file open (one descriptor leaked per failed download)."""
    task_id = await publish_artifacts(harness, {"public/small.bin": b"x" * 1000})
    opened: list[Any] = []

    async def runner(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "_write":
            raise OSError(errno.ENOSPC, "No space left on device")
        result = await asyncio.to_thread(fn, *args)
        if fn is open:
            opened.append(result)
        return result

    async with aiohttp.ClientSession() as session:
        queue = taskcluster.aio.Queue({"rootUrl": harness.double.root_url}, session=session)
        with pytest.raises(OSError, match="No space left"):
            await download_artifact_to_file(queue, task_id, "public/small.bin", tmp_path / "out.bin", runner=runner)
    assert opened, "the download never opened its file"
    assert all(f.closed for f in opened), "the file of the failed download is still open"
