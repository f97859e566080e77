"""What every executor must show when a task goes over ``taskMemoryLimitMegabytes``."""

from __future__ import annotations

from megalodon_core.testing import Harness


async def assert_hog_killed_and_next_task_ran(harness: Harness, hog: str, nice: str, limit_mb: int) -> None:
    """``hog`` (a task printing ``SURVIVED`` if it got its memory) failed with the log line naming the limit,
    and ``nice``, claimed by the same worker afterwards, completed (it echoes ``next one ran``)."""
    first = await harness.outcome(hog, 0)
    assert first.state == "failed", first.log
    assert "SURVIVED" not in first.log
    assert f"exceeded the worker's per-task memory limit of {limit_mb} MB (taskMemoryLimitMegabytes)" in first.log
    second = await harness.outcome(nice, 0)
    assert second.state == "completed", second.log
    assert "next one ran" in second.log
