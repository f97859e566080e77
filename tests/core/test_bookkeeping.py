"""Claim bookkeeping: what the worker sees as unreported at exit is ordered after the end-of-task writes."""

from __future__ import annotations

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
