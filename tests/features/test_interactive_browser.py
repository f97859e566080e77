"""Interactive: the worker's terminal page in a real headless browser (Debian's chromium, `.ci/browser-setup.sh`).

The test opens the page the worker serves at the http:// form of a running task's socket URL, types a
command with real key events sent over the DevTools protocol (aiohttp websocket client, loopback only), sees
its output in the page, checks the page's resize message reached the shell (``stty size``), then ends the
task from the page and sees the page report the disconnection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from megalodon_core.testing import Harness

from ..helpers.artifacts import wait_for_artifact
from .test_interactive import ARTIFACT, PAYLOAD

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run .ci/browser-setup.sh)")


class DevTools:
    """A minimal Chrome DevTools Protocol client: one page target, commands answered by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.session_id: str | None = None

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if self.session_id is not None:
            message["sessionId"] = self.session_id
        await self.ws.send_str(json.dumps(message))
        while True:
            reply = json.loads((await self.ws.receive(timeout=30)).data)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    async def open(self, url: str) -> None:
        target = await self.call("Target.createTarget", url=url)
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session_id = attached["sessionId"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float = 30.0) -> Any:
        """Poll ``expression`` in the page until it is truthy (generous bound for a loaded machine)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                text = await self.evaluate("document.getElementById('term').textContent")
                raise AssertionError(f"{expression} never became true; terminal shows:\n{text}")
            await asyncio.sleep(0.1)

    async def type(self, text: str) -> None:
        """Real key events, one per character; ``\\r`` is the Enter key."""
        for ch in text:
            if ch == "\r":
                down = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"}
            else:
                down = {"key": ch, "text": ch}
            await self.call("Input.dispatchKeyEvent", type="keyDown", **down)
            await self.call("Input.dispatchKeyEvent", type="keyUp", key=down["key"])


async def start_chromium(profile: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Headless chromium on a loopback DevTools port; returns the process and its browser websocket URL."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--window-size=1000,700",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    for _ in range(600):  # chromium writes the chosen port and browser path once it listens
        if port_file.exists():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return proc, f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        if proc.returncode is not None:
            raise AssertionError(f"chromium exited with {proc.returncode} before listening")
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    raise AssertionError("chromium never opened its DevTools port")


async def test_page_in_a_real_browser_types_a_command_and_shows_its_output(harness: Harness, tmp_path: Path) -> None:
    got: dict[str, Any] = {}
    profile = tmp_path / "chromium-profile"
    profile.mkdir()

    async def during(task_id: str) -> None:
        meta = await wait_for_artifact(harness, task_id, ARTIFACT)
        socket_url = urllib.parse.parse_qs(urllib.parse.urlsplit(meta["url"]).query)["socketUrl"][0]
        page = "http" + socket_url[len("ws") :]
        proc, browser_url = await start_chromium(profile)
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(browser_url, max_msg_size=0) as ws:
                tools = DevTools(ws)
                await tools.open(page)
                await tools.wait_for("document.getElementById('status').textContent === 'connected'")
                await tools.type("echo A$((6*7))B-from-the-browser\r")
                await tools.wait_for("document.getElementById('term').textContent.includes('A42B-from-the-browser')")
                got["size"] = await tools.evaluate("document.getElementById('term').dataset.size")
                await tools.type("stty size\r")
                # The shell's answer, on a line of its own, equals what the page computed and sent.
                got["stty"] = await tools.wait_for(
                    "(document.getElementById('term').textContent.match(/^\\d+ \\d+$/m) || [null])[0]"
                )
                await tools.type("touch finish\r")
                await tools.wait_for("document.getElementById('status').textContent === 'disconnected'")
                got["text"] = await tools.evaluate("document.getElementById('term').textContent")
        finally:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 30)

    out = await harness.run(PAYLOAD, during=during, interactivePort=0)
    assert out.state == "completed", out.log
    assert "A42B-from-the-browser" in got["text"]
    assert got["size"] and got["size"] != "24 80"  # the page's own size, not the worker's default
    assert got["stty"] == got["size"]
