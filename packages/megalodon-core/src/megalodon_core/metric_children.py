"""A labelled Prometheus metric's children, each looked up once.

``metric.labels(...)`` checks the label names, builds a key and takes the metric's lock on every call:
about 4 µs, a dozen times on every task (issue 13).  The label values the worker uses are few (queue
methods, phases, resolution states, its own task queue), so each child is kept once made; none is ever
removed from a metric, so a kept child is the metric's own.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """``children(*values)`` is ``metric.labels(*values)`` (values in the metric's label order), made once."""

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._made: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self._metric.labels(*values)
        return child


__all__ = ["Children"]
