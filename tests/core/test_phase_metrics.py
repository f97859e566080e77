"""Phase metrics: after three tasks on the double, each phase histogram has three plausible samples,
scraped from ``/metrics`` over HTTP like Prometheus does."""

from __future__ import annotations

import asyncio

from megalodon_core.phases import Phases
from megalodon_core.testing import PROVISIONER, Harness

from ..helpers.metrics import scrape, scraped_worker

BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
#: Each task waits at least this long in the queue before the worker starts: a floor for pending time.
QUEUED_FOR = 0.3


async def test_three_native_tasks_give_each_phase_three_samples(harness: Harness) -> None:
    worker_type = harness.worker_type()
    pool = {"taskQueueId": f"{PROVISIONER}/{worker_type}"}
    mounts = [{"directory": "cache", "cacheName": "phases"}]
    for _ in range(3):
        await harness.create(
            {"command": [["/bin/sh", "-c", "sleep 0.2; date >> cache/runs"]], "maxRunTime": 30, "mounts": mounts},
            worker_type,
            scopes=["generic-worker:cache:phases"],
        )
    await asyncio.sleep(QUEUED_FOR)
    async with scraped_worker(harness, worker_type, numberOfTasksToRun=3, executor="native") as (worker, url):
        assert await asyncio.wait_for(worker.run(), 120) == 0
        m = await scrape(url)
    name = "megalodon_task_phase_seconds"
    for phase in ("setup", "mounts", "command", "artifact_upload", "resolution"):
        assert m.count(name, phase=phase, **pool) == 3, phase
        assert 0 < m.total(name, phase=phase, **pool) < 60, phase
    assert m.count("megalodon_task_pending_seconds", **pool) == 3
    assert m.below("megalodon_task_pending_seconds", "0.25", **pool) == 0, "a task waited less than it did"
    assert m.below(name, "0.1", phase="command", **pool) == 0, "a command ran faster than its sleep"
    assert m.count("megalodon_claim_to_first_command_seconds", **pool) == 3
    # The claim-to-first-command latency holds the setup, and the setup holds the mounts.
    assert m.total("megalodon_claim_to_first_command_seconds", **pool) >= m.total(name, phase="setup", **pool)
    assert m.total(name, phase="setup", **pool) >= m.total(name, phase="mounts", **pool)
    # One cache: created by the first task, found by the next two.
    assert m.value("megalodon_cache_lookups_total", result="miss", **pool) == 1
    assert m.value("megalodon_cache_lookups_total", result="hit", **pool) == 2
    assert m.value("megalodon_free_capacity", **pool) == 1
    assert not any(s.name == f"{name}_count" and s.labels.get("phase") == "image_pull" for s in m.samples)
    assert not any("taskId" in s.labels for s in m.samples), "task ids must never be labels"


async def test_three_docker_tasks_give_the_image_pull_phase_three_samples(harness: Harness) -> None:
    worker_type = harness.worker_type()
    pool = {"taskQueueId": f"{PROVISIONER}/{worker_type}"}
    for _ in range(3):
        await harness.create(
            {"image": BUSYBOX_IMAGE, "command": ["/bin/sh", "-c", "date >> /c/runs"], "maxRunTime": 60,
             "cache": {"phases-docker": "/c"}},
            worker_type,
            scopes=["docker-worker:cache:phases-docker"],
        )  # fmt: skip
    async with scraped_worker(harness, worker_type, numberOfTasksToRun=3, executor="docker") as (worker, url):
        assert await asyncio.wait_for(worker.run(), 180) == 0
        m = await scrape(url)
    name = "megalodon_task_phase_seconds"
    for phase in ("setup", "image_pull", "command", "artifact_upload", "resolution"):
        assert m.count(name, phase=phase, **pool) == 3, phase
        assert 0 < m.total(name, phase=phase, **pool) < 120, phase
    assert m.total(name, phase="setup", **pool) >= m.total(name, phase="image_pull", **pool)
    assert m.value("megalodon_cache_lookups_total", result="miss", **pool) == 1
    assert m.value("megalodon_cache_lookups_total", result="hit", **pool) == 2


def test_phases_add_up_and_pending_comes_from_the_claim() -> None:
    now = [10.0]
    phases = Phases(clock=lambda: now[0])
    claim = {
        "runId": 1,
        "status": {
            "runs": [
                {"scheduled": "2026-01-01T00:00:00.000Z", "started": "2026-01-01T00:00:01.000Z"},
                {"scheduled": "2026-01-01T00:00:02.000Z", "started": "2026-01-01T00:00:04.500Z"},
            ]
        },
    }
    phases.claimed(claim, at=now[0])
    assert phases.pending == 2.5  # run 1's, not run 0's
    for step in (1.0, 2.0):
        with phases.phase("mounts"):
            now[0] += step
    with phases.phase("command"):
        now[0] += 4.0
    assert phases.durations == {"mounts": 3.0, "command": 4.0}
    assert phases.claim_to_first_command == 3.0
    unknown = Phases()
    unknown.claimed({"runId": 0, "status": {}}, at=0.0)  # no timestamps: pending is unknown, never invented
    assert unknown.pending is None and unknown.claim_to_first_command is None
