"""Resource monitor (for any executor that requests it): memory figures per command, abort before the OOM killer.

generic-worker's ``resource_monitor_feature.go`` and ``process.MonitorResources``: memory is sampled every
500 ms while the task runs; each command's result block gets four lines (average available, average used,
peak used, total) computed from the samples taken during that command; and when used memory stays above
``maxMemoryUsagePercent`` *and* available memory below ``minAvailableMemoryBytes`` for longer than
``allowedHighMemoryDurationSecs``, the task is aborted (failed) before the kernel's OOM killer picks a
victim at random, possibly the worker itself.  ``disableOOMProtection`` turns the abort into a warning.

The figures are gopsutil's ``VirtualMemory`` as generic-worker reads them on Linux: total = MemTotal,
available = MemAvailable, used = MemTotal - MemFree - Buffers - Cached - SReclaimable.  /proc/meminfo is
read in a worker thread so a slow procfs never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megalodon_core.contracts import Feature, TaskFeature
from megalodon_core.errors import ExecutionErrors, Failure
from megalodon_core.timefmt import go_duration

if TYPE_CHECKING:
    from megalodon_core.task import TaskRun

log = logging.getLogger(__name__)

#: generic-worker's sampling period.
INTERVAL = 0.5
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class MemorySample:
    total: int
    available: int
    used: int

    @property
    def used_percent(self) -> float:
        return self.used / self.total * 100.0 if self.total else 0.0


def parse_meminfo(text: str) -> MemorySample:
    """gopsutil's reading of /proc/meminfo (values are in kB)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    if "MemTotal" not in fields:
        raise ValueError("no MemTotal in /proc/meminfo")
    total = fields["MemTotal"]
    free = fields.get("MemFree", 0)
    cached = fields.get("Cached", 0) + fields.get("SReclaimable", 0)
    buffers = fields.get("Buffers", 0)
    # Kernels before 3.14 have no MemAvailable; gopsutil then estimates it the same way.
    available = fields.get("MemAvailable", free + buffers + cached)
    used = max(total - free - buffers - cached, 0)
    return MemorySample(total=total, available=available, used=used)


def read_meminfo(path: Path = MEMINFO) -> MemorySample:
    """Blocking: call in a thread."""
    return parse_meminfo(path.read_text())


def format_memory(size: float) -> str:
    """Go's ``process.FormatMemoryString``: ``%f B`` under 1 KiB, then two decimals in KiB, MiB or GiB."""
    if size < 1024:
        return f"{size:f} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.2f} KiB"
    if size < 1024 * 1024 * 1024:
        return f"{size / (1024 * 1024):.2f} MiB"
    return f"{size / (1024 * 1024 * 1024):.2f} GiB"


class ResourceMonitorFeature(Feature):
    """Config gate ``enableResourceMonitor``; requested by ``features.resourceMonitor`` (default true)."""

    name = "resourceMonitor"

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableResourceMonitor)

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return ResourceMonitorTask(run, read=read_meminfo)


class ResourceMonitorTask(TaskFeature):
    """Samples memory from start to stop; each result block reports the samples since the previous one."""

    def __init__(self, run: TaskRun, *, read: Any = read_meminfo, interval: float = INTERVAL) -> None:
        self.run = run
        self.read = read
        self.interval = interval
        config = run.worker.config
        self.max_percent = int(config.maxMemoryUsagePercent)
        self.min_available = int(config.minAvailableMemoryBytes)
        self.allowed_high = float(config.allowedHighMemoryDurationSecs)
        self.oom_protection = not config.disableOOMProtection
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset_window()
        self._high_since: float | None = None
        self._warned = False

    # -- per-command window --------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self.samples = 0
        self.sum_available = 0
        self.sum_used = 0
        self.peak_used = 0
        self.total = 0

    def rows(self) -> list[tuple[str, str]]:
        """The memory lines of one result block (none without a sample, as generic-worker); then reset."""
        if self.samples == 0 or self.total == 0:
            self._reset_window()
            return []
        rows = [
            ("Average Available System Memory", format_memory(self.sum_available // self.samples)),
            ("Average System Memory Used", format_memory(self.sum_used // self.samples)),
            ("Peak System Memory Used", format_memory(self.peak_used)),
            ("Total System Memory", format_memory(self.total)),
        ]
        self._reset_window()
        return rows

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.run.result_rows.append(self.rows)
        # The first sample is due after one interval: a timer until then, so a task shorter than that never
        # starts a sampler at all (issue 13).
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._start_sampling)

    def _start_sampling(self) -> None:
        self._timer = None
        if not self.run.aborted.is_set():
            self._task = asyncio.create_task(self._sample_loop(), name=f"resource-monitor-{self.run.task_id}")

    async def stop(self, errors: ExecutionErrors) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.rows in self.run.result_rows:
            self.run.result_rows.remove(self.rows)

    async def _sample_loop(self) -> None:
        """A sample now (one interval after start), then one per interval until the run is aborted."""
        failures = 0
        while not self.run.aborted.is_set():
            try:
                sample = await asyncio.to_thread(self.read)
            except (OSError, ValueError) as exc:
                # generic-worker skips samples it cannot take; say so once, not every 500 ms.
                failures += 1
                if failures == 1:
                    log.warning("resource monitor: cannot read memory figures: %s", exc)
            else:
                if self.observe(sample, time.monotonic()):
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.run.aborted.wait(), self.interval)

    def observe(self, sample: MemorySample, now: float) -> bool:
        """Record one sample; return True once the task has been aborted (monitoring ends there)."""
        self.samples += 1
        self.sum_available += sample.available
        self.sum_used += sample.used
        self.peak_used = max(self.peak_used, sample.used)
        if self.total == 0:
            self.total = sample.total
        if not (sample.used_percent > self.max_percent and sample.available < self.min_available):
            self._high_since = None
            self._warned = False
            return False
        if self._high_since is None:
            self._high_since = now
        if now - self._high_since <= self.allowed_high:
            return False
        message = (
            f"Memory usage above {self.max_percent}% and available memory less than "
            f"{format_memory(self.min_available)} persisted for over {go_duration(self.allowed_high)}!"
        )
        if not self.oom_protection:
            if not self._warned:
                self.run.log.warn(message)
                self.run.log.warn("OOM protections are disabled, continuing task...")
                self._warned = True
            return False
        self.run.log.warn(message)
        self.run.abort(
            Failure(
                f"task aborted due to sustained memory usage above {self.max_percent}% and available memory "
                f"less than {format_memory(self.min_available)}"
            )
        )
        return True
