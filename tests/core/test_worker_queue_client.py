"""The worker's own queue client is made once and made again only when its credentials change (claimWork
used to build a client, options deep-copied, on every claim: issue 13)."""

from __future__ import annotations

from typing import Any

import aiohttp

from megalodon_core.plugins import PluginHost
from megalodon_core.worker_context import WorkerContext


def _credentials(client: Any) -> dict[str, str]:
    """What the client signs with (it keeps the values as bytes)."""
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in client.options["credentials"].items()}


async def test_the_worker_queue_client_follows_its_credentials() -> None:
    config: Any = type("Config", (), {"rootURL": "http://127.0.0.1:1"})()
    async with aiohttp.ClientSession() as session:
        ctx = WorkerContext(config, PluginHost(load_entry_points=False), session, {"clientId": "w", "accessToken": "a"})
        first = ctx.queue()
        assert ctx.queue() is first
        assert _credentials(first) == {"clientId": "w", "accessToken": "a"}
        ctx.credentials = {"clientId": "w", "accessToken": "renewed"}  # worker-runner's new credentials
        renewed = ctx.queue()
        assert renewed is not first and _credentials(renewed)["accessToken"] == "renewed"
        ctx.credentials["accessToken"] = "changed in place"
        assert _credentials(ctx.queue())["accessToken"] == "changed in place"
        task = ctx.queue({"clientId": "task", "accessToken": "t"})
        assert task is not ctx.queue() and _credentials(task)["clientId"] == "task"
