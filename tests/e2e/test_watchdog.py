"""The watchdog: a claim loop without progress for ``watchdogTimeoutSecs`` exits 90, reported and logged."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import pytest

from megalodon_core.config import parse_config
from megalodon_core.double import Fault
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker
from megalodon_core.worker.exit_codes import EXIT_WATCHDOG

from ..helpers.runner import RecordingRunner


async def test_a_hanging_claim_work_trips_the_watchdog_exit_90(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="megalodon_core")
    worker_type = harness.worker_type()
    # Every claimWork hangs far beyond the double's 1 s long poll (bounded, so the double can shut down).
    harness.double.faults.add(Fault(method="claimWork", delay=4, times=-1))
    runner = RecordingRunner()
    config = harness.config(worker_type, watchdogTimeoutSecs=1, numberOfTasksToRun=0)
    worker = Worker(parse_config(config), PluginHost(), runner=runner)
    started = time.monotonic()
    assert await asyncio.wait_for(worker.run(), 30) == EXIT_WATCHDOG == 90
    assert time.monotonic() - started < 4, "the worker waited for the hanging call instead of giving up"
    [(title, reason)] = [(r.title, r.description) for r in runner.reports]
    assert title == "megalodon watchdog"
    assert "no progress for" in reason and "a claimWork call has been in flight for" in reason
    assert any(r.levelno == logging.ERROR and "watchdog: the claim loop made no progress" in r.getMessage()
               for r in caplog.records)  # fmt: skip


async def test_a_long_task_at_full_capacity_is_not_a_stall(harness: Harness) -> None:
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["sleep", "3"]], "maxRunTime": 30}, worker_type)
    runner = RecordingRunner()
    config = harness.config(worker_type, watchdogTimeoutSecs=1, numberOfTasksToRun=1)
    worker = Worker(parse_config(config), PluginHost(), runner=runner)
    assert await asyncio.wait_for(worker.run(), 60) == 0
    assert runner.reports == []
    assert harness.double.task_state(task_id)["runs"][0]["state"] == "completed"


async def test_the_watchdog_aborts_running_tasks_as_worker_shutdown(harness: Harness) -> None:
    """capacity 2, one task running, the loop's claimWork for the second slot hangs: the watchdog fires,
    the running task is resolved exception/worker-shutdown (its log uploaded), exit 90."""
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["sleep", "30"]], "maxRunTime": 60}, worker_type)
    runner = RecordingRunner()
    config = harness.config(worker_type, watchdogTimeoutSecs=2, numberOfTasksToRun=0, capacity=2)
    worker = Worker(parse_config(config), PluginHost(), runner=runner)
    harness.worker = worker
    run = asyncio.create_task(worker.run())
    await harness.wait_for_output(task_id, "sleep")  # claimed and started
    harness.double.faults.add(Fault(method="claimWork", delay=5, times=-1))
    assert await asyncio.wait_for(run, 40) == EXIT_WATCHDOG
    run0 = harness.double.task_state(task_id)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("exception", "worker-shutdown")
    assert harness.double.artifact_content(task_id, 0, "public/logs/live_backing.log")[0]


BLOCKED_LOOP = """
import asyncio, sys, time
from megalodon_core.worker.watchdog import Watchdog

async def main():
    async def expired(reason):
        print("the asyncio watchdog fired", flush=True)

    watchdog = Watchdog(0.5, waiting_on_tasks=lambda: True, on_expiry=expired)
    task = asyncio.create_task(watchdog.run())
    watchdog.start_backstop(0.5)
    await asyncio.sleep(2)  # well past timeout + grace, with the loop turning: no exit
    print("still alive while the loop turns", flush=True)
    time.sleep(60)  # a synchronous call that never returns: the loop stops turning
    print("not killed", flush=True)

asyncio.run(main())
"""


async def test_the_backstop_ends_a_process_whose_event_loop_is_blocked() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BLOCKED_LOOP, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == EXIT_WATCHDOG, err.decode()
    assert out.decode().splitlines() == ["still alive while the loop turns"]
    assert "the event loop has not turned for" in err.decode()
