"""Claim bookkeeping: what the worker sees as unreported at exit is ordered after the end-of-task writes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from megalodon_core.journal import ClaimJournal, ClaimRecord
from megalodon_core.worker.bookkeeping import ClaimBooks


async def test_a_claim_just_ended_is_not_unreported_at_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit-time check must not see a claim that just ended as unreported (it did, when the end was
    written by a thread, and re-reported a resolved run as worker-shutdown)."""
    books = ClaimBooks(tmp_path / "state")
    await books.open()
    record = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    task_dir = tmp_path / "tasks" / "task-a"
    await books.claim_started(record, task_dir, 0, ["task-a/0"])
    assert [e.task_id for e in books.journal.entries()] == ["task-a"]

    slow_remove = ClaimJournal.remove

    def remove_on_a_slow_disk(self: ClaimJournal, task_id: str, run_id: int) -> None:
        time.sleep(0.5)
        slow_remove(self, task_id, run_id)

    monkeypatch.setattr(ClaimJournal, "remove", remove_on_a_slow_disk)
    books.claim_ended("task-a", 0, task_dir, resolved=1, current=[], metadata=None, clean=False)
    assert await books.unreported() == []
    await books.close(1, [])


async def test_a_big_task_directory_is_removed_by_the_thread_while_the_next_claim_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task directory over the loop's budget is removed by the bookkeeping thread: the next claim starts
    meanwhile and the status file shows it; the worker's exit waits for the removal."""
    from megalodon_core.worker import bookkeeping
    from megalodon_core.worker.small_tree import BUDGET
    from megalodon_core.worker.state_files import read_resolved_count, running_task_ids

    state = tmp_path / "state"
    books = ClaimBooks(state)
    await books.open()
    first = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    big = tmp_path / "tasks" / "task-a"
    await books.claim_started(first, big, 0, ["task-a/0"])
    for i in range(BUDGET + 10):
        (big / f"file-{i}").write_text("x")

    real_rmtree = bookkeeping.shutil.rmtree
    second_started = threading.Event()
    removed_on: list[str] = []

    def rmtree_after_the_next_start(path: Path, ignore_errors: bool = False) -> None:
        second_started.wait(60)  # the next claim starts meanwhile: the order is forced, no timing decides
        removed_on.append(threading.current_thread().name)
        real_rmtree(path, ignore_errors)

    monkeypatch.setattr(bookkeeping.shutil, "rmtree", rmtree_after_the_next_start)
    books.claim_ended("task-a", 0, big, resolved=1, current=[], metadata=None, clean=True)
    await asyncio.sleep(0)  # the loop's next turn hands the removal to the thread
    second = ClaimRecord("task-b", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    await books.claim_started(second, tmp_path / "tasks" / "task-b", 1, ["task-b/0"])
    assert running_task_ids(state) == ["task-b/0"]
    assert read_resolved_count(state) == 1
    second_started.set()
    assert [e.task_id for e in await books.unreported()] == ["task-b"]  # read on the thread, after the removal
    assert not big.exists()
    await books.close(1, [])
    assert not big.exists()
    assert removed_on and removed_on[0].startswith("megalodon-books")


async def test_a_small_task_directory_is_removed_on_the_loop_at_its_next_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not before claim_ended returns (the next claimWork goes out first, the removal fills its wait), and
    not in a thread (the directory is recycled then: see test_task_dirs.py)."""
    from megalodon_core.worker import bookkeeping

    monkeypatch.setattr(bookkeeping.shutil, "rmtree", None)  # the thread's remover is never needed
    books = ClaimBooks(tmp_path / "state")
    await books.open()
    record = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    task_dir = tmp_path / "tasks" / "task-a"
    await books.claim_started(record, task_dir, 0, ["task-a/0"])
    (task_dir / "generic-worker" / "live_backing.log").write_text("log")
    books.claim_ended("task-a", 0, task_dir, resolved=1, current=[], metadata="{}", clean=True)
    assert task_dir.exists()
    await asyncio.sleep(0)
    assert not task_dir.exists()
    assert books.journal.entries() == []
    await books.close(1, [])


async def test_the_journal_holding_credentials_is_private(tmp_path: Path) -> None:
    import stat

    books = ClaimBooks(tmp_path / "state")
    await books.open()
    record = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "secret"}, "2030-01-01T00:00:00.000Z", "")
    await books.claim_started(record, tmp_path / "tasks" / "task-a", 0, ["task-a/0"])
    journal_dir = tmp_path / "state" / "megalodon-claims"
    files = list(journal_dir.iterdir())
    assert [f.name for f in files] == ["task-a-0.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(journal_dir.stat().st_mode) == 0o700
    assert books.journal.entries()[0].credentials["accessToken"] == "secret"
    await books.close(0, [])


def test_a_removed_record_is_emptied_and_its_file_serves_the_next_claim(tmp_path: Path) -> None:
    """The journal frees no inode per claim: a removed record is renamed aside and emptied (the credentials
    it held are gone), and the next record is written into that file, 0600, then renamed into place."""
    journal = ClaimJournal(tmp_path / "claims")
    first = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "secret-a"}, "2030-01-01T00:00:00.000Z", "")
    journal.record(first)
    inode = (tmp_path / "claims" / "task-a-0.json").stat().st_ino
    journal.remove("task-a", 0)
    assert journal.entries() == []
    (freed,) = [p for p in (tmp_path / "claims").iterdir()]
    assert freed.name.startswith(".") and freed.stat().st_size == 0, "the credentials were left in the file"
    second = ClaimRecord("task-b", 2, {"clientId": "c", "accessToken": "secret-b"}, "2030-01-01T00:00:00.000Z", "")
    journal.record(second)
    path = tmp_path / "claims" / "task-b-2.json"
    assert path.stat().st_ino == inode and path.stat().st_mode & 0o777 == 0o600
    assert journal.entries() == [second] and sorted(p.name for p in (tmp_path / "claims").iterdir()) == [path.name]
    # A shorter record into a longer one's file leaves none of the longer one's bytes behind.
    journal.remove("task-b", 2)
    short = ClaimRecord("t", 0, {}, "", "")
    journal.record(short)
    assert journal.entries() == [short]


def test_a_new_journal_removes_the_emptied_files_of_a_previous_process(tmp_path: Path) -> None:
    journal = ClaimJournal(tmp_path / "claims")
    journal.record(ClaimRecord("task-a", 0, {"accessToken": "t"}, "", ""))
    journal.remove("task-a", 0)
    (tmp_path / "claims" / ".claim-torn").write_text("{")  # a temporary file a kill left behind
    ClaimJournal(tmp_path / "claims")
    assert list((tmp_path / "claims").iterdir()) == []


async def test_the_status_file_is_gone_while_idle_and_its_inode_serves_the_next_claim(tmp_path: Path) -> None:
    """generic-worker removes worker-status.json when no task runs; megalodon renames it aside instead, and
    writes the next claim's ids there before renaming it back: the same file, never a fresh inode."""
    from megalodon_core.worker.state_files import STATUS_FILE, running_task_ids

    state = tmp_path / "state"
    books = ClaimBooks(state)
    await books.open()
    inodes = []
    for n in range(3):
        record = ClaimRecord(f"task-{n}", 0, {"accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
        task_dir = tmp_path / "tasks" / f"task-{n}"
        await books.claim_started(record, task_dir, n, [f"task-{n}/0"])
        assert running_task_ids(state) == [f"task-{n}/0"]
        assert (state / STATUS_FILE).stat().st_mode & 0o777 == 0o600
        inodes.append((state / STATUS_FILE).stat().st_ino)
        books.claim_ended(f"task-{n}", 0, task_dir, resolved=n + 1, current=[], metadata=None, clean=True)
        assert not (state / STATUS_FILE).exists() and running_task_ids(state) == []
    assert len(set(inodes)) == 1
    await books.close(3, [])


def test_a_record_file_holds_the_records_fields_as_json(tmp_path: Path) -> None:
    """Written from the record's own fields (no deep copy): the same document ``asdict`` gives."""
    import json
    from dataclasses import asdict

    journal = ClaimJournal(tmp_path / "claims")
    record = ClaimRecord("task-a", 3, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "/tasks/a")
    journal.record(record)
    assert json.loads((tmp_path / "claims" / "task-a-3.json").read_text()) == asdict(record)
    assert journal.entries() == [record]


def test_overwrite_leaves_exactly_the_new_bytes_whatever_was_there(tmp_path: Path) -> None:
    """Cut only when the file was longer (a truncate that changes nothing still rewrites the inode): the
    bytes are the new ones in every case, with the size given or looked up."""
    import os

    from megalodon_core.journal import overwrite

    path = tmp_path / "f"
    for before, after, given in [
        (b"a longer old text", b"new", False),
        (b"a longer old text", b"new", True),
        (b"ab", b"abcdef", False),
        (b"same", b"SAME", True),
        (b"", b"fresh", True),
    ]:
        path.write_bytes(before)
        fd = os.open(path, os.O_WRONLY)
        try:
            overwrite(fd, after, size=len(before) if given else None)
        finally:
            os.close(fd)
        assert path.read_bytes() == after


def test_a_state_file_someone_opened_up_is_made_private_again(tmp_path: Path) -> None:
    import stat

    from megalodon_core.worker.state_files import write_private

    path = tmp_path / "worker-status.json"
    path.write_text("{}")
    path.chmod(0o644)
    write_private(path, '{"currentTaskIds": []}\n')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == '{"currentTaskIds": []}\n'
