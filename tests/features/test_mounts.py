"""Mounts and caches end to end: a real worker, the Taskcluster double, a loopback web server.

Every mount kind (file, readOnlyDirectory, writableDirectoryCache) with every content kind (url, artifact,
indexed, raw, base64), every format, the SHA-256 rules, the payload checks, cache persistence across tasks and
worker restarts, purging, and hostile archives.
"""

from __future__ import annotations

import asyncio
import base64
import bz2
import datetime as dt
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import lz4.frame
import pytest
import taskcluster.aio
import zstandard
from aiohttp import web

from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import PROVISIONER, Harness, Outcome
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker import Worker
from megalodon_features import mounts as mounts_module
from megalodon_features.cache_store import CacheStore


# -- helpers -----------------------------------------------------------------------------------------------
def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class WebServer:
    """Serves registered bodies on loopback; can fail the first N requests of a path with a status."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.failures: dict[str, tuple[int, int]] = {}
        self.hits: Counter[str] = Counter()
        self.hanging: set[str] = set()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base = ""

    def add(self, path: str, body: bytes) -> str:
        self.bodies[path] = body
        return self.base + path

    def fail(self, path: str, times: int, status: int = 503) -> None:
        self.failures[path] = (times, status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        times, status = self.failures.get(path, (0, 0))
        if times:
            self.failures[path] = (times - 1, status)
            return web.Response(status=status, text="try again later")
        if path in self.hanging:
            await self._stopping.wait()
        if path not in self.bodies:
            return web.Response(status=404, text="no such thing")
        return web.Response(body=self.bodies[path], content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()


async def publish_artifacts(harness: Harness, artifacts: dict[str, bytes]) -> str:
    """An upstream task, claimed with worker credentials, that uploads ``artifacts`` and completes."""
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    creds = harness.double.worker_credentials(PROVISIONER, worker_type, "up-group", "up-worker")
    root = harness.double.root_url
    async with aiohttp.ClientSession() as session:
        queue = taskcluster.aio.Queue({"rootUrl": root, "credentials": creds}, session=session)
        claims = await queue.claimWork(
            f"{PROVISIONER}/{worker_type}", {"tasks": 1, "workerGroup": "up-group", "workerId": "up-worker"}
        )
        claim = claims["tasks"][0]
        task_queue = taskcluster.aio.Queue({"rootUrl": root, "credentials": claim["credentials"]}, session=session)
        expires = iso(utcnow() + dt.timedelta(hours=12))
        for name, data in artifacts.items():
            body = {"storageType": "s3", "contentType": "application/octet-stream", "expires": expires}
            created = await task_queue.createArtifact(task_id, "0", name, body)
            headers = {"content-type": "application/octet-stream", "content-length": str(len(data))}
            async with session.put(created["putUrl"], data=data, headers=headers) as resp:
                resp.raise_for_status()
        await task_queue.reportCompleted(task_id, "0")
    return task_id


def index_task(harness: Harness, namespace: str, task_id: str) -> None:
    harness.double.index.insert(namespace, task_id, 0, {}, utcnow() + dt.timedelta(hours=12))


async def run_tasks(
    harness: Harness, tasks: list[tuple[dict[str, Any], dict[str, Any]]], **config: Any
) -> list[Outcome]:
    """Run several tasks on ONE worker (with plugin config keys allowed); task ``i`` may depend on ``i-1``.

    A task definition may use ``"dependencies": ["@0"]`` to refer to the id of an earlier task in the list.
    """
    worker_type = harness.worker_type()
    ids: list[str] = []
    for task_payload, given in tasks:
        definition = dict(given)
        definition["dependencies"] = [
            ids[int(d[1:])] if d.startswith("@") else d for d in definition.get("dependencies", [])
        ]
        ids.append(await harness.create(task_payload, worker_type, **definition))
    host = PluginHost()
    cfg = harness.config(worker_type, numberOfTasksToRun=len(tasks), **config)
    worker = Worker(parse_config(cfg, host.config_fields()), host)
    code = await asyncio.wait_for(worker.run(), 120)
    return [await harness.outcome(task_id, code) for task_id in ids]


def tar_bytes(files: dict[str, bytes], *, tweak: Callable[[tarfile.TarInfo], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            if tweak is not None:
                tweak(info)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def state(harness: Harness, name: str) -> Any:
    return json.loads((Path(harness.tmp_path) / "caches" / name).read_text())


@pytest.fixture
async def webserver() -> AsyncIterator[WebServer]:
    server = WebServer()
    await server.start()
    yield server
    await server.stop()


def cache_scopes(*names: str) -> list[str]:
    return [f"generic-worker:cache:{name}" for name in names]


def payload(command: list[list[str]], mounts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"command": command, "maxRunTime": 60, "mounts": mounts, **extra}


class Sources:
    """One piece of content per content kind, all of them holding ``data``, ready to mount."""

    def __init__(self, harness: Harness, webserver: WebServer, data: dict[str, bytes], raw: str) -> None:
        self.harness = harness
        self.webserver = webserver
        self.data = data
        self.raw = raw
        self.upstream = ""
        self.scopes: list[str] = []

    async def publish(self) -> None:
        self.upstream = await publish_artifacts(
            self.harness,
            {"private/mounts/artifact.bin": self.data["artifact"], "public/indexed.bin": self.data["indexed"]},
        )
        index_task(self.harness, "project.mounts.latest", self.upstream)
        self.webserver.add("/content.bin", self.data["url"])
        self.scopes = ["queue:get-artifact:private/mounts/artifact.bin", "queue:get-artifact:public/indexed.bin"]

    def content(self, kind: str) -> dict[str, Any]:
        if kind == "url":
            return {"url": self.webserver.base + "/content.bin", "sha256": sha(self.data["url"])}
        if kind == "artifact":
            return {
                "taskId": self.upstream,
                "artifact": "private/mounts/artifact.bin",
                "sha256": sha(self.data["artifact"]),
            }
        if kind == "indexed":
            return {"namespace": "project.mounts.latest", "artifact": "public/indexed.bin"}
        if kind == "raw":
            return {"raw": self.raw}
        return {"base64": b64(self.data["base64"])}

    @property
    def task(self) -> dict[str, Any]:
        return {"dependencies": [self.upstream], "scopes": list(self.scopes)}


KINDS = ["url", "artifact", "indexed", "raw", "base64"]


def ascii_tar(files: dict[str, bytes]) -> str:
    """A ustar archive whose every byte is ASCII, so it can travel as ``raw`` JSON text."""
    text = tar_bytes(files).decode("ascii")
    assert text.encode() == tar_bytes(files)
    return text


# -- every mount kind x every content kind -----------------------------------------------------------------
async def test_file_mounts_from_every_content_kind(harness: Harness, webserver: WebServer) -> None:
    data = {kind: f"{kind} content\n".encode() for kind in KINDS}
    sources = Sources(harness, webserver, data, raw="raw content\n")
    await sources.publish()
    mounts = [{"file": f"files/{kind}.txt", "content": sources.content(kind)} for kind in KINDS]
    script = "for k in url artifact indexed raw base64; do printf '%s=' $k; cat files/$k.txt; done"
    out = await harness.run(payload([sh(script)], mounts), task=sources.task)
    assert out.state == "completed", out.log
    assert "url=url content\n" in out.log
    assert "artifact=artifact content\n" in out.log
    assert "indexed=indexed content\n" in out.log
    assert "raw=raw content\n" in out.log
    assert "base64=base64 content\n" in out.log  # decoded, not the base64 text
    assert b64(data["base64"]) not in out.log.split("Executing command 0")[1]
    assert f"[mounts] Downloading url {webserver.base}/content.bin to " in out.log
    assert f"[mounts] Downloading task {sources.upstream} artifact private/mounts/artifact.bin to " in out.log
    assert f"matches required SHA256 {sha(data['url'])}" in out.log
    assert f"matches required SHA256 {sha(data['artifact'])}" in out.log
    warning = (
        f"of namespace project.mounts.latest artifact public/indexed.bin has SHA256 {sha(data['indexed'])} but task "
        "payload does not declare a required value, so content authenticity cannot be verified"
    )
    assert warning in out.log
    assert "[taskcluster:warn " in out.log.split(warning)[0].rsplit("\n", 1)[1]
    assert out.log.count("content authenticity cannot be verified") == 1  # inline content is authentic by design


async def test_read_only_directories_from_every_content_kind(harness: Harness, webserver: WebServer) -> None:
    files = {
        kind: {f"{kind}/readme.txt": f"{kind} dir\n".encode(), f"{kind}/sub/deep.txt": b"deep\n"} for kind in KINDS
    }
    data = {
        "url": gzip.compress(tar_bytes(files["url"])),
        "artifact": zip_bytes(files["artifact"]),
        "indexed": lzma.compress(tar_bytes(files["indexed"])),
        "base64": zstandard.ZstdCompressor().compress(tar_bytes(files["base64"])),
    }
    sources = Sources(harness, webserver, data, raw=ascii_tar(files["raw"]))
    await sources.publish()
    formats = {"url": "tar.gz", "artifact": "zip", "indexed": "tar.xz", "raw": "tar", "base64": "tar.zst"}
    mounts = [{"directory": "ro", "content": sources.content(kind), "format": formats[kind]} for kind in KINDS]
    script = "for k in url artifact indexed raw base64; do cat ro/$k/readme.txt ro/$k/sub/deep.txt; done"
    out = await harness.run(payload([sh(script)], mounts), task=sources.task)
    assert out.state == "completed", out.log
    for kind in KINDS:
        assert f"{kind} dir\ndeep\n" in out.log
        assert f"[mounts] Extracting {formats[kind]} file " in out.log


async def test_writable_caches_preloaded_from_every_content_kind(harness: Harness, webserver: WebServer) -> None:
    files = {kind: {"seed.txt": f"{kind} seed\n".encode()} for kind in KINDS}
    data = {
        "url": bz2.compress(tar_bytes(files["url"])),
        "artifact": zip_bytes(files["artifact"]),
        "indexed": tar_bytes(files["indexed"]),
        "base64": lz4.frame.compress(tar_bytes(files["base64"])),
    }
    sources = Sources(harness, webserver, data, raw=ascii_tar(files["raw"]))
    await sources.publish()
    formats = {"url": "tar.bz2", "artifact": "zip", "indexed": "tar", "raw": "tar", "base64": "tar.lz4"}
    mounts: list[dict[str, Any]] = [
        {
            "directory": f"caches/{kind}",
            "cacheName": f"seeded-{kind}",
            "content": sources.content(kind),
            "format": formats[kind],
        }
        for kind in KINDS
    ]
    mounts.append({"directory": "caches/empty", "cacheName": "empty"})
    script = (
        "for k in url artifact indexed raw base64; do cat caches/$k/seed.txt; echo more >> caches/$k/seed.txt; done; "
        "ls -A caches/empty; echo listed"
    )
    task = sources.task
    task["scopes"] += cache_scopes(*(f"seeded-{k}" for k in KINDS), "empty")
    out = await harness.run(payload([sh(script)], mounts), task=task)
    assert out.state == "completed", out.log
    for kind in KINDS:
        assert f"{kind} seed\n" in out.log
        assert f"[mounts] No existing writable directory cache 'seeded-{kind}' - creating " in out.log
    assert "\nlisted\n" in out.log
    assert f'Preserving cache: Moving "{harness.tmp_path}' in out.log
    pools = state(harness, "directory-caches.json")
    assert sorted(pools) == sorted([*(f"seeded-{k}" for k in KINDS), "empty"])
    for kind in KINDS:
        (entry,) = pools[f"seeded-{kind}"]
        assert Path(entry["location"], "seed.txt").read_text() == f"{kind} seed\nmore\n"


# -- formats -----------------------------------------------------------------------------------------------
async def test_every_file_and_directory_format(harness: Harness) -> None:
    text = b"formatted content\n" * 50
    compress: dict[str, Callable[[bytes], bytes]] = {
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
        "zst": zstandard.ZstdCompressor().compress,
        "lz4": lz4.frame.compress,
    }
    mounts: list[dict[str, Any]] = [
        {"file": f"f/{fmt}.txt", "content": {"base64": b64(fn(text))}, "format": fmt} for fmt, fn in compress.items()
    ]
    tree = {"inner/file.txt": b"in the archive\n"}
    archives = {"tar": tar_bytes(tree), "zip": zip_bytes(tree)}
    for fmt, fn in compress.items():
        archives[f"tar.{fmt if fmt != 'gz' else 'gz'}"] = fn(tar_bytes(tree))
    mounts += [
        {"directory": f"d/{fmt}", "content": {"base64": b64(data)}, "format": fmt} for fmt, data in archives.items()
    ]
    script = (
        "for f in gz bz2 xz zst lz4; do cmp f/$f.txt f/gz.txt && echo file-$f-ok; done; "
        'for d in tar tar.gz tar.bz2 tar.xz tar.zst tar.lz4 zip; do printf "$d:"; cat d/$d/inner/file.txt; done; '
        "wc -c < f/zst.txt"
    )
    out = await harness.run(payload([sh(script)], mounts))
    assert out.state == "completed", out.log
    for fmt in compress:
        assert f"file-{fmt}-ok" in out.log
        assert f"[mounts] Decompressing {fmt} file " in out.log
    for fmt in ("tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "tar.lz4", "zip"):
        assert f"{fmt}:in the archive\n" in out.log
    assert f"\n{len(text)}\n" in out.log


@pytest.mark.parametrize(
    ("mount", "name"),
    [
        ({"file": "f", "format": "mz"}, "mz"),
        ({"directory": "d", "format": "tar.mz"}, "tar.mz"),
        ({"directory": "d", "cacheName": "c", "format": "tar.mz"}, "tar.mz"),
    ],
)
async def test_minlz_is_refused_by_name_before_any_download(
    harness: Harness, webserver: WebServer, mount: dict[str, Any], name: str
) -> None:
    url = webserver.add("/never-fetched", b"x")
    out = await harness.run(
        payload([["true"]], [{**mount, "content": {"url": url}}]), task={"scopes": cache_scopes("c")}
    )
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert "mounts[0].format: unsupported" in out.log and f"format {name}: this worker cannot read MinLZ" in out.log
    assert webserver.hits["/never-fetched"] == 0


async def test_mount_errors_use_generic_workers_wording(harness: Harness) -> None:
    """ "cannot unarchive ... as task user" for a bad archive, Go's "mkdir <path>: not a directory" for a path."""
    bad = [{"directory": "ro", "content": {"base64": b64(b"not a tar at all" * 64)}, "format": "tar.gz"}]
    out = await harness.run(payload([["true"]], bad))
    assert out.state == "failed", out.log
    assert "[taskcluster:error] [mounts] cannot unarchive " in out.log and "/ro as task user: " in out.log
    blocked = [
        {"file": "plain", "content": {"raw": "a file"}},
        {"file": "plain/below", "content": {"raw": "x"}},
    ]
    out = await harness.run(payload([["true"]], blocked))
    assert out.state == "failed", out.log
    assert "/plain: not a directory" in out.log and "[mounts] mkdir " in out.log
    cache = [{"file": "file", "content": {"raw": "x"}}, {"directory": "file/cache", "cacheName": "wc"}]
    out = await harness.run(payload([["true"]], cache), task={"scopes": cache_scopes("wc")})
    assert out.state == "failed", out.log
    assert "[mounts] not able to create directory " in out.log and "/file/cache: mkdir " in out.log


