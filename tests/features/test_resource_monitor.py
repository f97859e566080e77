"""Resource monitor: generic-worker's memory lines in each result block, and the high-memory abort."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from megalodon_core.testing import Harness
from megalodon_features.resource_monitor import (
    MemorySample,
    ResourceMonitorTask,
    format_memory,
    parse_meminfo,
    read_meminfo,
)

LABELS = [
    "Average Available System Memory",
    "Average System Memory Used",
    "Peak System Memory Used",
    "Total System Memory",
]
PREFIX = re.compile(r"^\[taskcluster[^\]]*\] ")
#: Thresholds every machine exceeds: used% > 0 and available < 1 EiB, for over 1 s.
ALWAYS_HIGH: dict[str, Any] = {
    "maxMemoryUsagePercent": 0,
    "minAvailableMemoryBytes": 1 << 60,
    "allowedHighMemoryDurationSecs": 1,
}


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def result_block(log: str, command: int) -> list[str]:
    """The result block lines (log prefixes removed) that follow ``Executing command <n>``."""
    lines = [PREFIX.sub("", line) for line in log.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Executing command {command}:"))
    first = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("Exit Code:"))
    last = next(i for i in range(first, len(lines)) if lines[i].strip().startswith("Result:"))
    return lines[first : last + 1]


# -- unit: the figures ---------------------------------------------------------------------------------------
def test_format_memory_is_gos_format_memory_string() -> None:
    assert format_memory(512) == "512.000000 B"
    assert format_memory(1024) == "1.00 KiB"
    assert format_memory(1536) == "1.50 KiB"
    assert format_memory(500 * 1024 * 1024) == "500.00 MiB"
    assert format_memory(3 * 1024**3 + 1024**3 // 4) == "3.25 GiB"
    assert format_memory(1 << 60) == "1073741824.00 GiB"


def test_meminfo_is_read_as_gopsutil_does() -> None:
    sample = parse_meminfo(
        "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     600 kB\n"
        "Buffers:           50 kB\nCached:           200 kB\nSwapCached:         0 kB\nSReclaimable:      25 kB\n"
    )
    assert sample == MemorySample(total=1000 * 1024, available=600 * 1024, used=(1000 - 100 - 50 - 200 - 25) * 1024)
    assert sample.used_percent == 62.5
    real = read_meminfo()
    assert real.total > 0 and 0 < real.available <= real.total and real.used <= real.total


def test_each_result_block_reports_only_its_own_samples() -> None:
    config = SimpleNamespace(
        maxMemoryUsagePercent=90, minAvailableMemoryBytes=0, allowedHighMemoryDurationSecs=5, disableOOMProtection=False
    )
    run: Any = SimpleNamespace(worker=SimpleNamespace(config=config), task_id="t", result_rows=[])
    monitor = ResourceMonitorTask(run)
    assert monitor.rows() == []  # no sample yet: no memory lines, as generic-worker
    gib = 1024**3
    monitor.observe(MemorySample(total=8 * gib, available=6 * gib, used=2 * gib), 0.0)
    monitor.observe(MemorySample(total=8 * gib, available=4 * gib, used=4 * gib), 0.5)
    assert monitor.rows() == [
        ("Average Available System Memory", "5.00 GiB"),
        ("Average System Memory Used", "3.00 GiB"),
        ("Peak System Memory Used", "4.00 GiB"),
        ("Total System Memory", "8.00 GiB"),
    ]
    monitor.observe(MemorySample(total=8 * gib, available=7 * gib, used=1 * gib), 1.0)
    assert monitor.rows()[2] == ("Peak System Memory Used", "1.00 GiB")


# -- end to end ----------------------------------------------------------------------------------------------
async def test_memory_lines_appear_between_wall_time_and_result(harness: Harness) -> None:
    out = await harness.run({"command": [sh("sleep 1.2"), sh("sleep 0.7")], "maxRunTime": 30})
    assert out.state == "completed", out.log
    for command in (0, 1):
        block = result_block(out.log, command)
        labels = [line.split(":", 1)[0].strip() for line in block]
        assert labels == ["Exit Code", "User Time", "Kernel Time", "Wall Time", *LABELS, "Result"], block
        for line in block[4:8]:
            assert re.fullmatch(r" *[A-Za-z ]+: \d+\.\d\d (KiB|MiB|GiB)", line), line
        # right-aligned like generic-worker: every colon in the same column
        assert len({line.index(":") for line in block}) == 1, block


async def test_no_memory_lines_when_not_requested_or_disabled(harness: Harness) -> None:
    payload = {"command": [sh("sleep 1.2")], "maxRunTime": 30, "features": {"resourceMonitor": False}}
    out = await harness.run(payload)
    assert out.state == "completed", out.log
    assert "Exit Code" in out.log and "System Memory" not in out.log
    out = await harness.run({"command": [sh("sleep 1.2")], "maxRunTime": 30}, enableResourceMonitor=False)
    assert out.state == "completed", out.log
    assert "Exit Code" in out.log and "System Memory" not in out.log


async def test_sustained_high_memory_aborts_the_task_as_failed(harness: Harness) -> None:
    out = await harness.run(
        {"command": [sh("echo started; sleep 30; echo NOT-REACHED")], "maxRunTime": 60}, **ALWAYS_HIGH
    )
    assert (out.state, out.reason) == ("failed", "failed"), out.log
    assert "\nNOT-REACHED" not in out.log
    assert "Memory usage above 0% and available memory less than 1073741824.00 GiB persisted for over 1s!" in out.log
    assert (
        "[taskcluster:error] task aborted due to sustained memory usage above 0% and available memory less than "
        "1073741824.00 GiB" in out.log
    )
    lines = [PREFIX.sub("", line) for line in out.log.splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith("Command ABORTED after "))
    assert re.fullmatch(r"Command ABORTED after [0-9.]+m?s: process aborted", lines[at]), lines[at]
    assert [line.split(":", 1)[0].strip() for line in lines[at + 1 : at + 5]] == LABELS


async def test_disable_oom_protection_only_warns(harness: Harness) -> None:
    out = await harness.run(
        {"command": [sh("sleep 2.6; echo FINISHED")], "maxRunTime": 30}, disableOOMProtection=True, **ALWAYS_HIGH
    )
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "FINISHED" in out.log
    assert out.log.count("persisted for over 1s!") == 1
    assert out.log.count("[taskcluster:warn ") >= 2
    assert "OOM protections are disabled, continuing task..." in out.log
    assert "task aborted due to sustained memory usage" not in out.log
