"""Mounts under the multiuser engine reach only what the task user could write itself.

The worker runs as root there; a mount path may be absolute (generic-worker's ``AbsFrom``), so a mount made
with root's rights and then chowned to the task user would hand the task any file or directory of the host
(``/etc/passwd``, ``/usr/local/bin``).  generic-worker creates mount files and directories as the task user
(``MkdirAllTaskUser``, ``CreateFileAsTaskUser``, ``unarchive`` as the task user).  Skipped unless root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from megalodon_core.testing import Harness

from ..helpers.multiuser import multiuser_config, task_user_dirs
from ..helpers.procs import sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the multiuser engine creates OS users: needs root")


@pytest.fixture
def shared() -> Iterator[dict[str, Path]]:
    with task_user_dirs() as dirs:
        yield dirs


@pytest.fixture
def root_only(shared: dict[str, Path]) -> Path:
    """A directory of root's, mode 0755: a task user may read it but not write in it."""
    path = shared["base"] / "root-only"
    path.mkdir()
    os.chmod(path, 0o755)
    (path / "existing.txt").write_text("root's\n")
    return path


@pytest.mark.parametrize(
    "mount",
    [
        pytest.param(lambda d: {"file": str(d / "existing.txt"), "content": {"raw": "task's\n"}}, id="file-over"),
        pytest.param(lambda d: {"file": str(d / "new" / "x.txt"), "content": {"raw": "task's\n"}}, id="file-new"),
        pytest.param(lambda d: {"cacheName": "mu-abs", "directory": str(d)}, id="cache-over"),
    ],
)
async def test_a_mount_outside_what_the_task_user_may_write_fails_and_changes_nothing(
    harness: Harness, shared: dict[str, Path], root_only: Path, mount: object
) -> None:
    spec = mount(root_only)  # type: ignore[operator]
    out = await harness.run(
        {"command": [sh("echo RAN")], "maxRunTime": 60, "mounts": [spec]},
        task={"scopes": ["generic-worker:cache:mu-abs"]},
        **multiuser_config(
            shared,
            cleanUpTaskDirs=True,
            cachesDir=str(shared["base"] / "caches"),
            downloadsDir=str(shared["base"] / "downloads"),
        ),
    )
    assert out.state == "failed", out.log
    assert "RAN" not in out.log
    info = os.stat(root_only)
    assert (info.st_uid, info.st_gid) == (0, 0), "the directory was given to the task user"
    assert (root_only / "existing.txt").read_text() == "root's\n"
    assert os.stat(root_only / "existing.txt").st_uid == 0
    assert not (root_only / "new").exists()


async def test_a_mount_into_the_task_log_directory_is_refused(harness: Harness, shared: dict[str, Path]) -> None:
    """``generic-worker/`` of the task directory is root's (the task log): a mount must not write into it."""
    mount = {"file": "generic-worker/live_backing.log", "content": {"raw": "forged log\n"}}
    out = await harness.run(
        {"command": [sh("echo RAN")], "maxRunTime": 60, "mounts": [mount]},
        **multiuser_config(shared, cleanUpTaskDirs=True, downloadsDir=str(shared["base"] / "downloads")),
    )
    assert out.state == "failed", out.log
    assert "forged log" not in out.log
    assert "does not belong to the task user" in out.log or "may not create" in out.log, out.log


async def test_a_cache_whose_parent_the_task_swapped_for_a_symlink_does_not_take_a_host_directory(
    harness: Harness, shared: dict[str, Path], root_only: Path
) -> None:
    """At the end of the task the worker (root) moves the cache directory back into the store by its path:
    had the task replaced a parent of it by a symlink, root would move the directory the link leads to —
    here root's ``root-only/loot`` — into the store, and the next task of that cache would be given it."""
    loot = root_only / "loot"
    loot.mkdir(mode=0o700)
    (loot / "key").write_text("root's key\n")
    os.chmod(root_only, 0o711)
    config = multiuser_config(
        shared,
        cleanUpTaskDirs=True,
        cachesDir=str(shared["base"] / "caches"),
        downloadsDir=str(shared["base"] / "downloads"),
    )
    scopes = {"scopes": ["generic-worker:cache:mu-swap"]}
    first = await harness.run(
        {
            "command": [sh(f"rm -rf x && ln -s {root_only} x && echo SWAPPED")],
            "maxRunTime": 60,
            "mounts": [{"cacheName": "mu-swap", "directory": "x/loot"}],
        },
        task=scopes,
        **config,
    )
    assert "SWAPPED" in first.log, first.log
    assert (loot / "key").read_text() == "root's key\n", "root's directory was moved away"
    second = await harness.run(
        {
            "command": [sh("cat cache/key || echo NO-LOOT")],
            "maxRunTime": 60,
            "mounts": [{"cacheName": "mu-swap", "directory": "cache"}],
        },
        task=scopes,
        **config,
    )
    assert "root's key" not in second.log, second.log


async def test_a_mount_path_climbing_through_the_log_directory_does_not_give_it_to_the_task_user(
    harness: Harness, shared: dict[str, Path]
) -> None:
    """``generic-worker/../x`` lands in the task directory, but the parents the path names on the way must not
    be chowned to the task user: ``generic-worker/`` (the task log's directory) is root's, 0700."""
    mount = {"file": "generic-worker/../inputs.txt", "content": {"raw": "mounted\n"}}
    out = await harness.run(
        {"command": [sh("stat -c LOGDIR=%U generic-worker; cat inputs.txt")], "maxRunTime": 60, "mounts": [mount]},
        **multiuser_config(shared, cleanUpTaskDirs=True, downloadsDir=str(shared["base"] / "downloads")),
    )
    assert "LOGDIR=root" in out.log, out.log
