"""The metrics server as a scraper sees it: real HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from megalodon_core.metrics import Metrics, serve


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:
            return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_metrics_scrape_reflects_recorded_events() -> None:
    m = Metrics(version="1.2.3", workerPoolId="proj/pool")
    m.task_claimed()
    m.task_claimed()
    m.task_resolved("completed", None, 42.0)
    m.task_resolved("exception", "worker-shutdown", 7200.0)
    m.bytes_uploaded(1000)
    m.bytes_uploaded(24)
    m.upload_error()
    m.reclaim_failed()
    m.observe_queue_call("claimWork", 0.03)
    async with m.timed("reclaimTask"):
        await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        async with m.timed("reportCompleted"):
            raise RuntimeError("queue down")
    m.set_running(3)

    server = await serve(m, port=0)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        status, content_type, text = await _get(server.url + "/metrics")
    finally:
        await server.stop()

    assert status == 200
    assert content_type.startswith("text/plain; version=")
    s = _samples(text)
    assert s[("megalodon_tasks_claimed_total", ())] == 2
    assert s[("megalodon_tasks_resolved_total", (("reason", ""), ("state", "completed")))] == 1
    assert s[("megalodon_tasks_resolved_total", (("reason", "worker-shutdown"), ("state", "exception")))] == 1
    assert s[("megalodon_task_duration_seconds_count", ())] == 2
    assert s[("megalodon_task_duration_seconds_sum", ())] == 7242.0
    assert s[("megalodon_task_duration_seconds_bucket", (("le", "60.0"),))] == 1
    assert s[("megalodon_task_duration_seconds_bucket", (("le", "86400.0"),))] == 2
    assert s[("megalodon_bytes_uploaded_total", ())] == 1024
    assert s[("megalodon_upload_errors_total", ())] == 1
    assert s[("megalodon_reclaim_failures_total", ())] == 1
    assert s[("megalodon_queue_call_seconds_count", (("method", "claimWork"),))] == 1
    assert s[("megalodon_queue_call_seconds_count", (("method", "reclaimTask"),))] == 1
    assert s[("megalodon_queue_call_seconds_count", (("method", "reportCompleted"),))] == 1
    assert s[("megalodon_tasks_running", ())] == 3
    assert s[("megalodon_worker_info", (("version", "1.2.3"), ("workerPoolId", "proj/pool")))] == 1


async def test_metrics_speaks_openmetrics_when_asked() -> None:
    m = Metrics(version="x")
    m.task_claimed()
    server = await serve(m)
    try:
        status, content_type, text = await _get(
            server.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    finally:
        await server.stop()
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


async def test_healthz_ok_and_unhealthy() -> None:
    doc: dict[str, Any] = {"status": "ok", "runningTasks": ["abc"], "lastClaimAgeSeconds": 1.5}
    server = await serve(Metrics(), health=lambda: doc)
    try:
        status, content_type, text = await _get(server.url + "/healthz")
        assert status == 200
        assert content_type.startswith("application/json")
        assert text == '{"status": "ok", "runningTasks": ["abc"], "lastClaimAgeSeconds": 1.5}'

        doc["status"] = "stuck"
        status, _, text = await _get(server.url + "/healthz")
        assert status == 503
        assert '"status": "stuck"' in text
    finally:
        await server.stop()


async def test_healthz_failing_check_is_503() -> None:
    def broken() -> dict[str, Any]:
        raise ValueError("no state")

    server = await serve(Metrics(), health=broken)
    try:
        status, _, text = await _get(server.url + "/healthz")
    finally:
        await server.stop()
    assert status == 503
    assert "ValueError: no state" in text


async def test_healthz_default_is_ok_and_unknown_path_404() -> None:
    server = await serve(Metrics())
    try:
        assert (await _get(server.url + "/healthz"))[0] == 200
        assert (await _get(server.url + "/nope"))[0] == 404
    finally:
        await server.stop()


async def test_stop_releases_the_port() -> None:
    server = await serve(Metrics())
    port = server.port
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(f"http://127.0.0.1:{port}/metrics")


async def test_two_instances_are_independent() -> None:
    a, b = Metrics(version="a"), Metrics(version="b")
    a.task_claimed()
    a.set_running(2)
    sa, sb = await serve(a), await serve(b)
    try:
        assert sa.port != sb.port
        ta = _samples((await _get(sa.url + "/metrics"))[2])
        tb = _samples((await _get(sb.url + "/metrics"))[2])
    finally:
        await sa.stop()
        await sb.stop()
    assert ta[("megalodon_tasks_claimed_total", ())] == 1
    assert tb[("megalodon_tasks_claimed_total", ())] == 0
    assert ta[("megalodon_tasks_running", ())] == 2
    assert tb[("megalodon_tasks_running", ())] == 0
    assert ("megalodon_worker_info", (("version", "b"),)) in tb


def test_render_without_server_and_ignores_nonpositive_bytes() -> None:
    m = Metrics()
    m.bytes_uploaded(0)
    m.bytes_uploaded(-5)
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    assert _samples(body.decode())[("megalodon_bytes_uploaded_total", ())] == 0


def test_metrics_plugin_records_from_the_lifecycle_hooks() -> None:
    from megalodon_core.metrics import MetricsPlugin
    from megalodon_core.plugins import PluginHost

    metrics = Metrics(version="9")
    host = PluginHost(load_entry_points=False)
    host.register(MetricsPlugin(metrics), name="megalodon-core.metrics")
    host.task_claimed(task_id="t", run_id=0, task={})
    host.running_changed(running=2)
    host.queue_call(method="claimWork", seconds=0.2)
    host.reclaim_failed(task_id="t", run_id=0)
    host.task_resolved(task_id="t", run_id=0, state="exception", reason="canceled", duration=4.0)
    body = metrics.render()[0].decode()
    assert "megalodon_tasks_claimed_total 1.0" in body
    assert "megalodon_tasks_running 2.0" in body
    assert 'megalodon_queue_call_seconds_count{method="claimWork"} 1.0' in body
    assert "megalodon_reclaim_failures_total 1.0" in body
    assert 'megalodon_tasks_resolved_total{reason="canceled",state="exception"} 1.0' in body
    assert "megalodon_task_duration_seconds_sum 4.0" in body