# -- sha256 and the download cache --------------------------------------------------------------------------
async def test_sha256_mismatch_fails_the_task_and_evicts_the_download(harness: Harness, webserver: WebServer) -> None:
    url = webserver.add("/tool", b"the real tool\n")
    wrong = "0" * 64
    out = await harness.run(payload([["true"]], [{"file": "tool", "content": {"url": url, "sha256": wrong}}]))
    assert out.state == "failed", out.log
    digest = sha(b"the real tool\n")
    expected = (
        f"of url {url} has SHA256 {digest} but task definition explicitly requires {wrong}; not retrying download"
    )
    assert expected in out.log
    assert "[taskcluster:error] [mounts] Download " in out.log
    assert "Executing command" not in out.log
    assert state(harness, "file-caches.json") == {}
    assert list((harness.tmp_path / "downloads").iterdir()) == []


async def test_download_cache_is_reused_verified_and_refreshed(harness: Harness, webserver: WebServer) -> None:
    body = b"cached body\n"
    url = webserver.add("/cached", body)
    mounts = [{"file": "c.txt", "content": {"url": url, "sha256": sha(body)}}]
    first = await harness.run(payload([["cat", "c.txt"]], mounts))
    assert first.state == "completed", first.log
    second = await harness.run(payload([["cat", "c.txt"]], mounts))
    assert second.state == "completed", second.log
    assert webserver.hits["/cached"] == 1
    assert f"Found existing download for urlcontent:{url} (" in second.log
    assert f"with correct SHA256 {sha(body)}" in second.log
    # Tampering with the cached copy is noticed on reuse: it is deleted and downloaded again.
    (entry,) = state(harness, "file-caches.json").values()
    Path(entry["location"]).write_bytes(b"tampered\n")
    third = await harness.run(payload([["cat", "c.txt"]], mounts))
    assert third.state == "completed", third.log
    assert "tampered" not in third.log
    assert webserver.hits["/cached"] == 2
    assert f"but was stored with SHA256 {sha(body)}; deleting it" in third.log
    # A task requiring other content evicts the cached copy and fails after downloading it again.
    other = [{"file": "c.txt", "content": {"url": url, "sha256": "1" * 64}}]
    fourth = await harness.run(payload([["cat", "c.txt"]], other))
    assert fourth.state == "failed"
    assert f"but task definition explicitly requires {'1' * 64} so deleting it" in fourth.log
    assert webserver.hits["/cached"] == 3


