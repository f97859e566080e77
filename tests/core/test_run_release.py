"""A finished run is freed by reference counting alone: no part of it is a reference cycle left to the
garbage collector (issue 13: every trivial task used to leave ~85 objects in cycles, and the collector
walked them at a cost of ~0.07 ms per task)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import megalodon_core
from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.task import TaskRun
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker


class _KeepWeakly:
    def __init__(self) -> None:
        self.runs: list[weakref.ref[TaskRun]] = []

    @megalodon_core.hookimpl
    def megalodon_task_resolved(self, run: TaskRun | None) -> None:
        if run is not None:
            self.runs.append(weakref.ref(run))


@pytest.mark.parametrize("interactive", [False, True], ids=["plain", "interactive"])
async def test_a_finished_run_is_freed_without_the_garbage_collector(harness: Harness, interactive: bool) -> None:
    worker_type = harness.worker_type()
    payload = {"command": [["true"]], "maxRunTime": 30, "features": {"interactive": interactive}}
    await harness.create(payload, worker_type)
    keep = _KeepWeakly()
    host = PluginHost(plugins=[keep])
    worker = Worker(parse_config(harness.config(worker_type, numberOfTasksToRun=1), host.config_fields()), host)
    gc.collect()
    gc.disable()
    try:
        assert await asyncio.wait_for(worker.run(), 120) == 0
        assert len(keep.runs) == 1
        run = keep.runs[0]()
        assert run is None, f"the finished run is still referenced by {[type(r) for r in gc.get_referrers(run)]}"
    finally:
        gc.enable()
