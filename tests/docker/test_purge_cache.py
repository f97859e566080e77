"""Purge-cache: the double's service (real client) and the docker executor dropping the caches it names.

docker-worker (``volume_cache.js``) asks ``purgeRequests(workerPoolId, {since})`` before starting tasks and
drops every instance of a named cache created before the request's ``before``.  Needs the engine
(``.ci/docker-setup.sh``); fails, never skips, without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import PROVISIONER, Harness
from megalodon_docker.caches import CachePool, PurgePoller

BUSYBOX = "megalodon-test/busybox:latest"


def purge_client(double: TaskclusterDouble, creds: dict[str, str] | None = None) -> Any:
    options: dict[str, Any] = {"rootUrl": double.root_url, "maxRetries": 0}
    if creds is not None:
        options["credentials"] = creds
    return taskcluster.aio.PurgeCache(options)


async def test_purge_cache_service_api(double: TaskclusterDouble) -> None:
    root = purge_client(double, double.root_credentials)
    before_any = dt.datetime.now(dt.UTC).isoformat()
    await root.purgeCache("prov/wt", {"cacheName": "build-cache"})
    await root.purgeCache("prov/other", {"cacheName": "x"})
    answer = await root.purgeRequests("prov/wt")
    assert [(r["provisionerId"], r["workerType"], r["cacheName"]) for r in answer["requests"]] == [
        ("prov", "wt", "build-cache")
    ]
    assert (await root.purgeRequests("prov/wt", query={"since": before_any}))["requests"]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).isoformat()
    assert (await root.purgeRequests("prov/wt", query={"since": later}))["requests"] == []
    assert len((await root.allPurgeRequests())["requests"]) == 2
    # purgeCache needs purge-cache:<workerPoolId>:<cacheName>
    creds = double.add_client("limited", "token", ["purge-cache:prov/wt:only-this"])
    await purge_client(double, creds).purgeCache("prov/wt", {"cacheName": "only-this"})
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await purge_client(double, creds).purgeCache("prov/wt", {"cacheName": "another"})
    assert err.value.status_code == 403


def test_poller_marks_only_instances_created_before_the_request(tmp_path: Path) -> None:
    pool = CachePool(tmp_path)
    busy = pool.acquire("c")
    idle = pool.acquire("c")
    pool.release(idle, purge=False)
    cutoff = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    requests = {"requests": [{"cacheName": "c", "before": cutoff.isoformat().replace("+00:00", "Z")}]}
    seen: list[tuple[str, str]] = []

    async def fetch(pool_id: str, since: str) -> dict[str, Any]:
        seen.append((pool_id, since))
        return requests

    poller = PurgePoller(pool, "prov/wt", fetch)
    doomed = asyncio.run(poller.poll())
    assert doomed == [idle.path]  # idle: dropped now
    assert busy.purge and pool.release(busy, purge=False) == busy.path  # busy: dropped on release
    assert seen == [("prov/wt", "1970-01-01T00:00:00.000Z")]  # the first poll asks for every open request
    newer = pool.acquire("c")
    pool.release(newer, purge=False)
    requests["requests"][0]["before"] = "2000-01-01T00:00:00.000Z"  # older than the new instance
    assert asyncio.run(poller.poll()) == []
    since = dt.datetime.fromisoformat(seen[1][1].replace("Z", "+00:00"))
    assert dt.timedelta(minutes=4) < dt.datetime.now(dt.UTC) - since < dt.timedelta(minutes=6)


def test_an_unreachable_service_costs_a_warning_not_the_task(tmp_path: Path) -> None:
    pool = CachePool(tmp_path)
    pool.release(pool.acquire("c"), purge=False)

    async def fetch(pool_id: str, since: str) -> dict[str, Any]:
        raise taskcluster.exceptions.TaskclusterConnectionError("down", None)

    poller = PurgePoller(pool, "prov/wt", fetch)
    assert asyncio.run(poller.poll()) == []
    assert poller.since == dt.datetime.fromtimestamp(0, dt.UTC)  # not advanced: the next poll asks again


async def test_docker_tasks_lose_a_purged_cache(harness: Harness) -> None:
    auth = taskcluster.aio.Auth({"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials})
    # Workers read their pool's purge requests through their worker-pool role, as deployments grant it.
    await auth.createRole("worker-pool:*", {"description": "", "scopes": ["purge-cache:purge-requests::<..>"]})
    payload = {
        "image": BUSYBOX,
        "command": ["/bin/sh", "-c", "ls /c; date >> /c/runs"],
        "maxRunTime": 60,
        "cache": {"purged": "/c"},
    }
    task = {"scopes": ["docker-worker:cache:purged"]}
    first = await harness.run(payload, task=task, executor="docker")
    assert first.state == "completed", first.log
    second = await harness.run(payload, task=task, executor="docker")
    assert second.state == "completed", second.log
    assert "runs" in second.log.split("=== Task Starting ===")[1], second.log  # the cache persisted

    next_pool = f"{PROVISIONER}/e2e-{harness.counter + 1}"
    await purge_client(harness.double, harness.double.root_credentials).purgeCache(next_pool, {"cacheName": "purged"})
    third = await harness.run(payload, task=task, executor="docker")
    assert third.state == "completed", third.log
    assert harness.double.calls["purgeRequests"] >= 1
    instances = list((harness.tmp_path / "caches" / "docker-worker" / "purged").iterdir())
    assert len(instances) == 1  # the old instance is gone; the third task got a new one
    assert (instances[0] / "runs").read_text().count("\n") == 1
