"""Interactive (native tasks): a websocket shell into the running task, generic-worker's protocol (v2).

Each test drives a real worker against the double over HTTP and talks to the shell with aiohttp's websocket
client, exactly as the Taskcluster UI's shell page does: ``0x01`` + keystrokes, ``0x02`` + rows/cols (u16 LE).
The task waits for a file the shell creates, so the test decides when the task ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from megalodon_core import cgroup as cgroups
from megalodon_core import hookimpl
from megalodon_core.config import parse_config
from megalodon_core.contracts import ExecutorInfo, ExecutorRun, executor_for
from megalodon_core.plugins import PluginHost
from megalodon_core.rundata import FeatureRequest
from megalodon_core.testing import Harness
from megalodon_core.timefmt import parse_iso, utcnow
from megalodon_core.worker import Worker

from ..helpers.artifacts import wait_for_artifact
from ..helpers.procs import alive
from ..helpers.shell_client import ShellSession, refused_status, resolved, run_kept_alive

ARTIFACT = "private/generic-worker/shell.html"
#: The task runs until its shell creates ``finish`` in the task directory.
WAIT_FOR_FINISH = ["sh", "-c", "while [ ! -e finish ]; do sleep 0.1; done; echo task-saw-finish"]
#: HOME without rc files: the insecure engine's shell is the worker's user (root here), whose ~/.bashrc may do
#: slow things (pyenv rehash takes a lock a killed shell leaves behind).
PAYLOAD: dict[str, Any] = {
    "command": [WAIT_FOR_FINISH],
    "maxRunTime": 120,
    "features": {"interactive": True},
    "env": {"HOME": "/nonexistent/megalodon-test-home"},
}
#: The task that ends a worker kept up after the interactive one.
TRIVIAL: dict[str, Any] = {"command": [["true"]], "maxRunTime": 30}


def socket_url(meta: dict[str, Any]) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(meta["url"]).query)
    return query["socketUrl"][0]


async def test_shell_runs_commands_resizes_and_ends_with_the_task(harness: Harness) -> None:
    """A shell in the task directory with the task's environment and TERM; resize reaches ``stty size``; the
    task ending closes the websocket, kills what the shell started and retires the secret (401)."""
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        meta = await wait_for_artifact(harness, task_id, ARTIFACT)
        got["meta"] = meta
        url = socket_url(meta)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                shell = ShellSession(ws)
                await shell.resize(24, 80)
                await shell.type("echo A$((6*7))B; echo T=$TERM; echo W=$(pwd); echo E=$TASK_ID; echo S=$(stty size)\r")
                await shell.expect(r"A42B")
                got["term"] = (await shell.expect(r"T=([\w-]+)"))[1]
                got["cwd"] = (await shell.expect(r"W=(/[^\s;]+)"))[1]
                got["task_id"] = (await shell.expect(r"E=([\w-]+)"))[1]
                await shell.expect(r"S=24 80\b")
                # A short resize (generic-worker once panicked on one) and an unknown code are ignored.
                await ws.send_bytes(b"\x02\x01")
                await ws.send_bytes(b"\x07junk")
                await shell.resize(33, 101)
                await shell.type("echo S=$(stty size)\r")
                await shell.expect(r"S=33 101\b")
                await shell.type("sleep 1000 & echo P=$!\r")
                got["pid"] = int((await shell.expect(r"P=(\d+)"))[1])
                assert alive(got["pid"])
                await shell.type("touch finish\r")
                got["close"] = await shell.closed()
            await resolved(harness, task_id)
            got["after"] = await refused_status(session, url)

    before = utcnow()
    out = await run_kept_alive(harness, PAYLOAD, during, trivial=TRIVIAL, interactivePort=0)
    after = utcnow()
    assert out.state == "completed", out.log
    assert "task-saw-finish" in out.log
    meta = got["meta"]
    assert meta["storageType"] == "reference"
    assert meta["contentType"] == "text/html; charset=utf-8"
    # generic-worker: now + maxRunTime (120 s) + 900 s
    grace = dt.timedelta(seconds=120 + 900)
    assert before + grace - dt.timedelta(seconds=1) <= parse_iso(meta["expires"]) <= after + grace
    target = urllib.parse.urlsplit(meta["url"])
    assert f"{target.scheme}://{target.netloc}" == harness.double.root_url.rstrip("/")
    assert target.path == "/shell/"
    query = urllib.parse.parse_qs(target.query)
    assert query["v"] == ["2"] and query["taskId"] == [out.task_id] and query["runId"] == ["0"]
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/shell/[A-Za-z0-9_-]{40,}", query["socketUrl"][0])
    assert query["socketUrl"][0] not in out.log  # the log is public; the URL is a shell
    assert got["term"] == "xterm-256color"
    assert got["task_id"] == out.task_id
    assert (Path(got["cwd"]) / "finish").exists()  # the shell ran in the task directory the task watched
    assert not alive(got["pid"]), "a process started in the shell survived the task"
    assert got["after"] == 401


@pytest.mark.skipif(cgroups.host() is None, reason="no usable cgroup hierarchy on this host (needs root)")
async def test_a_shell_opened_while_commands_run_shares_their_kill_boundary(harness: Harness) -> None:
    """A daemon that leaves the shell's session (setsid) from a shell opened while the task's commands run
    is in the task's cgroup, so it dies with the task's processes."""
    got: dict[str, Any] = {}
    payload = {**PAYLOAD, "command": [["sh", "-c", "touch started; " + WAIT_FOR_FINISH[2]]]}

    async def during(task_id: str) -> None:
        url = socket_url(await wait_for_artifact(harness, task_id, ARTIFACT))
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                first = ShellSession(ws)
                await first.type("until [ -e started ]; do sleep 0.1; done; echo R=$((1+2))\r")
                await first.expect(r"R=3")
            async with session.ws_connect(url) as ws:
                shell = ShellSession(ws)
                await shell.type("setsid sh -c 'echo Q=$$; exec sleep 1001' & sleep 0.5; touch finish\r")
                got["pid"] = int((await shell.expect(r"Q=(\d+)"))[1])
                got["alive_during"] = alive(got["pid"])
                await shell.closed()

    out = await harness.run(payload, during=during, interactivePort=0)
    assert out.state == "completed", out.log
    assert got["alive_during"]
    assert not alive(got["pid"]), "a daemon started from the shell survived the task"


async def test_wrong_secret_is_refused_and_secrets_are_per_task(harness: Harness, tmp_path: Path) -> None:
    """Two tasks at once on one worker: each secret opens its own task's shell (generic-worker v106 fixed
    concurrent tasks sharing one); a wrong secret is 401; a finished task's secret is 401 while the other
    task's still works."""
    worker_type = harness.worker_type()
    ids = [await harness.create(PAYLOAD, worker_type) for _ in range(2)]
    host = PluginHost()
    config = harness.config(worker_type, capacity=2, numberOfTasksToRun=2, interactivePort=0)
    worker = Worker(parse_config(config, host.config_fields()), host)
    running = asyncio.create_task(worker.run())
    try:
        urls = [socket_url(await wait_for_artifact(harness, task_id, ARTIFACT)) for task_id in ids]
        assert urls[0] != urls[1]
        base_a, _, secret_a = urls[0].rpartition("/")
        async with aiohttp.ClientSession() as session:
            assert await refused_status(session, f"{base_a}/{secret_a[:-2]}") == 401
            assert await refused_status(session, f"{base_a}/{secret_a[::-1]}") == 401
            async with session.ws_connect(urls[0]) as ws_a, session.ws_connect(urls[1]) as ws_b:
                shells = [ShellSession(ws_a), ShellSession(ws_b)]
                for shell in shells:
                    await shell.type("echo I=$TASK_ID\r")
                seen = [(await shell.expect(r"I=([\w-]+)"))[1] for shell in shells]
                assert seen == ids
                await shells[0].type("touch finish\r")
                await shells[0].closed()
                await resolved(harness, ids[0])
                assert await refused_status(session, urls[0]) == 401
                await shells[1].type("echo still-$((1+1))\r")
                await shells[1].expect(r"still-2")
                await shells[1].type("touch finish\r")
                await shells[1].closed()
        assert await asyncio.wait_for(running, 60) == 0
    finally:
        if not running.done():
            running.cancel()
    for task_id in ids:
        assert (await harness.outcome(task_id, 0)).state == "completed"