async def test_url_downloads_retry_transient_errors_and_fail_on_404(
    harness: Harness, webserver: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mounts_module, "BACKOFF_BASE", 0.01)
    url = webserver.add("/flaky", b"eventually\n")
    webserver.fail("/flaky", 2, 503)
    out = await harness.run(payload([["cat", "f"]], [{"file": "f", "content": {"url": url}}]))
    assert out.state == "completed", out.log
    assert webserver.hits["/flaky"] == 3
    assert out.log.count(f"[mounts] Download of url {url} failed on this attempt: try again later") == 0
    assert out.log.count(f"[mounts] Download of url {url} failed on this attempt") == 2
    missing = webserver.base + "/missing"
    out = await harness.run(payload([["true"]], [{"file": "f", "content": {"url": missing}}]))
    assert out.state == "failed", out.log
    assert f"[taskcluster:error] [mounts] could not download {missing}: HTTP 404 Not Found from {missing}" in out.log
    assert webserver.hits["/missing"] == 1


# -- payload checks ----------------------------------------------------------------------------------------
async def test_artifact_of_a_task_not_in_dependencies_is_malformed(harness: Harness) -> None:
    upstream = await publish_artifacts(harness, {"public/x": b"x"})
    mounts = [{"file": "x", "content": {"taskId": upstream, "artifact": "public/x"}}]
    out = await harness.run(payload([["true"]], mounts), task={"scopes": ["queue:get-artifact:public/x"]})
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert (
        f"[mounts] task.dependencies needs to include {upstream} since one or more of its artifacts are mounted"
        in out.log
    )


