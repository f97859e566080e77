"""A run's process boundary: with a cgroup, process-group ids the run once recorded are never signalled.

A pgid is freed with the last member of its group and may then belong to an unrelated process; a long task
outlives many of its commands' groups, so killing by a stale group id could hit a neighbour.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

import pytest

from megalodon_core import cgroup as cgroups
from megalodon_native.process import TaskProcesses

pytestmark = pytest.mark.skipif(cgroups.host() is None, reason="needs root and a cgroup hierarchy at /sys/fs/cgroup")


class _Config:
    def extra(self, key: str, default: Any = None) -> Any:
        return default


async def _sleeper() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec("sleep", "300", start_new_session=True)


def _join(processes: TaskProcesses, pid: int) -> None:
    """Move ``pid`` into the run's cgroup: what a command's child does before exec, done from outside."""
    assert processes.cgroup is not None
    for fd in processes.cgroup.open_procs():
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_kill_leaves_a_recorded_group_id_alone_when_the_run_has_a_cgroup() -> None:
    processes = TaskProcesses(f"stale-{uuid.uuid4().hex[:10]}", 0, _Config())
    await processes.create()
    assert processes.cgroup is not None
    # An unrelated process group outside the run's cgroup, standing in for a reused group id.
    neighbour = await _sleeper()
    try:
        processes.started(os.getpgid(neighbour.pid))
        await processes.remove()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(neighbour.wait(), 0.5)  # a SIGKILL would have ended it by now
        assert neighbour.returncode is None, "a process outside the run was killed by a recorded group id"
    finally:
        await _stop(neighbour)


async def test_kill_still_kills_every_process_in_the_cgroup() -> None:
    processes = TaskProcesses(f"alive-{uuid.uuid4().hex[:10]}", 0, _Config())
    await processes.create()
    assert processes.cgroup is not None
    member = await _sleeper()
    try:
        _join(processes, member.pid)
        await processes.remove()
        await asyncio.wait_for(member.wait(), 30)
        assert member.returncode is not None
    finally:
        await _stop(member)


async def test_an_empty_cgroup_is_removed_when_the_commands_end() -> None:
    """The common end: nothing is left, so kill() removes the cgroup at once (the removal is the emptiness
    test) and remove() has nothing more to do."""
    processes = TaskProcesses(f"empty-{uuid.uuid4().hex[:10]}", 0, _Config())
    await processes.create()
    assert processes.cgroup is not None
    dirs = list(processes.cgroup.dirs)
    await processes.kill()
    assert not any(d.exists() for d in dirs)
    await processes.remove()


async def test_with_shells_the_cgroup_stays_until_cleanup_and_kill_still_kills() -> None:
    """An interactive shell may join the cgroup after the commands: kill() kills its members but keeps it."""
    processes = TaskProcesses(f"shells-{uuid.uuid4().hex[:10]}", 0, _Config(), shells=True)
    await processes.create()
    assert processes.cgroup is not None
    dirs = list(processes.cgroup.dirs)
    await processes.kill()
    assert all(d.is_dir() for d in dirs)
    member = await _sleeper()
    try:
        _join(processes, member.pid)
        await processes.kill()
        await asyncio.wait_for(member.wait(), 30)
        assert all(d.is_dir() for d in dirs)
        await processes.remove()
        assert not any(d.exists() for d in dirs)
    finally:
        await _stop(member)


async def test_a_busy_cgroup_is_killed_by_kill_and_removed_by_remove() -> None:
    processes = TaskProcesses(f"busy-{uuid.uuid4().hex[:10]}", 0, _Config())
    await processes.create()
    assert processes.cgroup is not None
    dirs = list(processes.cgroup.dirs)
    member = await _sleeper()
    try:
        _join(processes, member.pid)
        await processes.kill()
        await asyncio.wait_for(member.wait(), 30)
        await processes.remove()
        assert not any(d.exists() for d in dirs)
    finally:
        await _stop(member)