async def test_the_worker_serves_a_terminal_page_at_the_socket_address(harness: Harness) -> None:
    """A plain GET of the socket's http:// form is the terminal page (no external resources); a wrong
    secret is 401 there too."""
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        url = socket_url(await wait_for_artifact(harness, task_id, ARTIFACT))
        page = "http" + url[len("ws") :]
        async with aiohttp.ClientSession() as session:
            async with session.get(page) as resp:
                got["status"], got["type"], got["body"] = resp.status, resp.content_type, await resp.text()
            async with session.get(page + "x") as resp:
                got["wrong"] = resp.status
            async with session.ws_connect(url) as ws:
                shell = ShellSession(ws)
                await shell.type("touch finish\r")
                await shell.closed()

    out = await harness.run(PAYLOAD, during=during, interactivePort=0)
    assert out.state == "completed", out.log
    assert got["status"] == 200 and got["type"] == "text/html"
    assert "new WebSocket(" in got["body"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", got["body"]), "the page must load nothing remote"
    assert got["wrong"] == 401


async def test_sessions_per_task_are_bounded(harness: Harness) -> None:
    """docker-worker's limit of 10 sessions, for every task: the 11th is told so and closed."""
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        url = socket_url(await wait_for_artifact(harness, task_id, ARTIFACT))
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(url) for _ in range(10)]
            shells = [ShellSession(ws) for ws in sockets]
            for i, shell in enumerate(shells):
                await shell.type(f"echo N=$(({i}+100))\r")
            for i, shell in enumerate(shells):
                await shell.expect(rf"N={i + 100}\b")
            async with session.ws_connect(url) as extra:
                refused = ShellSession(extra)
                await refused.closed()
                got["extra"] = bytes(refused.output)
            await shells[0].type("touch finish\r")
            for shell in shells:
                await shell.closed()
            for ws in sockets:
                await ws.close()

    out = await harness.run(PAYLOAD, during=during, interactivePort=0)
    assert out.state == "completed", out.log
    assert got["extra"] == b"Too many sessions active!"


