"""Live log: the task log streamed by the worker while the task runs, then replaced by a link to the backing log."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from megalodon_core.config import parse_config
from megalodon_core.tasklog import TaskLog
from megalodon_core.testing import Harness
from megalodon_core.timefmt import parse_iso, utcnow
from megalodon_features import livelog
from megalodon_features.livelog import LiveLogServer, LiveStream, bind_address, public_host

from ..helpers.artifacts import wait_for_artifact

LIVE = "public/logs/live.log"
BACKING = "public/logs/live_backing.log"


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


async def read_all(
    session: aiohttp.ClientSession, url: str, seen: asyncio.Event | None = None, marker: bytes = b"\nfirst\n"
) -> bytes:
    """Read a live log to EOF; set ``seen`` as soon as ``marker`` (the task's first line) has arrived."""
    out = bytearray()
    async with session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        async for chunk in resp.content.iter_any():
            out += chunk
            if seen is not None and marker in out:
                seen.set()
    return bytes(out)


def run_state(harness: Harness, task_id: str) -> str:
    return str(harness.double.task_state(task_id)["runs"][0]["state"])


async def test_readers_follow_a_running_task_then_get_a_link(harness: Harness) -> None:
    """Concurrent readers see output before the task ends; a late reader gets the past then follows; a wrong
    secret is a 404; the reference is replaced by a link to the backing log at the end."""
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        meta = await wait_for_artifact(harness, task_id, LIVE, within=10)
        got["reference"] = meta
        url = meta["url"]
        async with aiohttp.ClientSession() as session:
            seen = [asyncio.Event() for _ in range(3)]
            early = [asyncio.create_task(read_all(session, url, ev)) for ev in seen]
            await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in seen)), 20)
            got["running_when_seen"] = run_state(harness, task_id)
            got["late_seen"] = asyncio.Event()
            late = asyncio.create_task(read_all(session, url, got["late_seen"]))
            await asyncio.wait_for(got["late_seen"].wait(), 10)
            got["running_when_late_seen"] = run_state(harness, task_id)
            base, _, secret = url.rpartition("/")
            async with session.get(f"{base}/{secret[:-1]}x") as resp:
                got["wrong_secret"] = resp.status
            async with session.get(f"{base}/") as resp:
                got["no_secret"] = resp.status
            got["early"] = await asyncio.wait_for(asyncio.gather(*early), 30)
            got["late"] = await asyncio.wait_for(late, 30)

    started = utcnow()
    out = await harness.run({"command": [sh("echo first; sleep 2; echo second")], "maxRunTime": 60}, during=during)
    assert out.state == "completed", out.log
    reference = got["reference"]
    assert reference["storageType"] == "reference"
    assert reference["contentType"] == "text/plain; charset=utf-8"
    expires = parse_iso(reference["expires"])
    assert started + dt.timedelta(seconds=60 + 900) <= expires <= utcnow() + dt.timedelta(seconds=60 + 900)
    assert reference["url"].startswith("http://127.0.0.1:")
    assert got["running_when_seen"] == "running"
    assert got["running_when_late_seen"] == "running"
    assert got["wrong_secret"] == 404
    assert got["no_secret"] == 404
    # Every reader, early or late, got the whole log: exactly the backing log.
    backing = out.log.encode()
    for content in [*got["early"], got["late"]]:
        assert content == backing
    assert b"\nfirst\n" in backing and b"\nsecond\n" in backing
    link = out.artifacts[LIVE]
    assert link["storageType"] == "link"
    _, meta = harness.double.artifact_content(out.task_id, 0, LIVE)
    assert meta["artifact"] == BACKING


async def test_custom_live_log_name_and_disabled_feature(harness: Harness) -> None:
    out = await harness.run({"command": [["true"]], "maxRunTime": 30, "logs": {"live": "public/logs/mine.log"}})
    assert out.state == "completed", out.log
    assert out.artifacts["public/logs/mine.log"]["storageType"] == "link"
    # Config gate off: no reference was ever published, the core's link is the only live log artifact.
    out = await harness.run({"command": [["true"]], "maxRunTime": 30}, enableLiveLog=False)
    assert out.state == "completed", out.log
    meta = harness.double.queue.task(out.task_id).artifacts
    assert all(a.storage_type != "reference" for a in meta.values())


async def test_unstartable_server_only_warns(harness: Harness) -> None:
    # The live log port is taken: the task still runs, with a warning instead of a live log.
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        out = await harness.run({"command": [["echo", "ran"]], "maxRunTime": 30}, livelogExposePort=port)
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert out.state == "completed", out.log
    assert "ran\n" in out.log
    assert "Could not start live log: could not listen on 127.0.0.1:" in out.log