async def test_missing_cache_scope_is_malformed_and_names_the_scope(harness: Harness) -> None:
    mounts = [{"directory": "c", "cacheName": "secret-cache"}, {"directory": "d", "cacheName": "granted"}]
    out = await harness.run(payload([["true"]], mounts), task={"scopes": cache_scopes("granted")})
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'Feature "mounts" requires scopes' in out.log
    assert "generic-worker:cache:secret-cache" in out.log


async def test_other_payload_errors_are_malformed(harness: Harness) -> None:
    twice = [{"directory": "a", "cacheName": "same"}, {"directory": "b", "cacheName": "same"}]
    out = await harness.run(payload([["true"]], twice), task={"scopes": cache_scopes("same")})
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert 'writable directory cache "same" is mounted more than once' in out.log
    out = await harness.run(payload([["true"]], [{"file": "f", "content": {"base64": "abc"}}]))
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "mounts[0].content.base64 is not valid base64" in out.log


async def test_disabled_mounts_refuse_tasks_that_use_them(harness: Harness) -> None:
    out = await harness.run(payload([["true"]], [{"file": "f", "content": {"raw": "x"}}]), enableMounts=False)
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert 'feature "mounts"' in out.log
    assert "not enabled on this worker pool" in out.log


async def test_file_mount_over_a_directory_fails(harness: Harness) -> None:
    out = await harness.run(payload([["true"]], [{"file": "generic-worker", "content": {"raw": "x"}}]))
    assert out.state == "failed", out.log
    assert "since it already exists as a directory" in out.log


