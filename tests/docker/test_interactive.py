"""Interactive (docker tasks): ``docker exec`` with a TTY in the task's container, over the worker's websocket.

A real worker (every installed plugin) runs docker-worker payloads on the real engine against the double; the
test talks to the shell with aiohttp's websocket client in both wire protocols: generic-worker's (v2, what the
published artifact links to) and docker-worker's ``docker-exec-websocket-server`` codes (v1, at
``/<secret>/shell.sock``).  The task waits for a file the shell creates inside the container.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import Harness, Outcome

from ..helpers.artifacts import wait_for_artifact
from ..helpers.shell_client import ShellSession, refused_status, resolved, run_kept_alive

pytestmark = pytest.mark.docker

BUSYBOX = "megalodon-test/busybox:latest"
ARTIFACT = "private/docker-worker/shell.html"
PAYLOAD: dict[str, Any] = {
    "image": BUSYBOX,
    "command": ["sh", "-c", "while [ ! -e /tmp/finish ]; do sleep 0.1; done; echo task-saw-finish; touch /tmp/done"],
    "maxRunTime": 120,
    "features": {"interactive": True},
}
#: No keep-alive beyond the open sessions (docker-worker's 180 s / 900 s would make every test minutes long).
NO_LINGER = {"interactiveMinTimeSeconds": 0, "interactiveExpirationAfterSessionSeconds": 0}
CONFIG: dict[str, Any] = {
    "executor": "docker",
    "requiredDiskSpaceMegabytes": 0,
    "interactivePort": 0,
    "dockerConfig": NO_LINGER,
}


async def run_task(harness: Harness, payload: dict[str, Any], during: Callable[[str], Awaitable[None]]) -> Outcome:
    """``payload`` on a docker worker kept up after it, so ``during`` still reaches its server afterwards."""
    trivial = {"image": BUSYBOX, "command": ["true"], "maxRunTime": 30}
    return await run_kept_alive(harness, payload, during, trivial=trivial, **CONFIG)


async def test_docker_exec_shell_in_both_protocols_ends_with_the_task(
    harness: Harness, docker_client: docker.DockerClient
) -> None:
    """A shell opened before the container exists waits for it, then runs inside it with TERM; resizes reach
    ``stty size``; docker-worker's protocol works on its path (resume, stdout, stopped with the exit code);
    a wrong secret is 401; the task's end closes the session and retires the secret."""
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        meta = await wait_for_artifact(harness, task_id, ARTIFACT, within=30)
        got["meta"] = meta
        url = urllib.parse.parse_qs(urllib.parse.urlsplit(meta["url"]).query)["socketUrl"][0]
        base, _, secret = url.partition("/shell/")
        v1_url = f"{base}/{secret}/shell.sock?tty=true&command=sh"
        async with aiohttp.ClientSession() as session:
            assert await refused_status(session, f"{base}/shell/{secret[1:]}") == 401
            assert await refused_status(session, f"{base}/x{secret[1:]}/shell.sock") == 401
            # docker-worker's protocol: resume first, stdout-coded output, stopped + exit code.
            async with session.ws_connect(v1_url) as ws:
                old = ShellSession(ws, v1=True, within=60)
                await old.resize(30, 90)
                await old.type("echo O=$(stty size); exit 3\r")
                await old.expect(r"O=30 90\b")
                await old.closed()
                got["v1_codes"], got["v1_stopped"] = old.codes, old.stopped
            # generic-worker's protocol, as the artifact says.
            async with session.ws_connect(url) as ws:
                shell = ShellSession(ws, within=60)
                await shell.resize(24, 80)
                await shell.type("echo T=$TERM H=$(hostname) I=$TASK_ID S=$(stty size)\r")
                found = await shell.expect(r"T=([\w-]+) H=(\w+) I=([\w-]+) S=24 80\b")
                got["term"], got["hostname"], got["task_id"] = found[1], found[2], found[3]
                await shell.resize(41, 132)
                await shell.type("echo S=$(stty size)\r")
                await shell.expect(r"S=41 132\b")
                # docker-worker's keep-alive: the command ends, the open session keeps the container up.
                await shell.type("touch /tmp/finish; until [ -e /tmp/done ]; do sleep 0.1; done; echo C=$((4+4))\r")
                await shell.expect(r"C=8")
                got["running_after_command"] = harness.double.task_state(task_id)["runs"][0]["state"]
            # The last session closed: the container may end now (no linger configured).
            await resolved(harness, task_id)
            got["after"] = await refused_status(session, url)

    out = await run_task(harness, PAYLOAD, during)
    assert out.state == "completed", out.log
    assert "task-saw-finish" in out.log
    meta = got["meta"]
    assert meta["storageType"] == "reference" and meta["contentType"] == "text/html"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(meta["url"]).query)
    assert query["v"] == ["2"] and query["taskId"] == [out.task_id] and query["runId"] == ["0"]
    assert query["socketUrl"][0] not in out.log
    assert got["v1_codes"][0] == 100 and 1 in got["v1_codes"] and got["v1_stopped"] == 3
    assert got["term"] == "xterm-256color"
    assert got["task_id"] == out.task_id
    assert len(got["hostname"]) == 12, "the shell ran on the host, not in the container"  # a container id
    assert got["after"] == 401
    assert got["running_after_command"] == "running"


