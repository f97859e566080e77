"""No chain-of-trust warning where nothing asks for it; a clear one the first time a task does."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from megalodon_core.config import parse_config
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker_context import WorkerContext
from megalodon_features.chain_of_trust import ChainOfTrustFeature

LOGGER = "megalodon_features.chain_of_trust"


async def test_no_key_no_start_up_warning_one_warning_at_first_request(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(harness.config("x"), PluginHost().config_fields())
    assert config.enableChainOfTrust and not config.ed25519SigningKeyLocation
    async with aiohttp.ClientSession() as session:
        feature = ChainOfTrustFeature(WorkerContext(config, PluginHost(load_entry_points=False), session))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await feature.initialise()
            assert not [r for r in caplog.records if r.name == LOGGER]
            assert not feature.is_enabled()
            first = feature.disabled_reason()
            second = feature.disabled_reason()
    assert first == second and first is not None and "ed25519SigningKeyLocation" in first
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert "requested chainOfTrust" in warnings[0] and "new-ed25519-keypair" in warnings[0]


async def test_a_native_run_on_a_pool_without_a_key_logs_no_chain_of_trust_warning(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        out = await harness.run({"command": [["true"]], "maxRunTime": 10})
    assert out.state == "completed", out.log
    assert not [r for r in caplog.records if "chain" in r.getMessage().lower()]
