"""Task directories are recycled: an emptied one, exactly as the worker made it, becomes the next run's
directory by two renames instead of two ext4 removals and two creations (issue 13); anything else is removed
and made anew."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker, task_dirs
from megalodon_core.worker.small_tree import BUDGET
from megalodon_core.worker.task_dirs import LOG_DIR, LOG_NAME, SPARE_PREFIX, SPARES, TaskDirs, remove_leftover_spares


def _used(dirs: TaskDirs, task_dir: Path) -> None:
    """``task_dir`` made, then filled the way a run leaves it."""
    dirs.make(task_dir)
    (task_dir / LOG_DIR / LOG_NAME).write_text("log")
    (task_dir / "public").mkdir()
    (task_dir / "public" / "out.txt").write_text("artifact")
    (task_dir / "link").symlink_to("/etc/passwd")


def _spares(tasks: Path) -> list[Path]:
    return sorted(p for p in tasks.iterdir() if p.name.startswith(SPARE_PREFIX))


def test_an_emptied_directory_is_the_next_runs_directory(tmp_path: Path) -> None:
    dirs = TaskDirs()
    first, second = tmp_path / "task_a_0", tmp_path / "task_b_0"
    _used(dirs, first)
    inodes = (first.stat().st_ino, (first / LOG_DIR).stat().st_ino, (first / LOG_DIR / LOG_NAME).stat().st_ino)
    assert dirs.recycle(first)
    assert not first.exists() and len(_spares(tmp_path)) == 1
    dirs.make(second)
    log = second / LOG_DIR / LOG_NAME
    assert (second.stat().st_ino, (second / LOG_DIR).stat().st_ino, log.stat().st_ino) == inodes
    assert [p.name for p in second.iterdir()] == [LOG_DIR] and [p.name for p in (second / LOG_DIR).iterdir()] == [
        LOG_NAME
    ]
    assert log.read_bytes() == b""  # the previous run's log, emptied: the next log opens it, no inode made
    assert _spares(tmp_path) == []
    assert Path("/etc/passwd").exists()  # the link went, not what it named


def test_a_fresh_directory_is_made_when_there_is_no_spare(tmp_path: Path) -> None:
    dirs = TaskDirs()
    dirs.make(tmp_path / "tasks" / "task_a_0")
    assert [p.name for p in (tmp_path / "tasks" / "task_a_0").iterdir()] == [LOG_DIR]


@pytest.mark.parametrize("change", ["chmod", "xattr", "log-dir-chmod", "log-dir-link", "too-big"])
def test_a_directory_not_as_made_is_not_recycled(tmp_path: Path, change: str) -> None:
    """The next run gets a fresh directory: the caller removes this one as before."""
    dirs = TaskDirs()
    task_dir = tmp_path / "task_a_0"
    _used(dirs, task_dir)
    if change == "chmod":
        task_dir.chmod(0o777)
    elif change == "xattr":
        os.setxattr(task_dir, "user.megalodon-test", b"left by the task")
    elif change == "log-dir-chmod":
        (task_dir / LOG_DIR).chmod(0o700)
    elif change == "log-dir-link":
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep").write_text("not the task's")
        (task_dir / LOG_DIR / LOG_NAME).unlink()
        (task_dir / LOG_DIR).rmdir()
        (task_dir / LOG_DIR).symlink_to(outside)
    else:
        for i in range(BUDGET + 1):
            (task_dir / f"file-{i}").write_text("x")
    assert not dirs.recycle(task_dir)
    assert task_dir.exists() and _spares(tmp_path) == []
    if change == "log-dir-link":
        assert (tmp_path / "outside" / "keep").read_text() == "not the task's"
    dirs.make(tmp_path / "task_b_0")
    assert (tmp_path / "task_b_0").stat().st_ino != task_dir.stat().st_ino


@pytest.mark.parametrize("change", ["reader", "hard-link", "chmod", "xattr", "symlink", "fifo", "directory"])
def test_a_log_not_only_the_workers_is_not_reused(tmp_path: Path, change: str) -> None:
    """The directory is recycled, but the next run's log is a new file: the old one is left to whoever holds
    it (a live log reader streaming the finished log keeps reading its own bytes), and what a link names is
    never emptied."""
    dirs = TaskDirs()
    first, second = tmp_path / "task_a_0", tmp_path / "task_b_0"
    _used(dirs, first)
    log = first / LOG_DIR / LOG_NAME
    outside = tmp_path / "outside"
    outside.write_text("not the task's")
    reader = None
    if change == "reader":
        reader = os.open(log, os.O_RDONLY)
    elif change == "hard-link":
        os.link(log, tmp_path / "copy")
    elif change == "chmod":
        log.chmod(stat.S_IMODE(log.stat().st_mode) ^ 0o020)
    elif change == "xattr":
        os.setxattr(log, "user.megalodon-test", b"left by the task")
    elif change == "symlink":
        log.unlink()
        log.symlink_to(outside)
    elif change == "fifo":
        log.unlink()
        os.mkfifo(log)
    else:
        log.unlink()
        log.mkdir()
    old_inode = log.lstat().st_ino
    try:
        recycled = dirs.recycle(first)
        if change == "directory":  # not a file it can unlink: the caller removes the directory as before
            assert not recycled and first.exists() and _spares(tmp_path) == []
            return
        assert recycled
        dirs.make(second)
        assert list((second / LOG_DIR).iterdir()) == []
        if reader is not None:
            assert os.pread(reader, 100, 0) == b"log"
        if change == "hard-link":
            assert (tmp_path / "copy").read_text() == "log" and (tmp_path / "copy").stat().st_ino == old_inode
        assert outside.read_text() == "not the task's"
    finally:
        if reader is not None:
            os.close(reader)


def test_an_open_racing_the_emptying_is_refused_and_the_worker_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the log is emptied a write lease is held: an open coming then breaks it, and the kernel signals
    the holder.  The signal is one ignored by default (SIGIO, the default, would kill the worker)."""
    dirs = TaskDirs()
    _used(dirs, tmp_path / "task_a_0")
    raced: list[BaseException] = []
    truncate = os.ftruncate

    def racing_truncate(fd: int, length: int) -> None:
        try:
            os.close(os.open(_spares(tmp_path)[0] / LOG_DIR / LOG_NAME, os.O_RDONLY | os.O_NONBLOCK))
        except OSError as exc:
            raced.append(exc)
        truncate(fd, length)

    monkeypatch.setattr(task_dirs.os, "ftruncate", racing_truncate)
    assert dirs.recycle(tmp_path / "task_a_0")
    assert [type(exc) for exc in raced] == [BlockingIOError]  # the lease was held; this process is alive
    dirs.make(tmp_path / "task_b_0")
    assert (tmp_path / "task_b_0" / LOG_DIR / LOG_NAME).read_bytes() == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_given_to_another_user_is_not_recycled(tmp_path: Path) -> None:
    """The multiuser engine chowns the task directory to the task user: never handed to the next run."""
    dirs = TaskDirs()
    task_dir = tmp_path / "task_a_0"
    _used(dirs, task_dir)
    os.chown(task_dir, 65534, 65534)
    assert not dirs.recycle(task_dir)
    assert _spares(tmp_path) == []


