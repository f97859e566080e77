"""The multiuser engine (``nativeEngine: multiuser``) through the whole worker path, as root.

Every isolation claim is proved by attacking from inside a task: reading another task's files, signalling
its processes, reading the worker's config, leaving daemons behind, uploading a root-only file through a
symlink.  Skipped unless run as root (CI runs these as root).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker

from ..helpers.multiuser import multiuser_config
from ..helpers.procs import alive, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the multiuser engine creates OS users: needs root")


async def cmd(*argv: str, check: bool = True) -> None:
    """Set-up commands (useradd, groupadd...) without blocking the event loop the worker shares."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0 and check:
        raise AssertionError(f"{argv} failed")


def mu(shared: dict[str, Path], **extra: Any) -> dict[str, Any]:
    """The multiuser engine, and task directories removed after each run (the tests check they are)."""
    return multiuser_config(shared, cleanUpTaskDirs=True, **extra)


def task_users() -> set[str]:
    """Task accounts made by the worker in this test process: their comment names our pid (users.py).

    Other processes on the machine (another worker, a parallel test run) may create and remove ``task_*``
    accounts of their own at any moment; counting those made these tests flaky on a busy machine.
    """
    mine = re.compile(rf"megalodon pid {os.getpid()} started \d*")
    return {
        p.pw_name
        for p in pwd.getpwall()
        if re.fullmatch(r"task_[0-9]+", p.pw_name) and mine.fullmatch(p.pw_gecos.split(",", maxsplit=1)[0])
    }