async def test_docker_task_streams_its_live_log(harness: Harness) -> None:
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        meta = await wait_for_artifact(harness, task_id, LIVE, within=10)
        got["reference"] = meta
        async with aiohttp.ClientSession() as session:
            seen = asyncio.Event()
            reader = asyncio.create_task(read_all(session, meta["url"], seen, b"first\r\n"))  # a pty
            await asyncio.wait_for(seen.wait(), 60)
            got["running"] = run_state(harness, task_id)
            got["content"] = await asyncio.wait_for(reader, 60)

    payload = {
        "image": "megalodon-test/busybox:latest",
        "command": sh("echo first; sleep 2; echo second"),
        "maxRunTime": 60,
    }
    out = await harness.run(payload, during=during)
    assert out.state == "completed", out.log
    assert got["running"] == "running"
    # docker-worker: the reference expires with the task.
    assert got["reference"]["expires"] == out.status["expires"]
    assert got["content"] == out.log.encode()
    assert out.artifacts[LIVE]["storageType"] == "link"


# -- the stream itself ---------------------------------------------------------------------------------------
async def _serve(stream: LiveStream) -> tuple[LiveLogServer, str]:
    server = LiveLogServer("127.0.0.1", 0)
    await server.start()
    server.register(stream)
    return server, f"http://127.0.0.1:{server.port}/log/{stream.secret}"


async def test_bytes_still_in_the_write_buffer_are_served_and_memory_stays_bounded(tmp_path: Path) -> None:
    """The task log buffers 1 MiB before the file sees it: readers still get every byte, in order, while the
    in-memory tail never grows past its bound."""
    tasklog = TaskLog(tmp_path / "live_backing.log")
    tasklog.write(b"before the live log started\n")
    tasklog.flush()
    fd = os.open(tasklog.path, os.O_RDONLY)
    stream = LiveStream("s3cr3t-for-test", fd, tasklog.bytes_written, asyncio.get_running_loop())
    tasklog.add_sink(stream.append)
    server, url = await _serve(stream)
    try:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(read_all(session, url))
            # Small writes stay in the 1 MiB buffer: not on disk, yet readers must see them.
            tasklog.write(b"small\n")
            assert os.path.getsize(tasklog.path) < tasklog.bytes_written
            assert await stream.read(tasklog.bytes_written - 6) == b"small\n"
            peak = 0
            for i in range(3000):
                tasklog.write(f"{i:06d} ".encode() * (1 + i % 700) + b"\n")
                peak = max(peak, stream._tail_len)
                if i % 100 == 0:
                    await asyncio.sleep(0)
            second = asyncio.create_task(read_all(session, url))
            await asyncio.sleep(0.05)
            tasklog.close()
            stream.finish(tasklog.bytes_written)
            expected = tasklog.path.read_bytes()
            assert len(expected) > 3 * livelog.TAIL_KEEP
            assert await asyncio.wait_for(first, 30) == expected
            assert await asyncio.wait_for(second, 30) == expected
            # A reader of the finished log gets all of it, then EOF.
            assert await asyncio.wait_for(read_all(session, url), 30) == expected
    finally:
        await server.stop()
    assert peak <= livelog.TAIL_KEEP + livelog.TAIL_GATHER + 8000  # whole chunks go as soon as they can
    assert stream._tail_len == 0 and not stream._tail


async def test_finished_stream_is_dropped_and_shutdown_ends_readers(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"line\n")
    stream = LiveStream("abc", os.open(path, os.O_RDONLY), 5, asyncio.get_running_loop())
    server, url = await _serve(stream)
    try:
        async with aiohttp.ClientSession() as session:
            reader = asyncio.create_task(read_all(session, url))
            await asyncio.sleep(0.1)
            assert stream.readers == 1
            await server.stop()  # worker shutdown: open readers end
            assert await asyncio.wait_for(reader, 10) == b"line\n"
    finally:
        await server.stop()
    other = LiveStream("abc", os.open(path, os.O_RDONLY), 5, asyncio.get_running_loop())
    server, url = await _serve(other)
    try:
        server.unregister(other)
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 404
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("overrides", "bound", "host"),
    [
        ({}, "127.0.0.1", "127.0.0.1"),
        ({"publicIP": "203.0.113.7"}, "0.0.0.0", "203.0.113.7"),
        ({"publicIP": "2001:db8::1"}, "0.0.0.0", "[2001:db8::1]"),
        ({"livelogBindAddress": "10.1.2.3"}, "10.1.2.3", "10.1.2.3"),
        ({"livelogBindAddress": "0.0.0.0"}, "0.0.0.0", "127.0.0.1"),
    ],
)
def test_listen_address_and_url_host(harness: Harness, overrides: dict[str, Any], bound: str, host: str) -> None:
    from megalodon_core.plugins import PluginHost

    config = parse_config(harness.config("x", **overrides), PluginHost().config_fields())
    assert bind_address(config) == bound
    assert public_host(config, bound) == host


