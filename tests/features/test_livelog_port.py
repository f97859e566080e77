"""livelogPortBase: generic-worker's live log ports start there, and an operator's firewall is opened for it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from megalodon_core.config import config_warnings, parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker_context import WorkerContext
from megalodon_features.livelog import LiveLogFeature, listen_port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_port_choice(harness: Harness) -> None:
    fields = PluginHost().config_fields()
    assert listen_port(parse_config(harness.config("x"), fields)) == 0  # neither key: any free port
    assert listen_port(parse_config(harness.config("x", livelogPortBase=60100), fields)) == 60100
    both = parse_config(harness.config("x", livelogPortBase=60100, livelogExposePort=60200), fields)
    assert listen_port(both) == 60200
    # Honoured, so no "has no effect" warning for it.
    assert not [w for w in config_warnings({"livelogPortBase": 60100}) if "livelogPortBase" in w]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_the_server_listens_on_livelog_port_base(harness: Harness, session: aiohttp.ClientSession) -> None:
    port = free_port()
    config = parse_config(harness.config("x", livelogPortBase=port), PluginHost().config_fields())
    feature = LiveLogFeature(WorkerContext(config, PluginHost(load_entry_points=False), session, config.credentials))
    await feature.initialise()
    try:
        assert feature.start_error is None
        assert feature.server.port == port
        assert feature.base_url() == f"http://127.0.0.1:{port}"
        async with session.get(f"http://127.0.0.1:{port}/log/unknown-secret") as resp:
            assert resp.status == 404
    finally:
        await feature.shutdown()