# -- private artifacts -------------------------------------------------------------------------------------
async def test_private_artifacts_need_the_tasks_own_get_artifact_scope(harness: Harness) -> None:
    upstream = await publish_artifacts(harness, {"private/secret.txt": b"top secret\n"})
    mounts = [{"file": "s.txt", "content": {"taskId": upstream, "artifact": "private/secret.txt"}}]
    denied = await harness.run(payload([["cat", "s.txt"]], mounts), task={"dependencies": [upstream]})
    assert denied.state == "failed", denied.log
    assert f"[mounts] could not download task {upstream} artifact private/secret.txt" in denied.log
    assert "queue:get-artifact:private/secret.txt" in denied.log
    assert "top secret" not in denied.log
    allowed = await harness.run(
        payload([["cat", "s.txt"]], mounts),
        task={"dependencies": [upstream], "scopes": ["queue:get-artifact:private/secret.txt"]},
    )
    assert allowed.state == "completed", allowed.log
    assert "top secret\n" in allowed.log


# -- writable caches ---------------------------------------------------------------------------------------
CACHE: list[dict[str, Any]] = [{"directory": "cache", "cacheName": "persistent"}]
WRITE = sh("test -f cache/note.txt && echo found-$(cat cache/note.txt); echo written > cache/note.txt")
READ = sh("echo read-$(cat cache/note.txt 2>/dev/null || echo nothing)")


