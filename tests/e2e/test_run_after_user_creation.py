"""Multiuser ``runAfterUserCreation`` (run as generic-worker's ``PostRebootSetup`` runs it), and the
``runTaskAsCurrentUser`` scope held through a role.  As root.

``[script]`` as the new task user, in the task directory, with the worker's environment (less its
Taskcluster credentials), after the user exists and before the task's first command; a failing script
fails the run (exception/internal-error) before any command.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import taskcluster.aio

from megalodon_core.testing import Harness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the multiuser engine creates OS users: needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A tasksDir task users can reach (pytest's tmp_path is root-only), a drop box and the script."""
    root = Path(tempfile.mkdtemp(prefix="megalodon-rauc-", dir="/tmp"))
    os.chmod(root, 0o711)
    (root / "tasks").mkdir(mode=0o711)
    drop = root / "drop"
    drop.mkdir()
    os.chmod(drop, 0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def script(base: Path, body: str) -> str:
    path = base / "after-user-creation.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def mu(base: Path, run_after: str, **extra: Any) -> dict[str, Any]:
    return {
        "nativeEngine": "multiuser",
        "headlessTasks": True,
        "tasksDir": str(base / "tasks"),
        "cleanUpTaskDirs": True,
        "runAfterUserCreation": run_after,
        **extra,
    }


async def test_script_runs_as_the_task_user_in_the_task_directory_before_the_task(
    harness: Harness, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEGALODON_RAUC_MARK", "from-the-worker")
    monkeypatch.setenv("TASKCLUSTER_ACCESS_TOKEN", "must-not-leak")
    drop = base / "drop"
    run_after = script(
        base,
        f'echo "$(id -un) $(pwd) ${{MEGALODON_RAUC_MARK:-none}} ${{TASKCLUSTER_ACCESS_TOKEN:-none}}" > {drop}/ran\n'
        "echo prepared > prepared.txt\n",
    )
    payload = {"command": [["/bin/sh", "-c", "echo WHO=$(id -un) PWD=$(pwd); cat prepared.txt"]], "maxRunTime": 60}
    out = await harness.run(payload, **mu(base, run_after))
    assert out.state == "completed", out.log
    who, cwd, mark, token = (drop / "ran").read_text().split()
    assert f"WHO={who} PWD={cwd}" in out.log  # same user, same directory as the task's commands
    assert who.startswith("task_") and mark == "from-the-worker" and token == "none"
    assert "prepared" in out.log  # it ran before the first command


async def test_a_failing_script_fails_the_run_before_any_command(harness: Harness, base: Path) -> None:
    run_after = script(base, "exit 3\n")
    out = await harness.run(
        {"command": [["/bin/sh", "-c", "echo SHOULD-NOT-RUN"]], "maxRunTime": 60}, **mu(base, run_after)
    )
    assert (out.state, out.reason) == ("exception", "internal-error"), out.log
    assert f"runAfterUserCreation: '{run_after}' exited with code 3 as task user task_" in out.log
    assert "SHOULD-NOT-RUN" not in out.log
    missing = await harness.run({"command": [["true"]], "maxRunTime": 60}, **mu(base, str(base / "no-such-script")))
    assert (missing.state, missing.reason) == ("exception", "internal-error"), missing.log
    assert "runAfterUserCreation: could not run" in missing.log


async def test_run_task_as_current_user_scope_through_a_role(harness: Harness, base: Path) -> None:
    """The feature's scope held through ``assume:`` is expanded, as generic-worker's Satisfies does."""
    auth = taskcluster.aio.Auth({"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials})
    # expandScopes needs auth:expand-scopes, which deployments give workers through their pool's role
    await auth.createRole("worker-pool:*", {"description": "", "scopes": ["auth:expand-scopes"]})
    await auth.createRole(
        "project:admin/*", {"description": "", "scopes": ["generic-worker:run-task-as-current-user:*"]}
    )
    payload = {"command": [["/bin/sh", "-c", "echo WHO=$(id -un)"]], "maxRunTime": 30}
    payload["features"] = {"runTaskAsCurrentUser": True}
    config = {k: v for k, v in mu(base, "").items() if k != "runAfterUserCreation"}
    out = await harness.run(payload, task={"scopes": ["assume:project:admin/ops"]}, **config)
    assert out.state == "completed", out.log
    assert "WHO=root" in out.log
