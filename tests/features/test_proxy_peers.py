"""Who may use a task's taskcluster-proxy: with ``allowed_uids`` (the multiuser engine's task user) another
local user's connection is refused with 403 and nothing is signed; the task user's and root's are served.

The proxy signs with the task's credentials, so on a host shared by several task users (capacity > 1) a
neighbour reaching 127.0.0.1:<port> must not borrow them.  Needs root (connections as other uids).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from megalodon_core.double import TaskclusterDouble
from megalodon_core.rundata import ProxyPlacement
from megalodon_core.worker_context import WorkerContext
from megalodon_features.proxy import TaskclusterProxyFeature, TaskclusterProxyTask

from .test_proxy import ctx, get, make_run  # noqa: F401  (ctx: the fixture)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="connecting as another uid needs root"
)

TASK_UID = 65534  # nobody: stands for the task user
NEIGHBOUR_UID = 65533


async def status_as(uid: int, url: str) -> int:
    """The HTTP status a GET of ``url`` gets from a process of ``uid`` (system python: the test venv may be
    below a directory other users cannot enter)."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, timeout=30).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-I", "-c", script, stdout=asyncio.subprocess.PIPE, user=uid, group=uid if uid else 0
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(out.decode().strip())


async def test_only_the_task_user_and_root_may_use_a_restricted_proxy(
    ctx: WorkerContext,  # noqa: F811
    double: TaskclusterDouble,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    feature = TaskclusterProxyFeature(ctx)
    placement = ProxyPlacement("127.0.0.1", 0, allowed_uids=frozenset({TASK_UID}))
    run = make_run(ctx, double, tmp_path, proxy=placement)
    task = feature.new_task_feature(run)
    assert isinstance(task, TaskclusterProxyTask)
    await task.start()
    try:
        url = run.data.env["TASKCLUSTER_PROXY_URL"] + "/auth/v1/scopes/current"
        assert await status_as(NEIGHBOUR_UID, url) == 403
        assert "only the task's own user may use its taskcluster-proxy" in caplog.text
        assert await status_as(TASK_UID, url) == 200
        status, _, body = await get(url)  # the worker itself (root)
        assert status == 200, body
    finally:
        await task.stop(run.errors)