async def test_task_runs_as_fresh_user_with_clean_env_and_everything_is_removed(
    harness: Harness, shared: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEGALODON_WORKER_ONLY_VAR", "leaked")
    drop = shared["drop"]
    before = task_users()
    script = (
        "echo WHO=$(whoami); echo UID=$(id -u); echo HOME=$HOME; echo PATH=$PATH; echo USER=$USER;"
        "echo WORKDIR=$TASK_WORKDIR; echo PWD=$(pwd); echo LEAK=${MEGALODON_WORKER_ONLY_VAR:-none};"
        f"stat -c MODE=%a:%U .; echo secret > mine.txt; "
        # a double-forked, setsid daemon and one that makes itself a new session leader
        f"setsid sh -c 'sleep 300 & echo $! > {drop}/daemon1' & "
        f"(sh -c 'sleep 301 & echo $! > {drop}/daemon2' &) ; sleep 0.5; echo {drop}/tmpfile > /tmp/mu-$(id -u)"
    )
    out = await harness.run({"command": [sh(script)], "maxRunTime": 60, "env": {"FROM_PAYLOAD": "x"}}, **mu(shared))
    assert out.state == "completed", out.log
    user = re.search(r"^WHO=(task_[0-9]+)$", out.log, re.M)
    assert user is not None, out.log
    name = user[1]
    uid = int(re.search(r"^UID=(\d+)$", out.log, re.M)[1])  # type: ignore[index]
    assert uid != 0
    workdir = re.search(r"^WORKDIR=(/\S+)$", out.log, re.M)[1]  # type: ignore[index]
    assert f"HOME={workdir}" in out.log and f"PWD={workdir}" in out.log
    assert "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" in out.log
    assert f"USER={name}" in out.log
    assert "LEAK=none" in out.log
    assert f"MODE=700:{name}" in out.log
    # after the task: daemons dead, user gone, its files gone
    for marker in ("daemon1", "daemon2"):
        pid = int((drop / marker).read_text())
        assert not alive(pid), f"{marker} survived the task"
    assert name not in task_users()
    assert task_users() <= before
    assert not Path(f"/tmp/mu-{uid}").exists()
    assert not Path(workdir).exists()


async def test_concurrent_tasks_cannot_read_or_signal_each_other(harness: Harness, shared: dict[str, Path]) -> None:
    drop = shared["drop"]
    a_script = (
        f"echo topsecret > secret.txt; sleep 120 & echo $! > {drop}/a_pid; pwd > {drop}/a_dir; "
        f"for i in $(seq 200); do [ -e {drop}/b_done ] && break; sleep 0.1; done; "
        "wait_pid=$(cat " + str(drop) + "/a_pid); kill -0 $wait_pid && echo A-SLEEPER-''ALIVE; cat secret.txt"
    )
    b_script = (
        f"X=A; for i in $(seq 200); do [ -e {drop}/a_dir ] && [ -e {drop}/a_pid ] && break; sleep 0.1; done; "
        f'd=$(cat {drop}/a_dir); cat "$d/secret.txt" && echo B-READ-$X; ls "$d" && echo B-LISTED-$X; '
        f"kill -9 $(cat {drop}/a_pid) && echo B-KILLED-$X; touch {drop}/b_done; true"
    )
    worker_type = harness.worker_type()
    a = await harness.create({"command": [sh(a_script)], "maxRunTime": 60}, worker_type)
    b = await harness.create({"command": [sh(b_script)], "maxRunTime": 60}, worker_type)
    host = PluginHost()
    config = harness.config(worker_type, capacity=2, numberOfTasksToRun=2, **mu(shared))
    worker = Worker(parse_config(config, host.config_fields()), host)
    assert await asyncio.wait_for(worker.run(), 60) == 0
    out_a, out_b = await harness.outcome(a, 0), await harness.outcome(b, 0)
    assert out_a.state == out_b.state == "completed", out_a.log + out_b.log
    assert "Permission denied" in out_b.log
    assert "B-READ-A" not in out_b.log and "B-LISTED-A" not in out_b.log and "B-KILLED-A" not in out_b.log
    assert "Operation not permitted" in out_b.log
    assert "A-SLEEPER-ALIVE" in out_a.log and "topsecret" in out_a.log
    who_a = re.search(r"Running task as user (task_\d+)", out_a.log)
    who_b = re.search(r"Running task as user (task_\d+)", out_b.log)
    assert who_a and who_b and who_a[1] != who_b[1]


async def test_worker_secrets_are_unreadable_and_readable_ones_refuse_start(
    harness: Harness, shared: dict[str, Path]
) -> None:
    secret_dir = shared["base"] / "etc"
    secret_dir.mkdir(mode=0o755)
    config_file = secret_dir / "worker.config"
    config_file.write_text('{"accessToken": "not-for-tasks"}')
    os.chmod(config_file, 0o600)
    key = secret_dir / "ed25519.key"
    await cmd(str(Path(sys.executable).parent / "megalodon"), "new-ed25519-keypair", "--file", str(key))
    os.chmod(key, 0o600)
    script = f"cat {config_file} || echo CONFIG-DENIED; cat {key} || echo KEY-DENIED"
    out = await harness.run(
        {"command": [sh(script)], "maxRunTime": 30},
        **mu(shared, workerConfigFile=str(config_file), ed25519SigningKeyLocation=str(key)),
    )
    assert out.state == "completed", out.log
    assert "CONFIG-DENIED" in out.log and "KEY-DENIED" in out.log
    assert "not-for-tasks" not in out.log
    # A world-readable config file: the worker refuses to start and names it.
    os.chmod(config_file, 0o644)
    out = await harness.run({"command": [["true"]], "maxRunTime": 30}, **mu(shared, workerConfigFile=str(config_file)))
    assert out.exit_code == 77
    assert out.status["runs"] == [] or out.status["state"] == "pending"


async def test_readable_secret_is_reported_by_path(shared: dict[str, Path]) -> None:
    from types import SimpleNamespace

    from megalodon_native.multiuser import check_worker_secrets

    config_file = shared["base"] / "open.config"
    config_file.write_text("{}")
    os.chmod(config_file, 0o644)
    values = {"workerConfigFile": str(config_file)}
    config = SimpleNamespace(
        headlessTasks=False,
        enableChainOfTrust=False,
        ed25519SigningKeyLocation="",
        tasksDir=str(shared["tasks"]),
        extra=lambda k, d=None: values.get(k, d),
    )
    problems = await check_worker_secrets(config)
    assert any(str(config_file) in p and "readable by task users" in p for p in problems)
    assert any("headlessTasks" in p and "not support" in p for p in problems)
    os.chmod(config_file, 0o600)
    config.headlessTasks = True
    assert await check_worker_secrets(config) == []


async def test_symlinked_root_only_files_become_error_artifacts(harness: Harness, shared: dict[str, Path]) -> None:
    script = (
        "ln -s /etc/shadow shadow.txt; ln -s generic-worker/live_backing.log worker-log.txt; "
        "mkdir d; ln -s ../generic-worker/live_backing.log d/inner.txt; echo fine > ok.txt"
    )
    artifacts = [
        {"type": "file", "path": "shadow.txt", "name": "public/shadow.txt"},
        {"type": "file", "path": "worker-log.txt", "name": "public/worker-log.txt"},
        {"type": "directory", "path": "d", "name": "public/d"},
        {"type": "file", "path": "ok.txt", "name": "public/ok.txt"},
    ]
    out = await harness.run({"command": [sh(script)], "maxRunTime": 30, "artifacts": artifacts}, **mu(shared))
    assert out.state == "failed", out.log
    for name in ("public/shadow.txt", "public/worker-log.txt", "public/d/inner.txt"):
        assert out.artifacts[name]["storageType"] == "error", name
    assert "file-not-readable-on-worker: Could not copy file" in out.log
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/ok.txt")
    assert data == b"fine\n"
    optional = [{"type": "file", "path": "worker-log.txt", "name": "public/x.txt", "optional": True}]
    out = await harness.run(
        {
            "command": [sh("ln -s generic-worker/live_backing.log worker-log.txt")],
            "maxRunTime": 30,
            "artifacts": optional,
        },
        **mu(shared),
    )
    assert out.state == "completed", out.log
    assert out.artifacts["public/x.txt"]["storageType"] == "error"


async def test_run_task_as_current_user_needs_scope_and_capacity_one(harness: Harness, shared: dict[str, Path]) -> None:
    payload = {"command": [sh("echo WHO=$(whoami)")], "maxRunTime": 30, "features": {"runTaskAsCurrentUser": True}}
    out = await harness.run(payload, **mu(shared))
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "generic-worker:run-task-as-current-user:megalodon-test/" in out.log
    worker_type = f"e2e-{harness.counter + 1}"
    scope = f"generic-worker:run-task-as-current-user:megalodon-test/{worker_type}"
    out = await harness.run(payload, task={"scopes": [scope]}, **mu(shared))
    assert out.state == "completed", out.log
    assert "WHO=root" in out.log
    worker_type = f"e2e-{harness.counter + 1}"
    scope = f"generic-worker:run-task-as-current-user:megalodon-test/{worker_type}"
    out = await harness.run(payload, task={"scopes": [scope]}, **mu(shared, capacity=2))
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert (
        'feature "Run Task As Current User" is not compatible with capacity > 1 (current capacity: 2) because it '
        "would bypass per-task user isolation" in out.log
    )


async def test_os_groups_added_for_the_task_only_with_scope(harness: Harness, shared: dict[str, Path]) -> None:
    group = f"mgt{uuid.uuid4().hex[:8]}"
    await cmd("groupadd", group)
    try:
        payload = {"command": [sh("id -Gn")], "maxRunTime": 30, "osGroups": [group]}
        out = await harness.run(payload, **mu(shared))
        assert (out.state, out.reason) == ("exception", "malformed-payload")
        assert f"generic-worker:os-group:megalodon-test/e2e-{harness.counter}/{group}" in out.log
        worker_type = f"e2e-{harness.counter + 1}"
        out = await harness.run(
            payload, task={"scopes": [f"generic-worker:os-group:megalodon-test/{worker_type}/{group}"]}, **mu(shared)
        )
        assert out.state == "completed", out.log
        assert re.search(rf"task_\d+ .*{group}|{group}", out.log.split("Executing command 0")[1])
        assert grp.getgrnam(group).gr_mem == []
    finally:
        await cmd("groupdel", group, check=False)


async def test_stale_task_users_are_swept_at_start(harness: Harness, shared: dict[str, Path]) -> None:
    stale = f"task_{uuid.uuid4().int % 10**12}"
    await cmd("useradd", "-M", "-c", "megalodon pid 999999999 started 1", stale)
    try:
        out = await harness.run({"command": [["true"]], "maxRunTime": 30}, **mu(shared))
        assert out.state == "completed", out.log
        assert stale not in {p.pw_name for p in pwd.getpwall()}
    finally:
        await cmd("userdel", stale, check=False)


async def test_writable_cache_and_mounts_are_owned_by_the_task_user(harness: Harness, shared: dict[str, Path]) -> None:
    mounts = [
        {"cacheName": "mu-cache", "directory": "cache"},
        {"file": "inputs/data.txt", "content": {"raw": "mounted content"}},
    ]
    script = (
        "stat -c OWNER=%U cache inputs/data.txt; echo written > cache/new.txt && echo CACHE-WRITABLE; "
        "cat inputs/data.txt"
    )
    out = await harness.run(
        {"command": [sh(script)], "maxRunTime": 60, "mounts": mounts},
        task={"scopes": ["generic-worker:cache:mu-cache"]},
        **mu(shared, cachesDir=str(shared["base"] / "caches"), downloadsDir=str(shared["base"] / "downloads")),
    )
    assert out.state == "completed", out.log
    owners = re.findall(r"^OWNER=(\S+)$", out.log, re.M)
    assert len(owners) == 2 and all(re.fullmatch(r"task_[0-9]+", o) for o in owners), out.log
    assert "CACHE-WRITABLE" in out.log
    assert "mounted content" in out.log
