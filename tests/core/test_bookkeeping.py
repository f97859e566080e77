"""Claim bookkeeping: what the worker sees as unreported at exit is ordered after the end-of-task writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from megalodon_core.journal import ClaimJournal, ClaimRecord
from megalodon_core.worker.bookkeeping import ClaimBooks


async def test_a_claim_just_ended_is_not_unreported_at_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of a claim is handed to the bookkeeping thread without waiting; the exit-time check must not
    read the journal past it (it did, and re-reported a resolved run as worker-shutdown)."""
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


async def test_a_claim_that_ends_after_the_next_one_started_keeps_the_next_one_in_the_status_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start of a claim is written on the loop, the end of the previous one later on the bookkeeping
    thread (a big task directory to remove): the end's write must not put back the running tasks as they
    were when it was handed over, which dropped the new task from ``megalodon status``."""
    from megalodon_core.worker.state_files import read_resolved_count, running_task_ids

    state = tmp_path / "state"
    books = ClaimBooks(state)
    await books.open()
    first = ClaimRecord("task-a", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    await books.claim_started(first, tmp_path / "tasks" / "task-a", 0, ["task-a/0"])

    slow_remove = ClaimJournal.remove
    second_started = threading.Event()

    def remove_after_the_next_start(self: ClaimJournal, task_id: str, run_id: int) -> None:
        second_started.wait(60)  # the next claim starts meanwhile: the order is forced, no timing decides
        slow_remove(self, task_id, run_id)

    monkeypatch.setattr(ClaimJournal, "remove", remove_after_the_next_start)
    books.claim_ended("task-a", 0, tmp_path / "tasks" / "task-a", resolved=1, current=[], metadata=None, clean=False)
    second = ClaimRecord("task-b", 0, {"clientId": "c", "accessToken": "t"}, "2030-01-01T00:00:00.000Z", "")
    await books.claim_started(second, tmp_path / "tasks" / "task-b", 1, ["task-b/0"])
    second_started.set()
    assert [e.task_id for e in await books.unreported()] == ["task-b"]  # after the end of task-a ran
    assert running_task_ids(state) == ["task-b/0"]
    assert read_resolved_count(state) == 1
    await books.close(1, [])
