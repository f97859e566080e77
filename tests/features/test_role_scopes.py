"""Feature and capability scopes held through roles: expanded through ``auth.expandScopes`` before refusing.

generic-worker (``scopes.Given.Satisfies`` with the worker's credentials) and docker-worker
(``auth.expandScopes(task.scopes)``) both accept a task that holds a feature's scopes through an
``assume:`` role.  The roles live in the double's auth service, created with the real client.
The docker test needs the engine (``.ci/docker-setup.sh``) and fails, never skips, without it.
"""

from __future__ import annotations

import pytest
import taskcluster.aio

from megalodon_core.double.faults import Fault
from megalodon_core.testing import Harness

BUSYBOX = "megalodon-test/busybox:latest"


async def create_role(harness: Harness, role_id: str, scopes: list[str]) -> None:
    auth = taskcluster.aio.Auth({"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials})
    await auth.createRole(role_id, {"description": "test role", "scopes": scopes})


@pytest.fixture(autouse=True)
async def workers_may_expand_scopes(harness: Harness) -> None:
    """expandScopes needs ``auth:expand-scopes``; deployments give it to workers through their pool's role."""
    await create_role(harness, "worker-pool:*", ["auth:expand-scopes"])


def cache_payload(name: str) -> dict[str, object]:
    return {
        "command": [["/bin/sh", "-c", "echo cached > c/file && cat c/file"]],
        "maxRunTime": 60,
        "mounts": [{"directory": "c", "cacheName": name}],
    }


async def test_native_feature_scopes_through_a_role(harness: Harness) -> None:
    await create_role(harness, "project:ci/*", ["generic-worker:cache:<..>"])
    out = await harness.run(cache_payload("build"), task={"scopes": ["assume:project:ci/build"]})
    assert out.state == "completed", out.log
    assert "cached" in out.log
    assert harness.double.calls["expandScopes"] >= 1

    # the same role does not reach another cache: refused, naming the feature and the literal task scopes
    out = await harness.run(cache_payload("other"), task={"scopes": ["assume:project:ci/build"]})
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'Feature "mounts" requires scopes:' in out.log and "generic-worker:cache:other" in out.log
    assert "  assume:project:ci/build" in out.log


async def test_literal_scopes_need_no_auth_call(harness: Harness) -> None:
    out = await harness.run(cache_payload("lit"), task={"scopes": ["generic-worker:cache:lit"]})
    assert out.state == "completed", out.log
    assert harness.double.calls["expandScopes"] == 0


async def test_an_auth_service_that_cannot_expand_is_resource_unavailable(harness: Harness) -> None:
    harness.double.faults.add(Fault(method="expandScopes", status=500, times=100))
    out = await harness.run(cache_payload("x"), task={"scopes": ["assume:project:unreachable"]})
    assert (out.state, out.reason) == ("exception", "resource-unavailable"), out.log
    assert "could not expand the task's scopes through the auth service" in out.log


async def test_docker_cache_scopes_through_a_role(harness: Harness) -> None:
    await create_role(harness, "project:docker", ["docker-worker:cache:role-cache"])
    payload = {
        "image": BUSYBOX,
        "command": ["/bin/sh", "-c", "echo in-cache > /c/f && cat /c/f"],
        "maxRunTime": 60,
        "cache": {"role-cache": "/c"},
    }
    out = await harness.run(payload, task={"scopes": ["assume:project:docker"]}, executor="docker")
    assert out.state == "completed", out.log
    assert "in-cache" in out.log
    out = await harness.run(payload, task={"scopes": ["assume:project:nothing"]}, executor="docker")
    assert out.state == "failed", out.log  # docker-worker fails the task on a scope refusal
    assert "Insufficient scopes to attach cache volumes." in out.log


async def test_docker_allow_ptrace_is_matched_literally_as_docker_worker_does(harness: Harness) -> None:
    """docker-worker checks allowPtrace (and privileged) against ``task.scopes`` as written, not expanded."""
    await create_role(harness, "project:ptrace", ["docker-worker:feature:allowPtrace"])
    payload = {"image": BUSYBOX, "command": ["true"], "maxRunTime": 60, "features": {"allowPtrace": True}}
    out = await harness.run(payload, task={"scopes": ["assume:project:ptrace"]}, executor="docker")
    assert out.state == "failed", out.log
    assert "Insufficient scopes to use 'allowPtrace' feature." in out.log
