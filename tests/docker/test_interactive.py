"""Interactive (docker tasks): ``docker exec`` with a TTY in the task's container, over the worker's websocket.

A real worker (every installed plugin) runs docker-worker payloads on the real engine against the double; the
test talks to the shell with aiohttp's websocket client in both wire protocols: generic-worker's (v2, what the
published artifact links to) and docker-worker's ``docker-exec-websocket-server`` codes (v1, at
``/<secret>/shell.sock``).  The task waits for a file the shell creates inside the container.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from megalodon_core.config import parse_config
from megalodon_core.double import TaskclusterDouble
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness, Outcome
from megalodon_core.worker import Worker

from ..helpers.artifacts import wait_for_artifact

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


class Session:
    """A websocket session in either protocol; ``output`` is what the terminal printed."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, v1: bool = False) -> None:
        self.ws = ws
        self.v1 = v1
        self.output = bytearray()
        self.codes: list[int] = []
        self.stopped: int | None = None

    async def type(self, text: str) -> None:
        await self.ws.send_bytes((b"\x00" if self.v1 else b"\x01") + text.encode())

    async def resize(self, rows: int, cols: int) -> None:
        await self.ws.send_bytes(bytes([50 if self.v1 else 2]) + struct.pack("<HH", rows, cols))

    def _take(self, data: bytes) -> None:
        if not self.v1:
            self.output += data
            return
        self.codes.append(data[0])
        if data[0] in (1, 2):
            self.output += data[1:]
        elif data[0] == 200:
            self.stopped = data[1]

    async def expect(self, pattern: str, within: float = 60.0) -> re.Match[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            text = self.output.decode(errors="replace")
            found = re.search(pattern, text)
            if found:
                return found
            if loop.time() > deadline:
                raise AssertionError(f"{pattern!r} not seen; output so far:\n{text}")
            try:
                msg = await self.ws.receive(timeout=max(0.1, deadline - loop.time()))
            except TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"session ended ({msg.type}) before {pattern!r}; output:\n{text}")
            self._take(msg.data)

    async def closed(self, within: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - loop.time()))
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return
            if msg.type == aiohttp.WSMsgType.BINARY:
                self._take(msg.data)


async def run_task(harness: Harness, payload: dict[str, Any], during: Callable[[str], Awaitable[None]]) -> Outcome:
    """Run ``payload`` on a docker worker that stays up after it (until a second, trivial task), so ``during``
    can still reach the worker's server once the first task is resolved."""
    worker_type = harness.worker_type()
    task_id = await harness.create(payload, worker_type)
    host = PluginHost()
    worker = Worker(
        parse_config(harness.config(worker_type, numberOfTasksToRun=2, **CONFIG), host.config_fields()), host
    )
    running = asyncio.create_task(worker.run())
    try:
        await during(task_id)
        await harness.create({"image": BUSYBOX, "command": ["true"], "maxRunTime": 30}, worker_type)
        code = await asyncio.wait_for(running, 120)
    finally:
        if not running.done():
            running.cancel()
    return await harness.outcome(task_id, code)


async def resolved(harness: Harness, task_id: str) -> None:
    """Until the run is resolved (the exec ends with the container, before the worker is done with the task)."""
    for _ in range(2400):
        if harness.double.task_state(task_id)["runs"][0]["state"] not in ("pending", "running"):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"task {task_id} never resolved")


async def refused_status(session: aiohttp.ClientSession, url: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with session.ws_connect(url):
            pass
    return info.value.status


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
                old = Session(ws, v1=True)
                await old.resize(30, 90)
                await old.type("echo O=$(stty size); exit 3\r")
                await old.expect(r"O=30 90\b")
                await old.closed()
                got["v1_codes"], got["v1_stopped"] = old.codes, old.stopped
            # generic-worker's protocol, as the artifact says.
            async with session.ws_connect(url) as ws:
                shell = Session(ws)
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
                shell = Session(ws)
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