async def test_caches_persist_across_tasks_of_one_worker(harness: Harness) -> None:
    scopes = {"scopes": cache_scopes("persistent")}
    first, second = await run_tasks(
        harness,
        [(payload([WRITE], CACHE), scopes), (payload([READ], CACHE), {**scopes, "dependencies": ["@0"]})],
    )
    assert first.state == "completed", first.log
    assert second.state == "completed", second.log
    assert "[mounts] No existing writable directory cache 'persistent' - creating " in first.log
    assert "[mounts] Moving existing writable directory cache persistent from " in second.log
    assert "read-written" in second.log


async def test_concurrent_tasks_share_downloads_and_get_separate_cache_directories(
    harness: Harness, webserver: WebServer
) -> None:
    url = webserver.add("/shared", b"shared\n")
    mounts: list[dict[str, Any]] = [{"file": "shared.txt", "content": {"url": url, "sha256": sha(b"shared\n")}}, *CACHE]
    script = sh("cat shared.txt; echo $TASK_ID > cache/owner; sleep 0.5; echo owner-$(cat cache/owner)")
    scopes = {"scopes": cache_scopes("persistent")}
    outs = await run_tasks(harness, [(payload([script], mounts), scopes)] * 2, capacity=2)
    for out in outs:
        assert out.state == "completed", out.log
        assert f"owner-{out.task_id}" in out.log  # each task had a directory of its own
    assert webserver.hits["/shared"] == 1
    pool = state(harness, "directory-caches.json")["persistent"]
    assert len(pool) == 2
    assert sorted(Path(e["location"], "owner").read_text().strip() for e in pool) == sorted(o.task_id for o in outs)


async def test_caches_persist_across_worker_restarts(harness: Harness) -> None:
    scopes = {"scopes": cache_scopes("persistent")}
    first = await harness.run(payload([WRITE], CACHE), task=scopes)
    assert first.state == "completed", first.log
    (entry,) = state(harness, "directory-caches.json")["persistent"]
    assert Path(entry["location"], "note.txt").read_text() == "written\n"
    second = await harness.run(payload([READ], CACHE), task=scopes)  # a new Worker instance
    assert second.state == "completed", second.log
    assert "read-written" in second.log
    assert f"Moving existing writable directory cache persistent from {entry['location']} to " in second.log


async def test_purge_caches_exit_status_purges(harness: Harness) -> None:
    scopes = {"scopes": cache_scopes("persistent")}
    write_then_fail = sh("echo written > cache/note.txt; exit 3")
    first, second = await run_tasks(
        harness,
        [
            (payload([write_then_fail], CACHE, onExitStatus={"purgeCaches": [3]}), scopes),
            (payload([READ], CACHE), {**scopes, "dependencies": ["@0"], "requires": "all-resolved"}),
        ],
    )
    assert first.state == "failed", first.log
    assert (
        "[mounts] Purging caches since last command had exit code 3 which is listed in "
        "task.Payload.OnExitStatus.PurgeCaches array" in first.log
    )
    assert "Preserving cache" not in first.log
    assert "read-nothing" in second.log
    assert "[mounts] No existing writable directory cache 'persistent'" in second.log


