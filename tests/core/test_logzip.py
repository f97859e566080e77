"""The backing log compressed while it is written (megalodon_core.logzip): the file's exact content."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from megalodon_core.tasklog import TaskLog
from megalodon_core.upload import _prepare_body, _take_body


def big_log(tmp_path: Path) -> TaskLog:
    log = TaskLog(tmp_path / "generic-worker" / "live_backing.log")
    log.add_secret("hunter2-secret")
    log.info("Task ID: x")
    for i in range(2500):
        # a secret split across two writes must still be masked in the compressed body
        log.write(b"line %d " % i + b"y" * 900 + (b" hunter2-" if i % 9 == 0 else b"\n"))
        if i % 9 == 0:
            log.write(b"secret\n")
    log.write(os.urandom(300_000))  # incompressible bytes too
    log.info("=== Task Finished ===")
    log.close()
    return log


def test_body_holds_the_files_content_with_the_uploaders_hash_and_size(tmp_path: Path) -> None:
    log = big_log(tmp_path)
    future = log.take_gzip_body()
    assert future is not None, "a log of several MiB is compressed while it is written"
    body = future.result(timeout=60)
    ref_path, ref_sha, ref_size, ref_body_size, _ = _prepare_body(log.path, "gzip")
    try:
        assert (body.sha256, body.size) == (ref_sha, ref_size)
        assert body.body_size == body.path.stat().st_size and ref_body_size > 0
        content = gzip.decompress(body.path.read_bytes())
        assert content == log.path.read_bytes()
        assert b"hunter2-secret" not in content and b"[REDACTED]" in content
        assert not body.path.is_relative_to(tmp_path), "never in the task directory"
    finally:
        body.discard()
        ref_path.unlink()
    assert log.take_gzip_body() is None, "taken once"


def test_small_log_has_no_body(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "live_backing.log")
    log.info("one line")
    log.close()
    assert log.take_gzip_body() is None


async def test_body_of_a_file_changed_behind_the_log_is_not_used(tmp_path: Path) -> None:
    log = big_log(tmp_path)
    future = log.take_gzip_body()
    assert future is not None
    body_path = future.result(timeout=60).path
    with log.path.open("ab") as fh:
        fh.write(b"written by something else after the log closed\n")
    assert await _take_body(future, log.path) is None, "the uploader compresses the file itself then"
    assert not body_path.exists(), "and the unused body is removed"


def test_a_log_moved_to_a_new_file_is_followed_there(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "live_backing.log")
    log.write(b"a" * (3 << 20))  # the shadow has started on the first file
    os.rename(log.path, tmp_path / "moved-away.log")
    log.reopen_at_path()  # the multiuser engine's move: the content is copied to a new file at the path
    log.write(b"b" * (2 << 20))
    log.close()
    future = log.take_gzip_body()
    assert future is not None
    body = future.result(timeout=60)
    try:
        assert gzip.decompress(body.path.read_bytes()) == log.path.read_bytes() == b"a" * (3 << 20) + b"b" * (2 << 20)
    finally:
        body.discard()


def test_the_follower_thread_runs_at_a_low_priority(tmp_path: Path) -> None:
    """The task and the loop reading its output come first on a busy host (issue 13)."""
    import threading
    import time

    from megalodon_core.logzip import NICE

    before = set(threading.enumerate())
    log = TaskLog(tmp_path / "generic-worker" / "live_backing.log")
    try:
        log.write(b"x" * (3 << 20))  # past a MiB: the follower starts
        (follower,) = [t for t in set(threading.enumerate()) - before if t.name == "megalodon-log-gzip"]
        deadline = time.monotonic() + 60
        while True:
            fields = Path(f"/proc/self/task/{follower.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[16]) == NICE or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert int(fields[16]) == NICE
    finally:
        log.close()
        body = log.take_gzip_body()
        if body is not None:
            body.result(timeout=60).discard()
