"""Task cgroups left by a worker killed without a later recovery run are removed when a worker starts.

Each task cgroup carries an owner marker (the creating worker's pid and start time, kept in the owners
directory because cgroupfs holds no regular files); a starting worker removes the empty
``megalodon/task-<digest>`` cgroups no live process owns, and nothing else.  The v2 layout is checked on a
fake tree in a temporary directory, the v1 path against this host's kernel (under a base of the test's own,
so the sweep cannot reach the cgroups of workers other tests run at the same time).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from megalodon_core import cgroup as cgroups
from megalodon_core.cgroup import CgroupHost, task_cgroup_name
from megalodon_core.owner import owner_marker, process_start_time
from megalodon_native.executor import NativeExecutor

HOST = cgroups.detect()
needs_cgroups = pytest.mark.skipif(HOST is None, reason="needs root and a cgroup hierarchy at /sys/fs/cgroup")


def _dead_marker() -> str:
    """The marker of a worker process that has exited."""
    proc = subprocess.Popen(["true"])
    marker = owner_marker(proc.pid)
    proc.wait()
    return marker


def _fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CgroupHost:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    host = cgroups.detect(root, owners=tmp_path / "owners")
    assert host is not None and host.version == 2
    return host


def test_create_writes_the_owner_marker_and_removal_drops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _fake_v2(tmp_path, monkeypatch)
    name = task_cgroup_name("T", 0)
    group = host.create(name)
    marker = (tmp_path / "owners" / name).read_text()
    assert marker == f"megalodon pid {os.getpid()} started {process_start_time(os.getpid())}"
    assert group.try_rmdir()
    assert not (tmp_path / "owners" / name).exists()


def test_a_finished_cgroups_marker_is_the_next_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker of a removed cgroup is renamed aside (a spare, this process's marker still) and renamed into
    place for the next cgroup: the same file, no file made or unlinked per task."""
    host = _fake_v2(tmp_path, monkeypatch)
    owners = tmp_path / "owners"
    first = host.create(task_cgroup_name("T", 0))
    inode = (owners / first.name).stat().st_ino
    assert first.try_rmdir()
    spares = [p.name for p in owners.iterdir()]
    assert len(spares) == 1 and spares[0].startswith(cgroups.SPARE_MARKER_PREFIX)
    second = host.create(task_cgroup_name("T", 1))
    assert [p.name for p in owners.iterdir()] == [second.name]
    assert (owners / second.name).stat().st_ino == inode
    assert (owners / second.name).read_text() == owner_marker()