async def test_exit_codes_not_listed_keep_the_cache(harness: Harness) -> None:
    scopes = {"scopes": cache_scopes("persistent")}
    out = await harness.run(
        payload([sh("echo written > cache/note.txt; exit 4")], CACHE, onExitStatus={"purgeCaches": [3]}), task=scopes
    )
    assert out.state == "failed"
    assert "Purging caches" not in out.log
    assert "Preserving cache" in out.log
    assert len(state(harness, "directory-caches.json")["persistent"]) == 1


async def test_aborted_tasks_purge_their_caches(harness: Harness) -> None:
    scopes = {"scopes": cache_scopes("persistent")}
    slow = {"command": [sh("echo written > cache/note.txt; sleep 30")], "maxRunTime": 1, "mounts": CACHE}
    first, second = await run_tasks(
        harness,
        [(slow, scopes), (payload([READ], CACHE), {**scopes, "dependencies": ["@0"], "requires": "all-resolved"})],
    )
    assert first.state == "failed", first.log
    assert "[mounts] Purging caches since the task was aborted (task aborted - max run time exceeded)" in first.log
    assert "read-nothing" in second.log


async def test_a_cache_the_task_moved_away_fails_the_task(harness: Harness) -> None:
    out = await harness.run(payload([sh("mv cache elsewhere")], CACHE), task={"scopes": cache_scopes("persistent")})
    assert out.state == "failed", out.log
    assert '[mounts] could not persist cache "persistent"' in out.log
    assert state(harness, "directory-caches.json") == {}


async def test_cancelling_a_task_stops_a_download_in_progress(tmp_path: Path, webserver: WebServer) -> None:
    from megalodon_core.double import TaskclusterDouble

    webserver.add("/slow.tar", tar_bytes({"x": b"x"}))
    webserver.hanging.add("/slow.tar")
    mounts = [
        {"directory": "c", "cacheName": "seeded", "content": {"url": webserver.base + "/slow.tar"}, "format": "tar"}
    ]
    async with TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as short:
        async with aiohttp.ClientSession() as session:
            h = Harness(short, tmp_path, session)

            async def cancel_while_downloading(task_id: str) -> None:
                while not webserver.hits["/slow.tar"]:
                    await asyncio.sleep(0.05)
                short.cancel_task(task_id)

            started = asyncio.get_running_loop().time()
            out = await h.run(
                payload([["true"]], mounts), task={"scopes": cache_scopes("seeded")}, during=cancel_while_downloading
            )
            elapsed = asyncio.get_running_loop().time() - started
    assert (out.status["runs"][0]["state"], out.status["runs"][0]["reasonResolved"]) == ("exception", "canceled")
    assert elapsed < 20, "the download was not abandoned when the task was cancelled"
    assert state(h, "directory-caches.json") == {}
    assert state(h, "file-caches.json") == {}
    assert list((tmp_path / "downloads").iterdir()) == []


async def test_nested_caches_are_both_preserved(harness: Harness) -> None:
    mounts = [{"directory": "outer", "cacheName": "outer"}, {"directory": "outer/inner", "cacheName": "inner"}]
    scopes = {"scopes": cache_scopes("outer", "inner")}
    write = sh("echo o > outer/o.txt; echo i > outer/inner/i.txt")
    first = await harness.run(payload([write], mounts), task=scopes)
    assert first.state == "completed", first.log
    read = sh("cat outer/o.txt outer/inner/i.txt")
    second = await harness.run(payload([read], mounts), task=scopes)
    assert second.state == "completed", second.log
    assert "o\ni\n" in second.log
    (inner,) = state(harness, "directory-caches.json")["inner"]
    assert Path(inner["location"], "i.txt").read_text() == "i\n"


