"""Per-task cgroups: the v2 file protocol on a fake tree, the v1 path against this host's kernel, and the
core process helper running commands inside them."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from megalodon_core import cgroup as cgroups
from megalodon_core.cgroup import CgroupHost, TaskCgroup
from megalodon_core.process import CommandResult, run_command

from ..helpers.procs import alive, wait_gone

HOST = cgroups.detect()
needs_cgroups = pytest.mark.skipif(HOST is None, reason="needs root and a cgroup hierarchy at /sys/fs/cgroup")


async def _run_in(
    group: TaskCgroup,
    argv: list[str],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    abort: asyncio.Event | None = None,
) -> CommandResult:
    """``argv`` run in ``group`` by core's process helper, its output dropped (these tests watch processes)."""
    return await run_command(
        argv,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"} if env is None else env,
        output=lambda b: None,
        abort=asyncio.Event() if abort is None else abort,
        cgroup=group,
    )


# -- v2: the file protocol on a fake unified hierarchy ---------------------------------------------------------
def _fake_v2(root: Path) -> None:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")


def test_v2_detected_and_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    _fake_v2(root)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    host = cgroups.detect(root)
    assert host is not None and host.version == 2 and host.has_memory
    base = root / "megalodon"
    (base / "cgroup.subtree_control").parent.mkdir(exist_ok=True)
    (base / "cgroup.subtree_control").write_text("")
    group = host.create("task-abc-0", memory_limit=64 << 20)
    path = base / "task-abc-0"
    assert group.dirs == [path]
    # memory and pids delegated from the root to megalodon/ (what lets the task cgroup have memory.max)
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "memory.swap.max").read_text() == "0"
    # joining writes "0" (the writer itself) to cgroup.procs from the forked child
    (path / "cgroup.procs").write_text("")
    fds = group.open_procs()
    try:
        TaskCgroup.joiner(fds)()
    finally:
        for fd in fds:
            os.close(fd)
    assert (path / "cgroup.procs").read_text() == "0"
    # the kernel reports OOM kills in memory.events
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert group.oom_kills() == 1
    # kill: cgroup.kill first (Linux 5.14+), freeze, then read cgroup.procs until it is empty
    (path / "cgroup.procs").write_text("")
    assert group.kill() == 0
    assert (path / "cgroup.kill").read_text() == "1"
    assert (path / "cgroup.freeze").read_text() == "0"  # frozen while killed, thawed at the end
    assert host.existing("task-abc-0") is not None
    assert host.existing("task-other-0") is None


def test_v1_layout_on_fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for controller in ("freezer", "memory"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    host = cgroups.detect(tmp_path)
    assert host is not None and host.version == 1 and set(host.mounts) == {"freezer", "memory"}
    group = host.create("task-x-1", memory_limit=1 << 20)
    assert (tmp_path / "memory/megalodon/task-x-1/memory.limit_in_bytes").read_text() == str(1 << 20)
    (tmp_path / "memory/megalodon/task-x-1/memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    )
    assert group.oom_kills() == 3
    assert [d.parent.parent.name for d in group.dirs] == ["freezer", "memory"]
    # Without a limit there is nothing for the memory hierarchy to do: the freezer alone is the boundary.
    plain = host.create("task-y-1")
    assert [d.parent.parent.name for d in plain.dirs] == ["freezer"]
    assert not (tmp_path / "memory/megalodon/task-y-1").exists()
    assert plain.oom_kills() == 0


def test_no_cgroups_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_v2(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cgroups.detect(tmp_path) is None


def test_invalid_name_refused(tmp_path: Path) -> None:
    host = CgroupHost(2, tmp_path, {"unified": tmp_path})
    with pytest.raises(cgroups.CgroupError):
        host.create("../escape")


# -- the real kernel (v1 on the CI machines) -------------------------------------------------------------
@needs_cgroups
async def test_setsid_daemon_in_cgroup_is_killed(tmp_path: Path) -> None:
    assert HOST is not None
    group = await asyncio.to_thread(HOST.create, f"test-{os.getpid()}-daemon")
    pidfile = tmp_path / "daemon.pid"
    script = f"cd / && setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' < /dev/null > /dev/null 2>&1 &"
    try:
        result = await _run_in(group, ["/bin/sh", "-c", script], tmp_path)
        assert result.exit_code == 0
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline, "daemon never started"
            await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        assert alive(pid)
        assert pid in group.pids()  # setsid and cd / did not take it out of the cgroup
        await asyncio.to_thread(group.kill)
        assert await wait_gone(pid)
        assert group.pids() == []
    finally:
        await asyncio.to_thread(group.remove)
    assert HOST.existing(group.name) is None


@needs_cgroups
async def test_abort_kills_whole_cgroup(tmp_path: Path) -> None:
    assert HOST is not None
    group = await asyncio.to_thread(HOST.create, f"test-{os.getpid()}-abort")
    abort = asyncio.Event()
    pidfile = tmp_path / "child.pid"
    script = f"setsid sleep 300 & echo $! > {pidfile}; sleep 300"
    try:
        run = asyncio.create_task(_run_in(group, ["/bin/sh", "-c", script], tmp_path, abort=abort))
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        abort.set()
        result = await asyncio.wait_for(run, 30)
        assert result.aborted
        assert await wait_gone(int(pidfile.read_text()))
    finally:
        await asyncio.to_thread(group.remove)


@needs_cgroups
async def test_memory_limit_kills_and_is_reported(tmp_path: Path) -> None:
    assert HOST is not None
    if not HOST.has_memory:
        pytest.skip("no memory controller on this host")
    group = await asyncio.to_thread(HOST.create, f"test-{os.getpid()}-oom", memory_limit=32 << 20)
    try:
        assert await asyncio.to_thread(group.oom_kills) == 0
        hog = [sys.executable, "-c", "b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096])"]
        result = await _run_in(group, hog, tmp_path, env={})
        assert result.signalled == 9
        assert await asyncio.to_thread(group.oom_kills) >= 1
    finally:
        await asyncio.to_thread(group.remove)


@needs_cgroups
async def test_crash_recovery_kills_a_runs_cgroup(tmp_path: Path) -> None:
    assert HOST is not None
    task_id, run_id = f"RecoveryTest{os.getpid()}", 3
    group = await asyncio.to_thread(HOST.create, cgroups.task_cgroup_name(task_id, run_id))
    result = await _run_in(
        group, ["/bin/sh", "-c", "cd / && setsid sleep 300 < /dev/null > /dev/null 2>&1 &"], tmp_path
    )
    assert result.exit_code == 0
    deadline = time.monotonic() + 10
    while not group.pids():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    pids = group.pids()
    assert await asyncio.to_thread(cgroups.kill_task_cgroup, task_id, run_id) >= 1
    for pid in pids:
        assert await wait_gone(pid)
    assert HOST.existing(group.name) is None
