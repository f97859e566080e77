"""``taskclusterProxyInterface: docker-bridge`` on the multiuser engine: a container started for task A can
never use task B's proxy (capacity 2, as root, with the Docker engine).

As generic-worker (v106+) does, each such run gets a Docker network of its own; its proxy listens on that
network's gateway and admits container connections from that subnet only.  Before, the proxy listened on
docker's shared default bridge and admitted its whole subnet, so any container there — a neighbour's
included — could act with the task's scopes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from megalodon_core.config import parse_config
from megalodon_core.owner import owner_marker
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker
from megalodon_native.proxy_interface import OWNER_LABEL, sweep_orphan_networks

BUSYBOX = "megalodon-test/busybox:latest"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the multiuser engine creates OS users: needs root")


@pytest.fixture
def shared() -> Iterator[dict[str, Path]]:
    """A tasksDir task users can reach and a world-writable drop box (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="megalodon-bridge-", dir="/tmp"))
    os.chmod(base, 0o711)
    tasks = base / "tasks"
    tasks.mkdir(mode=0o711)
    drop = base / "drop"
    drop.mkdir()
    os.chmod(drop, 0o1777)
    yield {"tasks": tasks, "drop": drop}
    shutil.rmtree(base, ignore_errors=True)


async def _wait_for(predicate: Any, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _container_get(url: str, network: str | None) -> str:
    """What a busybox container on ``network`` (None: docker's default bridge) gets from ``url``."""
    argv = ["docker", "run", "--rm"] + (["--network", network] if network else [])
    argv += [BUSYBOX, "sh", "-c", f"wget -O /dev/null {url} 2>&1; echo rc=$?"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False).stdout


def _networks() -> set[str]:
    out = subprocess.run(
        ["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(out.split())


def _dead_marker() -> str:
    proc = subprocess.Popen(["true"])
    marker = owner_marker(proc.pid)
    proc.wait()
    return marker


def _create_network(name: str, marker: str | None) -> None:
    label = ["--label", f"{OWNER_LABEL}={marker}"] if marker is not None else []
    subprocess.run(["docker", "network", "create", *label, name], capture_output=True, timeout=60, check=True)


async def test_a_tasks_container_cannot_use_a_neighbours_proxy(harness: Harness, shared: dict[str, Path]) -> None:
    drop = shared["drop"]
    # a network a worker killed mid-run left: the first docker-bridge run of this worker removes it
    leftover = f"gw-task-{uuid.uuid4().hex[:12]}-0"
    await asyncio.to_thread(_create_network, leftover, _dead_marker())
    script = (
        'echo "$TASKCLUSTER_DOCKER_NETWORK" > "$DROP/$WHO-network"; '
        'echo "$TASKCLUSTER_PROXY_URL" > "$DROP/$WHO-url.tmp" && mv "$DROP/$WHO-url.tmp" "$DROP/$WHO-url"; '
        'for i in $(seq 900); do [ -e "$DROP/done" ] && break; sleep 0.1; done'
    )

    def payload(who: str) -> dict[str, Any]:
        return {
            "command": [["/bin/sh", "-c", script]],
            "maxRunTime": 180,
            "env": {"WHO": who, "DROP": str(drop)},
            "features": {"taskclusterProxy": True},
            "taskclusterProxyInterface": "docker-bridge",
        }

    worker_type = harness.worker_type()
    tasks = [await harness.create(payload(who), worker_type, scopes=["auth:current-scopes"]) for who in "ab"]
    host = PluginHost()
    config = harness.config(
        worker_type,
        capacity=2,
        numberOfTasksToRun=2,
        taskclusterProxyPort=0,
        nativeEngine="multiuser",
        headlessTasks=True,
        tasksDir=str(shared["tasks"]),
    )
    worker = Worker(parse_config(config, host.config_fields()), host)
    running = asyncio.create_task(worker.run())
    try:
        await _wait_for(lambda: ((drop / "a-url").exists() and (drop / "b-url").exists()) or running.done())
        assert not running.done()
        url = {w: (drop / f"{w}-url").read_text().strip() + "/auth/v1/scopes/current" for w in "ab"}
        network = {w: (drop / f"{w}-network").read_text().strip() for w in "ab"}
        assert network["a"] != network["b"] and all(network.values())
        assert network["a"] in await asyncio.to_thread(_networks)

        own = await asyncio.to_thread(_container_get, url["a"], network["a"])
        neighbours = await asyncio.to_thread(_container_get, url["b"], network["a"])
        default_bridge = await asyncio.to_thread(_container_get, url["a"], None)
    finally:
        (drop / "done").touch()
        code = await asyncio.wait_for(running, 180)
    assert code == 0
    for task_id in tasks:
        out = await harness.outcome(task_id, code)
        assert out.state == "completed", out.log
    assert "rc=0" in own, own  # the task's own container is served
    # A's container on B's proxy, and any container on docker's shared bridge: refused, nothing signed
    assert "rc=0" not in neighbours and "403" in neighbours, neighbours
    assert "rc=0" not in default_bridge and "403" in default_bridge, default_bridge
    # each run's network goes with the run
    assert not {network["a"], network["b"], leftover} & await asyncio.to_thread(_networks)


async def test_sweep_removes_only_networks_of_dead_workers() -> None:
    stamp = uuid.uuid4().hex[:10]
    dead, live, unlabelled = (f"gw-task-{stamp}{n}-0" for n in "dlu")
    other = f"other-{stamp}"
    try:
        await asyncio.to_thread(_create_network, dead, _dead_marker())
        await asyncio.to_thread(_create_network, live, owner_marker())  # this process: a live worker
        await asyncio.to_thread(_create_network, unlabelled, None)  # not megalodon's
        await asyncio.to_thread(_create_network, other, _dead_marker())  # not a run's network name
        removed = await sweep_orphan_networks()
        assert dead in removed
        assert not {live, unlabelled, other} & set(removed)
        present = await asyncio.to_thread(_networks)
        assert dead not in present and {live, unlabelled, other} <= present
    finally:
        rm = ["docker", "network", "rm", dead, live, unlabelled, other]
        await asyncio.to_thread(subprocess.run, rm, capture_output=True, timeout=60, check=False)
