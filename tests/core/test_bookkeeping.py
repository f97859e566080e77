"""Claim bookkeeping: what the worker sees as unreported at exit is ordered after the end-of-task writes."""

from __future__ import annotations

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


async def test_a_small_task_directory_is_removed_before_claim_ended_returns(tmp_path: Path) -> None:
    books = ClaimBooks(tmp_path / "state")
    await books.open()
    record = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    task_dir = tmp_path / "tasks" / "task-a"
    await books.claim_started(record, task_dir, 0, ["task-a/0"])
    (task_dir / "generic-worker").mkdir()
    (task_dir / "generic-worker" / "live_backing.log").write_text("log")
    books.claim_ended("task-a", 0, task_dir, resolved=1, current=[], metadata="{}", clean=True)
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
