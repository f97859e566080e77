"""The client side of the worker's interactive shells, as the Taskcluster UI and docker-worker's clients
speak it, and running a task whose shell the test opens.

Both wire protocols: generic-worker's (v2: ``0x01`` + keystrokes, ``0x02`` + rows/cols as u16 LE; output
arrives as bare bytes) and docker-worker's ``docker-exec-websocket-server`` codes (v1: stdin ``0``, resize
``50``; output ``1``/``2`` + bytes, ``200`` + exit code when the shell stopped).
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness, Outcome
from megalodon_core.worker import Worker

_CLOSING = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


class ShellSession:
    """One websocket session: type, resize, wait for output.  ``output`` is what the terminal printed;
    in v1, ``codes`` are the message codes received and ``stopped`` the shell's exit code once it stopped.
    ``within``: the default bound of every wait (generous: CI is a loaded machine)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, v1: bool = False, within: float = 30.0) -> None:
        self.ws = ws
        self.v1 = v1
        self.within = within
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

    async def expect(self, pattern: str, within: float | None = None) -> re.Match[str]:
        """Read until ``pattern`` matches the output received so far (polled by messages)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.within if within is None else within)
        while True:
            text = self.output.decode(errors="replace")
            found = re.search(pattern, text)
            if found:
                return found
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; output so far:\n{text}")
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                continue  # the deadline check above reports what was seen
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"session ended ({msg.type}) before {pattern!r}; output:\n{text}")
            self._take(msg.data)

    async def closed(self, within: float | None = None) -> aiohttp.WSMessage:
        """Drain until the server closes the websocket; returns the close message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.within if within is None else within)
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - loop.time()))
            if msg.type in _CLOSING:
                return msg
            if msg.type == aiohttp.WSMsgType.BINARY:
                self._take(msg.data)


async def refused_status(session: aiohttp.ClientSession, url: str) -> int:
    """The HTTP status with which the server refuses the websocket handshake at ``url``."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with session.ws_connect(url):
            pass
    return info.value.status


async def resolved(harness: Harness, task_id: str) -> None:
    """Until run 0 is resolved: the secret is retired when the feature stops, which is after the commands
    end (a shell in the task's cgroup or container ends with them) and before the resolution."""
    for _ in range(2400):
        if harness.double.task_state(task_id)["runs"][0]["state"] not in ("pending", "running"):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"task {task_id} never resolved")


async def run_kept_alive(
    harness: Harness,
    payload: dict[str, Any],
    during: Callable[[str], Awaitable[None]],
    *,
    trivial: dict[str, Any],
    **config: Any,
) -> Outcome:
    """Run ``payload`` on a worker that stays up after it (until a second task, ``trivial``), so ``during``
    can still reach the worker's server once the first task is resolved."""
    worker_type = harness.worker_type()
    task_id = await harness.create(payload, worker_type)
    host = PluginHost()
    raw = harness.config(worker_type, numberOfTasksToRun=2, **config)
    running = asyncio.create_task(Worker(parse_config(raw, host.config_fields()), host).run())
    try:
        await during(task_id)
        await harness.create(trivial, worker_type)
        code = await asyncio.wait_for(running, 120)
    finally:
        if not running.done():
            running.cancel()
    return await harness.outcome(task_id, code)
