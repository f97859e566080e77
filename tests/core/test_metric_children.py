"""A labelled metric's children are looked up once (``labels()`` costs microseconds a dozen times per
task: issue 13) and are the metric's own: the exposition is the same as with ``labels()``."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from megalodon_core.metric_children import Children


def test_a_child_is_made_once_and_is_the_metrics_own(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    metric = Histogram("calls", "Calls.", ["method", "queue"], registry=registry)
    children = Children(metric)
    made: list[tuple[str, ...]] = []
    labels = metric.labels

    def counting(*values: str) -> Histogram:
        made.append(values)
        return labels(*values)

    monkeypatch.setattr(metric, "labels", counting)
    children("claimWork", "q").observe(0.5)
    children("claimWork", "q").observe(1.5)
    children("reportCompleted", "q").observe(0.1)
    assert made == [("claimWork", "q"), ("reportCompleted", "q")]
    assert children("claimWork", "q") is labels("claimWork", "q")
    text = generate_latest(registry).decode()
    assert 'calls_count{method="claimWork",queue="q"} 2.0' in text
    assert 'calls_sum{method="claimWork",queue="q"} 2.0' in text
    assert 'calls_count{method="reportCompleted",queue="q"} 1.0' in text
