"""The processes of one native task: its cgroup (the kill boundary and the memory limit) and its commands.

Commands run through the core's :func:`megalodon_core.process.run_command` (re-exported here).  What this
module adds is the per-run boundary: every command of a run starts inside the run's own cgroup
(:mod:`megalodon_core.cgroup`), so when the run ends :meth:`TaskProcesses.kill` finds every process the
task started however it detached (``setsid``, double fork, ``cd /``).  generic-worker leaves such daemons
running; see ``docs/compatibility.md``.

Hosts without usable cgroups (not root, no hierarchy mounted) fall back to killing each command's process
group, which a daemon that called ``setsid`` escapes; the worker log says so once.

The optional ``taskMemoryLimitMegabytes`` (off by default) is enforced by the same cgroup: the kernel kills
the task's processes when they exceed it, and :meth:`TaskProcesses.hit_memory_limit` tells the executor so
the task is resolved failed with a log line saying why, instead of the whole worker dying.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from megalodon_core import cgroup as cgroups
from megalodon_core.cgroup import CgroupError, TaskCgroup
from megalodon_core.errors import InternalError
from megalodon_core.process import (
    MEMORY_LIMIT_KEY,
    CommandResult,
    kill_group,
    memory_limit_bytes,
    memory_limit_message,
    run_command,
)

log = logging.getLogger(__name__)

_warned: list[bool] = []


class TaskProcesses:
    """One run's process boundary; ``cgroup`` is None on hosts without cgroups (process groups then)."""

    def __init__(self, task_id: str, run_id: int, config: Any, *, shells: bool = False) -> None:
        """``shells``: processes may still join the cgroup after :meth:`kill` (interactive shells do), so it
        stays until :meth:`remove`."""
        self.name = cgroups.task_cgroup_name(task_id, run_id)
        self.memory_limit = memory_limit_bytes(config)
        self.cgroup: TaskCgroup | None = None
        self.groups: set[int] = set()
        self._oom_seen = 0
        self._shells = shells
        #: The cgroup is gone already: :meth:`kill` found it empty and removed it.
        self._removed = False

    async def create(self) -> None:
        """Make the run's cgroup (with the memory limit when configured).

        On the loop, not in a thread: cgroupfs is kernel memory (mkdir and small writes, no disk), and a
        thread hop per step would cost more than the step on the critical path of every task (issue 13).
        """
        host = cgroups.host()
        if host is None:
            if self.memory_limit:
                raise InternalError(
                    f"config {MEMORY_LIMIT_KEY} is set but this host offers no usable cgroup hierarchy "
                    "(the worker must run as root with cgroups mounted at /sys/fs/cgroup)"
                )
            if not _warned:
                _warned.append(True)
                log.warning(
                    "no usable cgroups on this host: a task's processes are killed by process group, so daemons "
                    "that left their process group (setsid) may survive the task"
                )
            return
        try:
            self.cgroup = host.create(self.name, memory_limit=self.memory_limit)
        except CgroupError as exc:
            raise InternalError(f"could not create the task's cgroup: {exc}") from exc

    def started(self, pgid: int) -> None:
        self.groups.add(pgid)

    async def kill(self) -> None:
        """Kill every process the run started (cgroup), or at least its commands' process groups.

        With a cgroup the recorded process groups are left alone: every process of the run is in the cgroup,
        while a group id whose members are all gone may have been reused by an unrelated process meanwhile
        (the kernel frees a pgid with its last member), and a long task outlives many of them.
        """
        if self.cgroup is not None:
            try:
                if self._removed:
                    return
                if not self._shells:
                    # The common end: the commands left nothing.  An empty cgroup stays empty (only a member
                    # can fork into it) and the kernel removes only an empty one, so its removal is the test:
                    # no read of cgroup.procs, nothing to freeze or kill, no thread hop.
                    if self.cgroup.try_rmdir():
                        self._removed = True
                        return
                elif not self.cgroup.pids():
                    return
                await asyncio.to_thread(self.cgroup.kill)
                return
            except CgroupError as exc:
                log.error("task cgroup %s: %s; killing the commands' process groups instead", self.name, exc)
        for pgid in self.groups:
            kill_group(pgid)

    async def hit_memory_limit(self) -> bool:
        """Whether the kernel killed a process of the run for the memory limit since the last call."""
        if self.cgroup is None or not self.memory_limit:
            return False
        count = await asyncio.to_thread(self.cgroup.oom_kills)
        hit, self._oom_seen = count > self._oom_seen, count
        return hit

    async def remove(self) -> None:
        """Kill what is left and remove the cgroup: an empty one (the common case, its commands ended and
        :meth:`kill` ran after them) is removed at once, a busy one is killed and removed in a thread."""
        if self.cgroup is None:
            await self.kill()
            return
        if self._removed:
            return
        try:
            if not self.cgroup.try_rmdir():  # busy: something is left, or a killed process is being torn down
                await asyncio.to_thread(self.cgroup.remove)
        except CgroupError:
            await self.kill()  # logs why, and falls back to the commands' process groups


__all__ = [
    "MEMORY_LIMIT_KEY",
    "CommandResult",
    "TaskProcesses",
    "kill_group",
    "memory_limit_bytes",
    "memory_limit_message",
    "run_command",
]