def test_cache_moves_across_filesystems_copy_then_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from megalodon_features import cache_store

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/file").write_text("content")
    os.symlink("sub/file", src / "link")
    dst = tmp_path / "dst"
    dst.mkdir()  # an empty directory is replaced, as rename(2) does

    def exdev(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(cache_store.os, "rename", exdev)
    cache_store.move(src, dst)
    assert not src.exists()
    assert (dst / "sub/file").read_text() == "content"
    assert os.readlink(dst / "link") == "sub/file"
    (tmp_path / "again").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    with pytest.raises(OSError):
        cache_store.move(tmp_path / "again", tmp_path / "full")
    assert (tmp_path / "again").is_dir()


def test_cache_state_drops_entries_missing_on_disk(tmp_path: Path) -> None:
    caches, downloads = tmp_path / "caches", tmp_path / "downloads"
    caches.mkdir()
    downloads.mkdir()
    kept_dir = caches / "kept"
    kept_dir.mkdir()
    kept_file = downloads / "file"
    kept_file.write_text("x")
    (downloads / "half.partial").write_text("interrupted download")
    (caches / "directory-caches.json").write_text(
        json.dumps(
            {
                "kept": [{"key": "kept", "location": str(kept_dir)}, {"key": "kept", "location": str(caches / "gone")}],
                "old-format": {"key": "old-format", "location": str(kept_dir)},
                "gone": [{"key": "gone", "location": str(caches / "nowhere")}],
            }
        )
    )
    (caches / "file-caches.json").write_text(
        json.dumps(
            {
                "urlcontent:a": {"key": "urlcontent:a", "location": str(kept_file), "sha256": "ab"},
                "urlcontent:b": {"key": "urlcontent:b", "location": str(downloads / "missing")},
            }
        )
    )
    store = CacheStore(caches, downloads)
    warnings = store.load()
    assert sorted(store.directories) == ["kept", "old-format"]
    assert [e.location for e in store.directories["kept"]] == [str(kept_dir)]
    assert list(store.files) == ["urlcontent:a"]
    assert len(warnings) == 3
    assert not (downloads / "half.partial").exists()


# -- hostile archives --------------------------------------------------------------------------------------
def _symlink(info: tarfile.TarInfo) -> None:
    info.type, info.linkname, info.size = tarfile.SYMTYPE, "../../../../etc", 0


def _hardlink(info: tarfile.TarInfo) -> None:
    info.type, info.linkname, info.size = tarfile.LNKTYPE, "../../../etc/hostname", 0


HOSTILE = {
    "zip-slip": (zip_bytes({"../../escaped.txt": b"pwned"}), "zip", "illegal file path in archive: ../../escaped.txt"),
    "absolute": (tar_bytes({"/tmp/megalodon-absolute.txt": b"pwned"}), "tar", "absolute paths are not allowed"),
    "symlink": (tar_bytes({"etc": b""}, tweak=_symlink), "tar", "illegal symlink target in archive: etc -> "),
    "hardlink": (tar_bytes({"h": b""}, tweak=_hardlink), "tar", "illegal hardlink target in archive: h -> "),
    "size-limit": (gzip.compress(tar_bytes({"big": b"\0" * 300_000})), "tar.gz", "expands to more than 100000 bytes"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_archives_are_refused(harness: Harness, kind: str) -> None:
    data, fmt, message = HOSTILE[kind]
    mounts = [{"directory": "ro", "content": {"base64": b64(data)}, "format": fmt}]
    (out,) = await run_tasks(harness, [(payload([["true"]], mounts), {})], mountsMaxExtractedBytes=100_000)
    assert out.state == "failed", out.log
    assert "[taskcluster:error] [mounts] " in out.log
    assert message in out.log
    assert "Executing command" not in out.log
    assert not Path("/tmp/megalodon-absolute.txt").exists()
    assert not (harness.tmp_path / "escaped.txt").exists()


async def test_file_decompression_is_bounded_too(harness: Harness) -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 400_000)
    mounts = [{"file": "f", "content": {"base64": b64(bomb)}, "format": "zst"}]
    (out,) = await run_tasks(harness, [(payload([["true"]], mounts), {})], mountsMaxExtractedBytes=100_000)
    assert out.state == "failed", out.log
    assert "expands to more than 100000 bytes" in out.log
    assert not any(p.name == "f" for p in (harness.tmp_path / "tasks").rglob("f"))
