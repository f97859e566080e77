"""A run the queue holds resolved frees its capacity at once: the next claimWork goes out before the run's
resolution is logged and told to plugins and before its books (journal record, state files, directory) are
closed (issue 13: at capacity 1 that work sat between every report and the next claim).

The worker runs on an event loop of its own, in a thread, so that a plugin hook can hold it while the double,
on the test's loop, goes on answering.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path
from typing import Any

import pytest

import megalodon_core
from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker
from megalodon_core.worker.bookkeeping import ClaimBooks
from megalodon_core.worker.state_files import JOURNAL_DIR

from ..helpers.procs import wait_for


class _HoldFirstResolution:
    """Holds the worker's loop inside the first ``megalodon_task_resolved`` until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = threading.Event()
        self.resolved: list[tuple[str, str]] = []

    @megalodon_core.hookimpl
    def megalodon_task_resolved(self, task_id: str, state: str) -> None:
        self.resolved.append((task_id, state))
        if len(self.resolved) == 1:
            self.holding.set()
            self.release.wait(120)


async def test_the_next_claim_goes_out_before_a_resolved_run_is_told_and_its_books_closed(
    harness: Harness, tmp_path: Path
) -> None:
    worker_type = harness.worker_type()
    first = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    second = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    hold = _HoldFirstResolution()
    host = PluginHost(plugins=[hold])
    config: dict[str, Any] = harness.config(worker_type, numberOfTasksToRun=2, capacity=1)
    worker = Worker(parse_config(config, host.config_fields()), host)
    exit_code: list[int] = []
    thread = threading.Thread(target=lambda: exit_code.append(asyncio.run(worker.run())), daemon=True)
    claims_before = harness.double.calls["claimWork"]
    journal = Path(config["stateDir"]) / JOURNAL_DIR
    thread.start()
    try:
        await wait_for(hold.holding.is_set, 60)
        # The worker's loop is held in the first run's resolution hook, so whatever it sent before that hook
        # is all it sent: the second claimWork must be among it.
        await wait_for(lambda: harness.double.calls["claimWork"] >= claims_before + 2, 60)
        assert (journal / f"{first}-0.json").exists(), "the first run's books were closed before the next claim"
        assert (await harness.root.status(first))["status"]["state"] == "completed"
    finally:
        hold.release.set()
        await asyncio.to_thread(thread.join, 120)
    assert exit_code == [0]
    assert hold.resolved == [(first, "completed"), (second, "completed")]
    assert not any(journal.glob("*.json")), "every reported run's record is gone at exit"


async def test_a_run_whose_books_fail_after_its_report_stays_reported_and_counted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not reported a second time (exception/internal-error would only be refused, 409): the failure is
    logged, the run counts toward ``numberOfTasksToRun``, and its journal record is cleared at exit."""
    worker_type = harness.worker_type()
    first = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    second = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    real = ClaimBooks.claim_ended

    def claim_ended(self: ClaimBooks, task_id: str, *args: Any, **kwargs: Any) -> None:
        if task_id == first:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, task_id, *args, **kwargs)

    monkeypatch.setattr(ClaimBooks, "claim_ended", claim_ended)
    host = PluginHost()
    config = harness.config(worker_type, numberOfTasksToRun=2, capacity=1)
    worker = Worker(parse_config(config, host.config_fields()), host)
    assert await asyncio.wait_for(worker.run(), 120) == 0
    assert worker.resolved == 2
    for task_id in (first, second):
        runs = harness.double.task_state(task_id)["runs"]
        assert [(r["state"], r["reasonResolved"]) for r in runs] == [("completed", "completed")]
    assert f"task {first}/0: resolved, but what follows its report failed (OSError" in caplog.text
    assert harness.double.calls["reportException"] == 1  # the exit's recovery, answered 409: already resolved
    assert worker.books.journal.entries() == []
