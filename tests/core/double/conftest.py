"""Shared fixtures for the Taskcluster double's tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble


def iso_in(seconds: float) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def task_definition(task_queue_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "taskQueueId": task_queue_id,
        "created": iso_in(0),
        "deadline": iso_in(3600),
        "expires": iso_in(86400),
        "payload": {},
        "metadata": {"name": "t", "description": "d", "owner": "o@example.com", "source": "https://example.com"},
    }
    body.update(overrides)
    return body


@pytest.fixture
async def double() -> AsyncIterator[TaskclusterDouble]:
    async with TaskclusterDouble(claim_work_wait=1.0, resolver_interval=0.05) as d:
        yield d


@pytest.fixture
async def root_queue(double: TaskclusterDouble) -> AsyncIterator[Any]:
    async with taskcluster.aio.createSession() as session:
        yield taskcluster.aio.Queue(
            {"rootUrl": double.root_url, "credentials": double.root_credentials, "maxRetries": 0},
            session=session,
        )


@pytest.fixture
def task_def() -> Callable[..., dict[str, Any]]:
    """Factory for valid createTask bodies: ``task_def("prov/wt", priority="high")``."""
    return task_definition