async def test_finished_streams_are_served_for_the_retention_then_dropped_by_one_timer(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's stream, once its log is closed (notified by the log, not polled), serves the whole log then
    EOF for FINISHED_RETENTION, then its URL is a 404; however many finish, one timer retires them all."""
    from types import SimpleNamespace

    from megalodon_core.plugins import PluginHost

    monkeypatch.setattr(livelog, "FINISHED_RETENTION", 1.0)
    config = parse_config(harness.config("x", livelogBindAddress="127.0.0.1"), PluginHost().config_fields())
    feature = livelog.LiveLogFeature(SimpleNamespace(config=config))  # type: ignore[arg-type]
    assert await feature.server.ensure_started()
    loop = asyncio.get_running_loop()
    try:
        urls = []
        for n in range(3):
            log = TaskLog(tmp_path / f"log-{n}")
            log.write(f"task {n}\n".encode())
            log.flush()
            stream = LiveStream(f"secret-{n}", os.open(log.path, os.O_RDONLY), 0, loop, path=log.path)
            feature.server.register(stream)

            def finished(stream: LiveStream = stream, log: TaskLog = log) -> None:  # as LiveLogTask does
                stream.finish(log.bytes_written)
                feature.retire(stream, loop)

            log.when_closed(finished)
            log.close()
            urls.append((f"{feature.base_url()}/log/{stream.secret}", f"task {n}\n".encode()))
        assert len(feature._retiring) == 3 and feature._retire_timer is not None
        async with aiohttp.ClientSession() as session:
            for url, content in urls:
                assert await read_all(session, url) == content
            async with asyncio.timeout(60):
                while feature._retiring:
                    await asyncio.sleep(0.05)
            for url, _ in urls:
                async with session.get(url) as resp:
                    assert resp.status == 404
        assert feature._retire_timer is None
    finally:
        await feature.shutdown()


def test_a_task_log_tells_who_asked_when_it_is_closed(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "log")
    calls: list[str] = []
    log.when_closed(lambda: calls.append("first"))
    log.when_closed(lambda: calls.append("second"))
    assert calls == []
    log.close()
    assert calls == ["first", "second"]
    log.close()
    assert calls == ["first", "second"], "told once"
    log.when_closed(lambda: calls.append("late"))
    assert calls == ["first", "second", "late"], "already closed: told at once"


async def test_the_tail_keeps_big_writes_uncopied_and_gathers_small_ones(tmp_path: Path) -> None:
    """A write of a pipe's worth is kept as it came (no copy of the tail per write); a task printing a byte
    at a time gets a few gathered chunks, not one per byte; every position reads back what was written."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # never read: everything asked for is in the tail
    stream = LiveStream("s3cr3t-for-test", fd, 0, asyncio.get_running_loop())
    try:
        big = bytes(range(256)) * 4096  # 1 MiB
        stream.append(big)
        assert stream._tail[0] is big
        for i in range(200_000):
            stream.append(b"%c" % (i % 256))
        assert len(stream._tail) <= 1 + 200_000 // livelog.TAIL_GATHER + 1
        assert await stream.read(5, 10) == big[5:15]
        assert await stream.read(len(big) + 1000, 3) == bytes([1000 % 256, 1001 % 256, 1002 % 256])
        assert stream.end == len(big) + 200_000
    finally:
        stream.close()


async def test_a_task_shorter_than_the_delay_gets_only_the_link_and_leaves_no_timer(harness: Harness) -> None:
    """The reference waits out REFERENCE_DELAY on a timer: a task that ends first cancels it, so no
    reference is created (two createArtifact calls: the backing log and the link) and nothing is left
    scheduled on the loop for the finished run."""
    before = harness.double.calls["createArtifact"]
    out = await harness.run({"command": [["true"]], "maxRunTime": 30})
    assert out.state == "completed", out.log
    assert harness.double.calls["createArtifact"] - before == 2
    assert out.artifacts[LIVE]["storageType"] == "link"
    loop = asyncio.get_running_loop()
    scheduled = getattr(loop, "_scheduled", [])
    assert not [h for h in scheduled if not h.cancelled() and "_begin_reference" in repr(h)]