def test_spares_are_bounded_and_discarded(tmp_path: Path) -> None:
    dirs = TaskDirs()
    made = [tmp_path / f"task_{i}_0" for i in range(SPARES + 2)]
    for task_dir in made:
        _used(dirs, task_dir)
    assert [dirs.recycle(task_dir) for task_dir in made] == [True] * SPARES + [False, False]
    assert len(_spares(tmp_path)) == SPARES
    dirs.discard()
    assert _spares(tmp_path) == []


def test_a_spare_that_vanished_is_replaced_by_a_fresh_directory(tmp_path: Path) -> None:
    dirs = TaskDirs()
    _used(dirs, tmp_path / "task_a_0")
    assert dirs.recycle(tmp_path / "task_a_0")
    (spare,) = _spares(tmp_path)
    remove_leftover_spares(tmp_path)  # another worker sharing tasksDir started
    assert not spare.exists()
    dirs.make(tmp_path / "task_b_0")
    assert [p.name for p in (tmp_path / "task_b_0").iterdir()] == [LOG_DIR]


def test_leftover_spares_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / f"{SPARE_PREFIX}1-0" / LOG_DIR).mkdir(parents=True)
    (tmp_path / f"{SPARE_PREFIX}note").write_text("a file of that name is nobody's spare")
    (tmp_path / "task_a_0").mkdir()
    remove_leftover_spares(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{SPARE_PREFIX}note", "task_a_0"]


async def test_a_worker_recycles_its_task_directories_and_leaves_none(harness: Harness) -> None:
    """Three tasks, one after the other: each starts in an empty directory holding only ``generic-worker/``
    (its listing is in its log) though each leaves a file behind, at least one directory is a recycled one,
    and the tasks directory is empty once the worker exits."""
    worker_type = harness.worker_type()
    payload = {"command": [["sh", "-c", "ls -A; stat -c inode=%i .; touch left-behind"]], "maxRunTime": 30}
    ids = [await harness.create(payload, worker_type) for _ in range(3)]
    config = harness.config(worker_type, numberOfTasksToRun=3, cleanUpTaskDirs=True)
    host = PluginHost()
    assert await asyncio.wait_for(Worker(parse_config(config, host.config_fields()), host).run(), 120) == 0
    inodes = set()
    for task_id in ids:
        outcome = await harness.outcome(task_id, 0)
        assert outcome.state == "completed", outcome.log
        lines = outcome.log.splitlines()
        assert [line for line in lines if line in (LOG_DIR, "left-behind")] == [LOG_DIR], outcome.log
        inodes.update(line for line in lines if line.startswith("inode="))
    assert len(inodes) < 3, "no task directory was recycled"
    assert list(Path(config["tasksDir"]).iterdir()) == []