def test_a_marker_this_process_did_not_place_is_unlinked_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery removes a dead worker's cgroup: its marker names that worker, and must never become the
    marker of a cgroup of this one (a sweep would take the live cgroup for an orphan)."""
    host = _fake_v2(tmp_path, monkeypatch)
    owners = tmp_path / "owners"
    name = task_cgroup_name("T", 0)
    (host.root / cgroups.BASE / name).mkdir(parents=True)
    (owners / name).parent.mkdir(exist_ok=True)
    (owners / name).write_text(_dead_marker())
    group = host.existing(name)
    assert group is not None and group.try_rmdir()
    assert list(owners.iterdir()) == []
    fresh = host.create(task_cgroup_name("T", 1))
    assert (owners / fresh.name).read_text() == owner_marker()


def test_the_sweep_removes_the_spare_markers_of_workers_that_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = _fake_v2(tmp_path, monkeypatch)
    owners = tmp_path / "owners"
    owners.mkdir()
    (owners / f"{cgroups.SPARE_MARKER_PREFIX}1-0").write_text(_dead_marker())
    (owners / f"{cgroups.SPARE_MARKER_PREFIX}{os.getpid()}-0").write_text(owner_marker())
    (owners / "notes.txt").write_text("not a marker of ours")
    (host.root / cgroups.BASE).mkdir(exist_ok=True)
    host.sweep_orphans()
    assert sorted(p.name for p in owners.iterdir()) == [f"{cgroups.SPARE_MARKER_PREFIX}{os.getpid()}-0", "notes.txt"]


def test_v2_sweep_removes_only_empty_unowned_task_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _fake_v2(tmp_path, monkeypatch)
    base = tmp_path / "cg" / "megalodon"
    owners = tmp_path / "owners"

    orphan = task_cgroup_name("orphan", 0)
    host.create(orphan)
    (owners / orphan).write_text(_dead_marker())
    # our pid, another start time: a recycled pid is not the owner
    recycled = task_cgroup_name("recycled", 0)
    host.create(recycled)
    (owners / recycled).write_text(f"megalodon pid {os.getpid()} started 1")
    unmarked = task_cgroup_name("unmarked", 0)
    (base / unmarked).mkdir()  # no marker: no running worker made it (markers come first)
    live = task_cgroup_name("live", 0)
    host.create(live)  # this process: a live worker between two commands of a task
    busy = task_cgroup_name("busy", 0)
    host.create(busy)
    (owners / busy).write_text(_dead_marker())
    (base / busy / "cgroup.procs").write_text("4242\n")  # still holds a process: left to crash recovery
    not_ours = base / "task-not-a-digest"
    not_ours.mkdir()
    outside = tmp_path / "cg" / "system.slice"
    outside.mkdir()
    gone = task_cgroup_name("gone", 0)
    (owners / gone).write_text(_dead_marker())  # a marker whose cgroup no longer exists

    removed = host.sweep_orphans()

    assert sorted(removed) == sorted([orphan, recycled, unmarked])
    for name in (orphan, recycled, unmarked):
        assert not (base / name).exists() and not (owners / name).exists()
    for kept in (base / live, base / busy, not_ours, outside):
        assert kept.is_dir(), kept
    assert (owners / live).exists() and (owners / busy).exists()
    assert not (owners / gone).exists()


async def test_native_executor_initialise_sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _fake_v2(tmp_path, monkeypatch)
    monkeypatch.setattr(cgroups, "_HOST", [host])
    orphan = task_cgroup_name("left-by-a-killed-worker", 3)
    host.create(orphan)
    (tmp_path / "owners" / orphan).write_text(_dead_marker())
    executor = NativeExecutor(SimpleNamespace(config=None))
    assert (tmp_path / "cg" / "megalodon" / orphan).is_dir()  # building it touched nothing
    await executor.initialise()
    assert not (tmp_path / "cg" / "megalodon" / orphan).exists()


@needs_cgroups
def test_v1_sweep_on_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert HOST is not None
    if HOST.version != 1:
        pytest.skip("this host has the unified hierarchy; v1 is checked on hosts that have it")
    monkeypatch.setattr(cgroups, "BASE", f"megalodon-sweep-{uuid.uuid4().hex[:8]}")
    host = CgroupHost(1, HOST.root, HOST.mounts, tmp_path / "owners")
    for base in host.base_dirs():
        base.mkdir()
    orphan, live, busy = (task_cgroup_name(n, 0) for n in ("orphan", "live", "busy"))
    limit = 64 << 20  # tasks with a memory limit: a cgroup in both hierarchies
    host.create(orphan, memory_limit=limit)
    (tmp_path / "owners" / orphan).write_text(_dead_marker())
    host.create(live, memory_limit=limit)
    busy_group = host.create(busy, memory_limit=limit)
    (tmp_path / "owners" / busy).write_text(_dead_marker())
    fds = busy_group.open_procs()
    try:
        # the joiner writes to already-open fds only, as the process helper's child does
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=busy_group.joiner(fds))  # noqa: PLW1509
    finally:
        for fd in fds:
            os.close(fd)
    try:
        assert busy_group.pids() == [sleeper.pid]
        removed = host.sweep_orphans()
        assert removed == [orphan]
        for base in host.base_dirs():  # freezer and memory hierarchies alike
            assert not (base / orphan).exists()
            assert (base / live).is_dir() and (base / busy).is_dir()
        assert sleeper.poll() is None  # a sweep never kills
    finally:
        sleeper.kill()
        sleeper.wait()
        for name in (live, busy):
            group = host.existing(name)
            if group is not None:
                group.remove()
        for base in host.base_dirs():
            base.rmdir()
