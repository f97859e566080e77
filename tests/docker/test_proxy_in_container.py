"""The taskcluster proxy reached from inside a docker task as docker-worker offered it: http://taskcluster."""

from __future__ import annotations

import datetime as dt

import docker
import taskcluster.aio

from megalodon_core.testing import Harness
from megalodon_core.timefmt import iso, utcnow

IMAGE = "megalodon-test/busybox:latest"
SECRET = "a-very-secret-value-123456"


async def test_docker_task_reads_a_secret_through_http_taskcluster(harness: Harness) -> None:
    secrets = taskcluster.aio.Secrets(
        {"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials}
    )
    await secrets.set("project/dw", {"secret": {"token": SECRET}, "expires": iso(utcnow() + dt.timedelta(days=1))})
    script = (
        'echo "proxy=$TASKCLUSTER_PROXY_URL"; '
        "wget -q -O - http://taskcluster/secrets/v1/secret/project%2Fdw; echo; "
        "wget -q -O - http://taskcluster/secrets/v1/secret/project%2Fother || echo other-refused"
    )
    payload = {
        "image": IMAGE,
        "command": ["sh", "-c", script],
        "maxRunTime": 60,
        "features": {"taskclusterProxy": True},
    }
    out = await harness.run(
        payload, task={"scopes": ["secrets:get:project/dw"]}, executor="docker", requiredDiskSpaceMegabytes=0
    )
    assert out.state == "completed", out.log
    assert "proxy=http://taskcluster" in out.log
    assert SECRET not in out.log
    assert '"token":"[REDACTED]"' in out.log.replace(" ", "")
    assert "other-refused" in out.log
    # The task's own network is gone with the task.
    client = docker.from_env()
    leftovers = [n.name for n in client.networks.list() if n.name.startswith(f"megalodon-{out.task_id[:12]}")]
    assert leftovers == []
