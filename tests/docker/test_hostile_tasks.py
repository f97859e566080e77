"""Hostile docker tasks, each attack tried from inside a container and shown to fail (issue 10).

- a container on another task's network (and the host itself) cannot use a task's taskcluster-proxy;
- FIFOs and devices named as artifacts, or inside directory artifacts, are error artifacts;
- a container over ``taskMemoryLimitMegabytes`` is OOM-killed, the task fails with a log line saying so,
  and the worker runs the next task.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import aiohttp
import docker
import taskcluster.aio

from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker import Worker

from ..helpers.memory_limit import assert_hog_killed_and_next_task_ran

IMAGE = "megalodon-test/busybox:latest"
SECRET = "b-container-secret-24680"
LABEL = "megalodon.task"


def worker_for(harness: Harness, worker_type: str, **config: Any) -> Worker:
    host = PluginHost()
    cfg = harness.config(worker_type, executor="docker", requiredDiskSpaceMegabytes=0, **config)
    return Worker(parse_config(cfg, host.config_fields()), host)


def task_network_gateway(client: docker.DockerClient, task_id: str) -> str | None:
    for network in client.networks.list(filters={"label": f"{LABEL}={task_id}/0"}):
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            if config.get("Gateway"):
                return str(config["Gateway"]).split("/")[0]
    return None


async def test_container_on_another_task_network_cannot_use_the_proxy(harness: Harness) -> None:
    secrets = taskcluster.aio.Secrets(
        {"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials}
    )
    await secrets.set("project/b", {"secret": {"token": SECRET}, "expires": iso(utcnow() + dt.timedelta(days=1))})
    worker_type = harness.worker_type()
    own = "wget -q -O - http://taskcluster/secrets/v1/secret/project%2Fb >/dev/null && echo B-OWN-OK"
    # B keeps its proxy up until the test says A is done (a secret only B may read appears).
    done = "wget -q -O /dev/null http://taskcluster/secrets/v1/secret/project%2Fb-done"
    b_script = f"{own}; for i in $(seq 600); do {done} && break; sleep 0.2; done"
    b = await harness.create(
        {"image": IMAGE, "command": ["sh", "-c", b_script], "maxRunTime": 120, "features": {"taskclusterProxy": True}},
        worker_type,
        scopes=["secrets:get:project/b", "secrets:get:project/b-done"],
    )
    worker = worker_for(harness, worker_type, capacity=2, numberOfTasksToRun=2)
    running = asyncio.create_task(worker.run())
    client = docker.from_env()
    deadline = time.monotonic() + 60
    gateway = None
    while gateway is None:
        assert time.monotonic() < deadline, "task B's network never appeared"
        assert not running.done(), "worker stopped early"
        await asyncio.sleep(0.2)
        gateway = await asyncio.to_thread(task_network_gateway, client, b)
    # The host (any process on it) reaches B's gateway from the gateway address itself: refused.
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(f"http://{gateway}/secrets/v1/secret/project%2Fb") as response:
                    host_status, host_body = response.status, await response.text()
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "B's proxy never listened"
                await asyncio.sleep(0.2)
    # A container of another task (its own network, routed through the host) tries too.
    a_script = (
        f"wget -S -O - http://{gateway}/secrets/v1/secret/project%2Fb 2>&1; echo A-WGET-EXIT=$?; "
        f"wget -S -O - --post-data=x http://{gateway}/bewit 2>&1; echo A-BEWIT-EXIT=$?"
    )
    a = await harness.create(
        {"image": IMAGE, "command": ["sh", "-c", a_script], "maxRunTime": 60, "features": {"taskclusterProxy": True}},
        worker_type,
    )
    try:
        deadline = time.monotonic() + 120
        while harness.double.task_state(a)["runs"][0]["state"] in ("pending", "running"):
            assert time.monotonic() < deadline and not running.done(), "task A never finished"
            await asyncio.sleep(0.2)
    finally:
        expires = iso(utcnow() + dt.timedelta(days=1))
        await secrets.set("project/b-done", {"secret": {}, "expires": expires})
    assert await asyncio.wait_for(running, 180) == 0
    out_a = await harness.outcome(a, 0)
    out_b = await harness.outcome(b, 0)
    assert host_status == 403, host_body
    assert SECRET not in host_body
    assert SECRET not in out_a.log
    assert "403 Forbidden" in out_a.log, out_a.log
    assert "A-WGET-EXIT=0" not in out_a.log and "A-BEWIT-EXIT=0" not in out_a.log
    assert out_b.state == "completed", out_b.log
    assert "B-OWN-OK" in out_b.log  # B's own container still reaches its proxy


async def test_fifo_and_device_artifacts_are_error_artifacts(harness: Harness) -> None:
    script = "mkfifo /fifo; mkdir /d; mkfifo /d/pipe; mknod /d/null c 1 3; echo fine > /d/ok.txt"
    payload = {
        "image": IMAGE,
        "command": ["sh", "-c", script],
        "maxRunTime": 60,
        "artifacts": {
            "public/fifo": {"type": "file", "path": "/fifo", "expires": iso(utcnow() + dt.timedelta(hours=2))},
            "public/d": {"type": "directory", "path": "/d", "expires": iso(utcnow() + dt.timedelta(hours=2))},
        },
    }
    out = await asyncio.wait_for(harness.run(payload, executor="docker", requiredDiskSpaceMegabytes=0), 120)
    assert out.state == "completed", out.log  # docker-worker: error artifacts do not fail the task
    assert out.artifacts["public/fifo"]["storageType"] == "error"
    assert out.artifacts["public/d/pipe"]["storageType"] == "error"
    assert out.artifacts["public/d/null"]["storageType"] == "error"
    assert "a named pipe (FIFO)" in out.log and "a character device" in out.log
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/d/ok.txt")
    assert data == b"fine\n"


async def test_memory_limit_oom_kills_the_container_and_the_next_task_runs(harness: Harness) -> None:
    worker_type = harness.worker_type()
    hog = await harness.create(
        {
            "image": IMAGE,
            "command": ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=256M count=1 && echo SURV''IVED"],
            "maxRunTime": 60,
        },
        worker_type,
    )
    nice = await harness.create({"image": IMAGE, "command": ["echo", "next one ran"], "maxRunTime": 60}, worker_type)
    worker = worker_for(harness, worker_type, numberOfTasksToRun=2, taskMemoryLimitMegabytes=32)
    assert await asyncio.wait_for(worker.run(), 180) == 0
    await assert_hog_killed_and_next_task_ran(harness, hog, nice, limit_mb=32)