async def test_container_outlives_its_command_until_the_task_is_cancelled(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """docker-worker's ``minTime``: a shell can be opened after the command ended (exit 3); cancelling the
    task then ends the session (websocket closed) with the run."""
    got: dict[str, Any] = {}
    payload = {**PAYLOAD, "command": ["sh", "-c", "echo started; touch /tmp/done; exit 3"]}
    linger = {"interactiveMinTimeSeconds": 600, "interactiveExpirationAfterSessionSeconds": 0}
    async with (
        TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as double,
        aiohttp.ClientSession() as client,
    ):
        harness = Harness(double, tmp_path, client)

        async def during(task_id: str) -> None:
            meta = await wait_for_artifact(harness, task_id, ARTIFACT, within=30)
            url = urllib.parse.parse_qs(urllib.parse.urlsplit(meta["url"]).query)["socketUrl"][0]
            async with client.ws_connect(url) as ws:
                shell = ShellSession(ws, within=60)
                await shell.type("until [ -e /tmp/done ]; do sleep 0.1; done; sleep 1; echo G=$((2+3))\r")
                await shell.expect(r"G=5")
                got["state"] = double.task_state(task_id)["runs"][0]["state"]
                double.cancel_task(task_id)
                await shell.closed()

        out = await harness.run(payload, during=during, **{**CONFIG, "dockerConfig": linger})
    assert got["state"] == "running"
    run = out.status["runs"][0]
    assert (run["state"], run["reasonResolved"]) == ("exception", "canceled")


async def test_the_wrapped_command_keeps_its_exit_code(harness: Harness) -> None:
    """Under the keep-alive wrapper the task still fails with its command's exit code and output."""
    failing = {**PAYLOAD, "command": ["sh", "-c", "echo about-to-fail; exit 3"]}

    async def during(task_id: str) -> None:
        await wait_for_artifact(harness, task_id, ARTIFACT, within=30)

    out = await run_task(harness, failing, during)
    assert out.state == "failed", out.log
    assert "about-to-fail" in out.log and "exit code: 3" in out.log


async def test_a_payload_without_command_runs_the_image_cmd_under_the_wrapper(
    harness: Harness, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """Setting the wrapper as entrypoint drops the image's CMD at create: the executor passes it on."""
    context = tmp_path / "image"
    context.mkdir()
    (context / "Dockerfile").write_text(f'FROM {BUSYBOX}\nCMD ["sh", "-c", "echo from-the-image-cmd"]\n')
    tag = f"megalodon-test/interactive-cmd:{os.getpid()}"
    await asyncio.to_thread(docker_client.images.build, path=str(context), tag=tag, rm=True)
    try:
        payload = {key: value for key, value in PAYLOAD.items() if key != "command"} | {"image": tag}

        async def during(task_id: str) -> None:
            await wait_for_artifact(harness, task_id, ARTIFACT, within=30)

        out = await run_task(harness, payload, during)
    finally:
        await asyncio.to_thread(docker_client.images.remove, tag, force=True)
    assert out.state == "completed", out.log
    assert "from-the-image-cmd" in out.log
