"""A worker with core's metrics plugins and ``/metrics`` served over HTTP, and reading a scrape of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from megalodon_core import __version__
from megalodon_core.config import parse_config
from megalodon_core.metrics import Metrics, MetricsPlugin, serve
from megalodon_core.phase_metrics import PhaseMetrics
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker


class Samples:
    """One scrape: ``count(name, **labels)``, ``total(...)``, ``below(name, le, ...)`` (bucket counts)."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return float(found[0])

    def count(self, name: str, **labels: str) -> float:
        return self.value(f"{name}_count", **labels)

    def total(self, name: str, **labels: str) -> float:
        return self.value(f"{name}_sum", **labels)

    def below(self, name: str, le: str, **labels: str) -> float:
        return self.value(f"{name}_bucket", le=le, **labels)


@asynccontextmanager
async def scraped_worker(harness: Harness, worker_type: str, **config: Any) -> AsyncIterator[tuple[Worker, str]]:
    """A worker with core's metrics plugins and its ``/metrics`` served, as ``megalodon run`` sets it up."""
    host = PluginHost()
    cfg = parse_config(harness.config(worker_type, **config), host.config_fields())
    metrics = Metrics(version=__version__, workerPoolId=cfg.task_queue_id, workerId=cfg.workerId)
    host.register(MetricsPlugin(metrics), name="megalodon-core.metrics")
    host.register(
        PhaseMetrics(metrics, task_queue_id=cfg.task_queue_id, capacity=cfg.capacity), name="megalodon-core.phases"
    )
    server = await serve(metrics)
    try:
        yield Worker(cfg, host), f"{server.url}/metrics"
    finally:
        await server.stop()


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return Samples(await resp.text())
