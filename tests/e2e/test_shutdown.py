"""Stopping promptly and cancellation (issue 12): SIGTERM abandons a claimWork long poll at once, also with
capacity > 1 after a task finished during the poll; a run cancelled through the queue is logged as cancelled
(not an error) and the worker goes on to the next task."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import PUBLIC_ARTIFACTS, TaskclusterDouble
from megalodon_core.testing import make_task

from ..helpers.procs import write_worker_config

MEGALODON = [sys.executable, "-m", "megalodon_core"]
#: The claimWork long poll of these tests: far longer than the exit they wait for.
LONG_POLL = 30.0
#: How long a stopping worker may take: generous for a loaded CI machine, far below LONG_POLL.
EXIT_BOUND = 10.0


class WorkerProcess:
    """``megalodon run`` (default log level) against a double, its stderr in a file."""

    def __init__(self, tmp_path: Path, double: TaskclusterDouble, worker_type: str, **extra: Any) -> None:
        self.config = write_worker_config(double, tmp_path, worker_type, **extra)
        self.stderr = tmp_path / "worker.stderr"
        self.tmp_path = tmp_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.stderr.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *MEGALODON, "run", "--config", str(self.config), cwd=self.tmp_path, stderr=err
            )

    @property
    def log(self) -> str:
        return self.stderr.read_text()

    async def wait(self, bound: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), bound)
        except TimeoutError:
            raise AssertionError(f"worker still running after {bound} s; its log:\n{self.log[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def long_poll_double() -> AsyncIterator[TaskclusterDouble]:
    async with TaskclusterDouble(
        claim_work_wait=LONG_POLL, resolver_interval=0.2, anonymous_scopes=PUBLIC_ARTIFACTS
    ) as double:
        yield double


async def until(predicate: Any, what: str, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("task_first", [False, True], ids=["idle", "after-a-task"])
async def test_sigterm_interrupts_the_claim_long_poll_at_capacity_two(
    long_poll_double: TaskclusterDouble, tmp_path: Path, task_first: bool
) -> None:
    """The bug: with capacity 2, a task finishing during the long poll woke the loop, which then waited for
    the whole poll — so a later SIGTERM waited for it too (19.8 s on the real queue)."""
    double = long_poll_double
    worker = WorkerProcess(tmp_path, double, "shutdown-poll", capacity=2)
    queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    task_id = taskcluster.slugId()
    if task_first:
        await queue.createTask(task_id, make_task({"command": [["true"]], "maxRunTime": 30}, "shutdown-poll"))
    await worker.start()
    try:
        if task_first:
            await until(lambda: double.task_state(task_id)["state"] == "completed", "the task to complete")
            # Its runner has finished (woken the loop) while the poll for the second slot goes on.
            await until(lambda: double.calls["claimWork"] >= 2, "the second claimWork")
        else:
            await until(lambda: double.calls["claimWork"] >= 1, "the first claimWork")
        await asyncio.sleep(0.5)  # inside the poll, well before its 30 s end
        assert worker.proc is not None
        polls = double.calls["claimWork"]
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait(EXIT_BOUND) == 72
        assert double.calls["claimWork"] == polls, "no new claim after SIGTERM"
        log = worker.log
        assert "stopping (SIGTERM)" in log
        assert "claimWork long poll abandoned" in log
        assert "worker exiting with code 72 (SIGTERM)" in log
    finally:
        worker.kill()


async def test_cancelled_runs_are_logged_as_cancelled_and_the_worker_moves_on(tmp_path: Path) -> None:
    """Two cancellations through the queue: one noticed at a reclaim (the run is stopped, nothing is
    reported), one the task outlives until its report (reportCompleted answers 409).  Both are "run was
    cancelled" at INFO/WARNING, never an ERROR, and the next task runs."""
    # Claims of 10 s: the first reclaim comes 5 s after the claim.
    async with TaskclusterDouble(
        claim_timeout=10.0, claim_work_wait=1.0, resolver_interval=0.2, anonymous_scopes=PUBLIC_ARTIFACTS
    ) as double:
        worker_type = "shutdown-cancel"
        worker = WorkerProcess(tmp_path, double, worker_type, numberOfTasksToRun=3)
        queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
        marker = tmp_path / "go-on"

        async def create(command: list[str]) -> str:
            task_id: str = taskcluster.slugId()
            await queue.createTask(task_id, make_task({"command": [command], "maxRunTime": 60}, worker_type))
            return task_id

        def running(task_id: str) -> bool:
            runs = double.task_state(task_id)["runs"]
            return bool(runs) and runs[0]["state"] == "running"

        await worker.start()
        try:
            noticed_at_reclaim = await create(["sleep", "60"])
            await until(lambda: running(noticed_at_reclaim), "the first task to run")
            await queue.cancelTask(noticed_at_reclaim)
            await until(lambda: "run was cancelled, or its claim was lost" in worker.log, "the reclaim's 409", 30)

            noticed_at_report = await create(["/bin/sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.05; done"])
            await until(lambda: running(noticed_at_report), "the second task to run")
            await queue.cancelTask(noticed_at_report)
            marker.touch()  # the task ends well before its first reclaim: the report learns of the cancellation

            after = await create(["true"])
            assert await worker.wait(60) == 0
        finally:
            worker.kill()
        log = worker.log
        for task_id in (noticed_at_reclaim, noticed_at_report):
            run = double.task_state(task_id)["runs"][0]
            assert (run["state"], run["reasonResolved"]) == ("exception", "canceled")
        assert double.task_state(after)["state"] == "completed"
        assert f"task {noticed_at_reclaim}/0: run was cancelled (the queue answered a reclaim with 409)" in log
        assert f"task {noticed_at_report}/0: run was cancelled (reportCompleted answered 409" in log
        assert " ERROR " not in log, log
