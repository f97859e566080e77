"""Role expansion of task scopes through ``auth.expandScopes``, as the real auth service takes it."""

from __future__ import annotations

import taskcluster.aio

from megalodon_core.scopes import expanded
from megalodon_core.testing import Harness


async def test_duplicate_task_scopes_are_expanded_once_each() -> None:
    seen: list[list[str]] = []

    async def expand(scopes: list[str]) -> list[str]:
        seen.append(scopes)
        return [*scopes, "granted"]

    assert await expanded(["assume:b", "x", "assume:b", "x"], expand) == ["assume:b", "x", "granted"]
    assert seen == [["assume:b", "x"]]


async def test_a_task_with_duplicate_assume_scopes_gets_its_feature(harness: Harness) -> None:
    """The queue keeps task.scopes verbatim (duplicates too); expandScopes answers 400 to a duplicate."""
    auth = taskcluster.aio.Auth({"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials})
    await auth.createRole("worker-pool:*", {"description": "", "scopes": ["auth:expand-scopes"]})
    await auth.createRole("project:dup", {"description": "", "scopes": ["generic-worker:cache:dup"]})
    payload = {
        "command": [["/bin/sh", "-c", "echo in-cache > c/f && cat c/f"]],
        "maxRunTime": 60,
        "mounts": [{"directory": "c", "cacheName": "dup"}],
    }
    out = await harness.run(payload, task={"scopes": ["assume:project:dup", "assume:project:dup"]})
    assert out.state == "completed", out.log
    assert "in-cache" in out.log
