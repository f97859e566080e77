"""Hostile native tasks, each attack tried from inside a task and shown to fail (issue 10).

- daemons that ``setsid`` and ``cd /`` are gone when the run resolves, and after crash recovery;
- FIFOs, sockets, devices and symlink loops named as artifacts (or inside directory artifacts) become
  ``invalid-resource-on-worker`` error artifacts without blocking, and the worker still stops promptly on
  SIGTERM; in the multiuser engine no copy helper is left behind;
- a task over ``taskMemoryLimitMegabytes`` is killed by the kernel and resolved failed with a log line
  saying so, and the worker claims and runs the next task;
- absolute artifact paths are accepted (generic-worker), and in the multiuser engine a file the task user
  cannot read is not published through one.

The cgroup tests need root and a cgroup hierarchy (CI runs them as root); the multiuser ones create users.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from megalodon_core import cgroup as cgroups
from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import Harness

from ..helpers.memory_limit import assert_hog_killed_and_next_task_ran
from ..helpers.multiuser import multiuser_config
from ..helpers.procs import MEGALODON, alive, create_task, sh, wait_for, wait_gone, write_worker_config

ROOT = os.geteuid() == 0
needs_cgroups = pytest.mark.skipif(cgroups.detect() is None, reason="needs root and cgroups at /sys/fs/cgroup")
needs_root = pytest.mark.skipif(not ROOT, reason="the multiuser engine creates OS users: needs root")


# -- daemons --------------------------------------------------------------------------------------------------
DAEMON = "cd / && setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' < /dev/null > /dev/null 2>&1 &"


@needs_cgroups
async def test_setsid_daemon_that_left_the_task_directory_is_gone_after_the_run(
    harness: Harness, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    script = DAEMON.format(pidfile=pidfile) + f" while [ ! -s {pidfile} ]; do sleep 0.05; done; echo started"
    out = await harness.run({"command": [sh(script)], "maxRunTime": 60})
    assert out.state == "completed", out.log
    pid = int(pidfile.read_text())
    assert await wait_gone(pid), "the setsid daemon outlived its task"
    name = cgroups.task_cgroup_name(out.task_id, 0)
    assert not list(Path("/sys/fs/cgroup").glob(f"*/megalodon/{name}")), "task cgroup left behind"
    assert out.task_id not in name  # /proc/<pid>/cgroup is world-readable: it must not name the task


@needs_cgroups
@needs_root
async def test_multiuser_setsid_daemon_is_gone_after_the_run(harness: Harness, shared: dict[str, Path]) -> None:
    pidfile = shared["drop"] / "daemon.pid"
    script = DAEMON.format(pidfile=pidfile) + f" while [ ! -s {pidfile} ]; do sleep 0.05; done"
    out = await harness.run({"command": [sh(script)], "maxRunTime": 60}, **multiuser_config(shared))
    assert out.state == "completed", out.log
    assert await wait_gone(int(pidfile.read_text()))


@needs_cgroups
async def test_setsid_daemon_is_gone_after_crash_recovery(double: TaskclusterDouble, tmp_path: Path) -> None:
    cfg = write_worker_config(double, tmp_path, "hostile-crash", idleTimeoutSecs=2)
    pidfile = tmp_path / "daemon.pid"
    script = DAEMON.format(pidfile=pidfile) + " sleep 300"
    task_id = await create_task(double, {"command": [sh(script)], "maxRunTime": 300}, "hostile-crash", retries=0)
    proc = await asyncio.create_subprocess_exec(*MEGALODON, "run", "--config", str(cfg), cwd=tmp_path)
    try:
        await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    pid = int(pidfile.read_text())
    assert alive(pid), "the daemon should survive its worker's SIGKILL (that is what recovery is for)"
    proc = await asyncio.create_subprocess_exec(*MEGALODON, "run", "--config", str(cfg), cwd=tmp_path)
    assert await asyncio.wait_for(proc.wait(), 60) == 68  # recovered, then idle
    run0 = double.task_state(task_id)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("exception", "worker-shutdown")
    assert await wait_gone(pid), "crash recovery left the setsid daemon running"


# -- special files --------------------------------------------------------------------------------------------
SPECIAL = (
    "mkfifo fifo; ln -s /dev/zero zero; ln -s loop loop; "
    "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\"; "
    "mkdir d; mkfifo d/fifo; ln -s /dev/zero d/zero; ln -s ../d d/up; echo fine > d/ok.txt; echo ok > ok.txt"
)
SPECIAL_ARTIFACTS = [
    {"type": "file", "path": "fifo", "name": "public/fifo"},
    {"type": "file", "path": "zero", "name": "public/zero"},
    {"type": "file", "path": "loop", "name": "public/loop"},
    {"type": "file", "path": "sock", "name": "public/sock"},
    {"type": "directory", "path": "d", "name": "public/d"},
    {"type": "file", "path": "ok.txt", "name": "public/ok.txt"},
]
SPECIAL_ERRORS = ("public/fifo", "public/zero", "public/loop", "public/sock", "public/d/fifo", "public/d/zero")


def assert_special_errors(harness: Harness, out: Any) -> None:
    assert out.state == "failed", out.log
    for name in SPECIAL_ERRORS:
        assert out.artifacts[name]["storageType"] == "error", (name, out.artifacts.get(name))
    assert "invalid-resource-on-worker" in out.log
    assert "public/d/up" not in out.artifacts  # a symlink to a directory is not followed
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/ok.txt")
    assert data == b"ok\n"
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/d/ok.txt")
    assert data == b"fine\n"


async def test_special_files_become_error_artifacts_without_blocking(harness: Harness) -> None:
    out = await asyncio.wait_for(
        harness.run({"command": [sh(SPECIAL)], "maxRunTime": 60, "artifacts": SPECIAL_ARTIFACTS}), 60
    )
    assert_special_errors(harness, out)
    assert re.search(r"File artifact '\S+/fifo' is a named pipe \(FIFO\), not a regular file", out.log)
    assert re.search(r"File artifact '\S+/zero' is a character device", out.log)
    assert re.search(r"File artifact '\S+/loop' is a symbolic link loop", out.log)
    assert re.search(r"File artifact '\S+/sock' is a socket", out.log)


@needs_root
async def test_multiuser_special_files_become_error_artifacts_and_no_helper_stays(
    harness: Harness, shared: dict[str, Path]
) -> None:
    out = await asyncio.wait_for(
        harness.run(
            {"command": [sh(SPECIAL)], "maxRunTime": 60, "artifacts": SPECIAL_ARTIFACTS}, **multiuser_config(shared)
        ),
        60,
    )
    assert_special_errors(harness, out)
    helpers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and b"read-as-task-user" in _cmdline(p)]
    assert helpers == [], "a copy helper was left behind"


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


async def test_sigterm_stays_prompt_with_a_fifo_artifact(
    harness: Harness, double: TaskclusterDouble, tmp_path: Path
) -> None:
    cfg = write_worker_config(double, tmp_path, "hostile-fifo")
    marker = tmp_path / "fifo-made"
    payload = {
        "command": [sh(f"mkfifo fifo; mkdir d; mkfifo d/inner; touch {marker}; sleep 300")],
        "maxRunTime": 300,
        "artifacts": [
            {"type": "file", "path": "fifo", "name": "public/fifo"},
            {"type": "directory", "path": "d", "name": "public/d"},
        ],
    }
    task_id = await create_task(double, payload, "hostile-fifo", retries=0)
    proc = await asyncio.create_subprocess_exec(*MEGALODON, "run", "--config", str(cfg), cwd=tmp_path)
    try:
        await wait_for(marker.exists, 60)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 72
    run0 = double.task_state(task_id)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("exception", "worker-shutdown")
    out = await harness.outcome(task_id, code)
    assert out.artifacts["public/fifo"]["storageType"] == "error"
    assert out.artifacts["public/d/inner"]["storageType"] == "error"


# -- memory limit ---------------------------------------------------------------------------------------------
HOG = "python3 -c \"b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096]); print('SURV' + 'IVED')\""


@needs_cgroups
@pytest.mark.parametrize("engine", ["insecure", "multiuser"])
async def test_memory_limit_fails_the_task_and_the_worker_runs_the_next(
    harness: Harness, shared: dict[str, Path], engine: str
) -> None:
    if engine == "multiuser" and not ROOT:
        pytest.skip("the multiuser engine creates OS users: needs root")
    engine_config = multiuser_config(shared) if engine == "multiuser" else {}
    worker_type = harness.worker_type()
    hog = await harness.create({"command": [sh(HOG)], "maxRunTime": 60}, worker_type)
    nice = await harness.create({"command": [["echo", "next one ran"]], "maxRunTime": 60}, worker_type)
    from megalodon_core.config import parse_config
    from megalodon_core.plugins import PluginHost
    from megalodon_core.worker import Worker

    host = PluginHost()
    config = harness.config(worker_type, numberOfTasksToRun=2, taskMemoryLimitMegabytes=64, **engine_config)
    worker = Worker(parse_config(config, host.config_fields()), host)
    assert await asyncio.wait_for(worker.run(), 120) == 0
    await assert_hog_killed_and_next_task_ran(harness, hog, nice, limit_mb=64)


# -- absolute artifact paths (generic-worker accepts them) -----------------------------------------------------
async def test_absolute_artifact_path_is_published(harness: Harness, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    payload = {
        "command": [sh(f"echo from-outside > {outside}")],
        "maxRunTime": 30,
        "artifacts": [{"type": "file", "path": str(outside), "name": "public/outside.txt"}],
    }
    out = await harness.run(payload)
    assert out.state == "completed", out.log
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/outside.txt")
    assert data == b"from-outside\n"


@needs_root
async def test_multiuser_absolute_path_is_read_as_the_task_user(harness: Harness, shared: dict[str, Path]) -> None:
    secret = shared["base"] / "root-only.txt"
    secret.write_text("worker secret\n")
    os.chmod(secret, 0o600)
    readable = shared["drop"] / "mine.txt"
    payload = {
        "command": [sh(f"echo by-task > {readable}")],
        "maxRunTime": 30,
        "artifacts": [
            {"type": "file", "path": str(secret), "name": "public/secret.txt"},
            {"type": "file", "path": str(readable), "name": "public/mine.txt"},
        ],
    }
    out = await harness.run(payload, **multiuser_config(shared))
    assert out.state == "failed", out.log
    assert out.artifacts["public/secret.txt"]["storageType"] == "error"
    assert "file-not-readable-on-worker" in out.log
    assert "worker secret" not in out.log
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/mine.txt")
    assert data == b"by-task\n"


# -- credentials: one task never acts with another's scopes ----------------------------------------------------
SECRET = "b-only-secret-value-98765"


@needs_root
async def test_multiuser_task_cannot_use_its_neighbours_proxy(harness: Harness, shared: dict[str, Path]) -> None:
    import datetime as dt

    import taskcluster.aio

    from megalodon_core.config import parse_config
    from megalodon_core.plugins import PluginHost
    from megalodon_core.timefmt import iso, utcnow
    from megalodon_core.worker import Worker

    secrets = taskcluster.aio.Secrets(
        {"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials}
    )
    await secrets.set("project/b", {"secret": {"token": SECRET}, "expires": iso(utcnow() + dt.timedelta(days=1))})
    drop = shared["drop"]
    b_script = (
        f'echo "$TASKCLUSTER_PROXY_URL" > {drop}/b_url.tmp && mv {drop}/b_url.tmp {drop}/b_url; '
        f"for i in $(seq 600); do [ -e {drop}/a_done ] && break; sleep 0.1; done; "
        'curl -s -o /dev/null -w "B-OWN-STATUS=%{http_code}\\n" "$TASKCLUSTER_PROXY_URL/secrets/v1/secret/project%2Fb"'
    )
    a_script = (
        f"for i in $(seq 600); do [ -e {drop}/b_url ] && break; sleep 0.1; done; u=$(cat {drop}/b_url); "
        'curl -s -w "\\nA-STATUS=%{http_code}\\n" "$u/secrets/v1/secret/project%2Fb" > a_out.txt; '
        'curl -s -o /dev/null -w "A-BEWIT=%{http_code}\\n" -X POST -d "$TASKCLUSTER_ROOT_URL/api/queue/v1/ping" '
        '"$u/bewit" >> a_out.txt; '
        f"cat a_out.txt; cp a_out.txt {drop}/a_out; touch {drop}/a_done"
    )
    worker_type = harness.worker_type()
    proxy = {"taskclusterProxy": True}
    b = await harness.create(
        {"command": [["/bin/sh", "-c", b_script]], "maxRunTime": 120, "features": proxy},
        worker_type,
        scopes=["secrets:get:project/b"],
    )
    a = await harness.create({"command": [["/bin/sh", "-c", a_script]], "maxRunTime": 120}, worker_type)
    host = PluginHost()
    config = harness.config(
        worker_type, capacity=2, numberOfTasksToRun=2, taskclusterProxyPort=0, **multiuser_config(shared)
    )
    worker = Worker(parse_config(config, host.config_fields()), host)
    assert await asyncio.wait_for(worker.run(), 120) == 0
    out_a = await harness.outcome(a, 0)
    out_b = await harness.outcome(b, 0)
    assert out_a.state == "completed", out_a.log
    assert out_b.state == "completed", out_b.log
    stolen = (drop / "a_out").read_text()
    assert SECRET not in stolen
    assert "A-STATUS=403" in stolen, stolen
    assert "A-BEWIT=403" in stolen, stolen
    assert "B-OWN-STATUS=200" in out_b.log  # the proxy still serves its own task


@needs_root
async def test_multiuser_task_cannot_learn_its_neighbours_task_id(harness: Harness, shared: dict[str, Path]) -> None:
    from megalodon_core.config import parse_config
    from megalodon_core.plugins import PluginHost
    from megalodon_core.worker import Worker

    drop, state = shared["drop"], shared["base"] / "state"
    b_script = f"touch {drop}/b_running; for i in $(seq 600); do [ -e {drop}/a_done ] && break; sleep 0.1; done"
    a_script = (
        f"touch {drop}/a_running; for i in $(seq 600); do [ -e {drop}/both_running ] && break; sleep 0.1; done; "
        f"ls {shared['tasks']} && echo TASKS-''LISTED; "
        f"cat {state}/*.json {state}/*.txt 2>/dev/null; ls -R {state} 2>/dev/null; "
        "cat /proc/[0-9]*/cgroup 2>/dev/null | sort -u; ls /sys/fs/cgroup/*/megalodon/ 2>/dev/null; "
        f"touch {drop}/a_done"
    )
    worker_type = harness.worker_type()
    b = await harness.create({"command": [["/bin/sh", "-c", b_script]], "maxRunTime": 120}, worker_type)
    a = await harness.create({"command": [["/bin/sh", "-c", a_script]], "maxRunTime": 120}, worker_type)
    host = PluginHost()
    config = harness.config(
        worker_type, capacity=2, numberOfTasksToRun=2, stateDir=str(state), **multiuser_config(shared)
    )
    worker = Worker(parse_config(config, host.config_fields()), host)
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: ((drop / "a_running").exists() and (drop / "b_running").exists()) or running.done())
        status = state / "worker-status.json"
        assert status.stat().st_mode & 0o077 == 0, "worker-status.json is readable by task users"
    finally:
        (drop / "both_running").touch()  # A looks now, while both tasks run
        code = await asyncio.wait_for(running, 120)
    assert code == 0
    out_a = await harness.outcome(a, 0)
    assert out_a.state == "completed", out_a.log
    assert (await harness.outcome(b, 0)).state == "completed"
    assert "TASKS-LISTED" not in out_a.log
    assert b not in out_a.log, "task A learnt task B's id"


@needs_root
async def test_multiuser_docker_bridge_proxy_admits_containers_and_the_task_user_only(
    harness: Harness, shared: dict[str, Path]
) -> None:
    import subprocess

    from megalodon_core.config import parse_config
    from megalodon_core.plugins import PluginHost
    from megalodon_core.worker import Worker

    drop = shared["drop"]
    own = 'curl -s -o /dev/null -w "OWN-STATUS=%{http_code}\\n" "$TASKCLUSTER_PROXY_URL/auth/v1/scopes/current"'
    script = (
        f'echo "$TASKCLUSTER_DOCKER_NETWORK" > {drop}/network; '
        f'echo "$TASKCLUSTER_PROXY_URL" > {drop}/url.tmp && mv {drop}/url.tmp {drop}/url; {own}; '
        f"for i in $(seq 600); do [ -e {drop}/done ] && break; sleep 0.1; done"
    )
    worker_type = harness.worker_type()
    payload = {
        "command": [["/bin/sh", "-c", script]],
        "maxRunTime": 120,
        "features": {"taskclusterProxy": True},
        "taskclusterProxyInterface": "docker-bridge",
    }
    task_id = await harness.create(payload, worker_type, scopes=["auth:current-scopes"])
    host = PluginHost()
    config = harness.config(worker_type, taskclusterProxyPort=0, **multiuser_config(shared))
    worker = Worker(parse_config(config, host.config_fields()), host)
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: (drop / "url").exists() or running.done(), 60)
        url = (drop / "url").read_text().strip() + "/auth/v1/scopes/current"
        network = (drop / "network").read_text().strip()  # the run's own, as generic-worker gives it

        def status(argv: list[str], **kwargs: Any) -> str:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)
            return done.stdout.strip()

        curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url]
        stranger = await asyncio.to_thread(status, curl, user=65534, group=65534)
        container = await asyncio.to_thread(
            status,
            [
                "docker",
                "run",
                "--rm",
                "--network",
                network,
                "megalodon-test/busybox:latest",
                "sh",
                "-c",
                f"wget -q -O /dev/null {url} && echo 200",
            ],
        )
    finally:
        (drop / "done").touch()
        code = await asyncio.wait_for(running, 120)
    assert code == 0
    out = await harness.outcome(task_id, code)
    assert out.state == "completed", out.log
    assert "OWN-STATUS=200" in out.log
    assert stranger == "403"  # a host process of another user
    assert container == "200"  # a container on the run's network, as one the task starts