async def test_no_port_is_opened_until_a_task_asks_for_a_shell(harness: Harness) -> None:
    """Like generic-worker, the interactive port is listened on only for tasks that request a shell."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got: dict[str, Any] = {}
    payload = {"command": [["sh", "-c", "sleep 1"]], "maxRunTime": 30}

    async def during(task_id: str) -> None:
        for _ in range(400):  # until the task runs
            if (
                harness.double.task_state(task_id)["runs"]
                and harness.double.task_state(task_id)["runs"][0]["state"] == "running"
            ):
                break
            await asyncio.sleep(0.025)
        with socket.socket() as client:
            got["connect"] = client.connect_ex(("127.0.0.1", port))

    out = await harness.run(payload, during=during, interactivePort=port)
    assert out.state == "completed", out.log
    assert got["connect"] != 0, "the interactive port was open for a task that asked for no shell"


async def test_disabled_by_config_is_malformed_payload(harness: Harness) -> None:
    payload = {"command": [["true"]], "maxRunTime": 30, "features": {"interactive": True}}
    out = await harness.run(payload, enableInteractive=False)
    assert out.state == "exception" and out.reason == "malformed-payload"
    assert 'feature "interactive"' in out.log
    assert ARTIFACT not in out.artifacts


class NoShellRun(ExecutorRun[Any]):
    """A third-party executor that asks for the interactive feature but cannot start shells."""

    def parse_payload(self, raw: Any) -> Any:
        return raw

    def requested_features(self) -> list[FeatureRequest]:
        return [FeatureRequest("interactive")]

    async def run(self) -> None:
        raise AssertionError("a task whose executor offers no shell must not run")


class NoShellPlugin:
    __name__ = "no-shell-executor"

    @hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        factory = executor_for("noshell", NoShellRun)
        return [ExecutorInfo(name="noshell", factory=factory, summary="no shells", payload_schema=dict)]


async def test_an_executor_without_a_shell_launcher_is_malformed_payload(harness: Harness) -> None:
    """The feature never branches on executor names: an executor that sets no ``run.data.interactive`` gets
    malformed-payload from the pipeline, naming the feature and the missing run data."""
    import megalodon_features.hooks

    worker_type = harness.worker_type()
    task_id = await harness.create({"anything": True}, worker_type)
    host = PluginHost(load_entry_points=False, plugins=[NoShellPlugin(), megalodon_features.hooks])
    config = harness.config(worker_type, executor="noshell", interactivePort=0)
    code = await asyncio.wait_for(Worker(parse_config(config, host.config_fields()), host).run(), 60)
    out = await harness.outcome(task_id, code)
    assert out.state == "exception" and out.reason == "malformed-payload", out.log
    assert 'feature "interactive", which needs run data "interactive"' in out.log
    assert ARTIFACT not in out.artifacts


@pytest.fixture
def shared_tasks_dir() -> Iterator[Path]:
    """A tasksDir task users can reach (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="megalodon-int-", dir="/tmp"))
    os.chmod(base, 0o711)
    (base / "tasks").mkdir(mode=0o711)
    os.chmod(base / "tasks", 0o711)
    yield base / "tasks"
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the multiuser engine creates OS users: needs root")
async def test_multiuser_shell_runs_as_the_task_user(harness: Harness, shared_tasks_dir: Path) -> None:
    """generic-worker's multiuser engine: the shell is the task's OS user, with the task's clean environment."""
    got: dict[str, Any] = {}

    async def during(task_id: str) -> None:
        url = socket_url(await wait_for_artifact(harness, task_id, ARTIFACT))
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            shell = ShellSession(ws)
            await shell.type("echo U=$(id -un):$(id -u) H=$HOME; touch finish\r")
            found = await shell.expect(r"U=([\w-]+):(\d+) H=(/\S+)")
            got["user"], got["uid"], got["home"] = found[1], int(found[2]), found[3]
            await shell.closed()

    config = {"nativeEngine": "multiuser", "headlessTasks": True, "tasksDir": str(shared_tasks_dir)}
    payload = {key: value for key, value in PAYLOAD.items() if key != "env"}  # the task user's own HOME
    out = await harness.run(payload, during=during, interactivePort=0, **config)
    assert out.state == "completed", out.log
    assert re.fullmatch(r"task_\d+", got["user"]) and got["uid"] != 0
    assert f"Running task as user {got['user']}" in out.log
