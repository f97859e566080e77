"""What the benchmark scenarios share: the queue names, task and config builders, summaries, scratch dirs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from megalodon_core.double import TaskclusterDouble
from megalodon_core.timefmt import iso, utcnow

PROVISIONER = "megalodon-bench"
WORKER_GROUP = "bench-group"
WORKER_ID = "bench-worker"


def make_task(payload: dict[str, Any], worker_type: str) -> dict[str, Any]:
    """A task definition for ``worker_type`` (megalodon_core.testing needs pytest, absent from the bench env)."""
    now = utcnow()
    return {
        "taskQueueId": f"{PROVISIONER}/{worker_type}",
        "schedulerId": "bench-scheduler",
        "created": iso(now),
        "deadline": iso(now + dt.timedelta(hours=1)),
        "expires": iso(now + dt.timedelta(days=1)),
        "scopes": [],
        "payload": payload,
        "metadata": {"name": "bench", "description": "benchmark", "owner": "bench@example.com", "source": "https://x/"},
    }


def config_for(
    root_url: str, credentials: dict[str, str], worker_type: str, workdir: Path, **overrides: Any
) -> dict[str, Any]:
    """A generic-worker style config for ``worker_type`` on any queue (the double or a real one)."""
    cfg: dict[str, Any] = {
        "rootURL": root_url,
        "clientId": credentials["clientId"],
        "accessToken": credentials["accessToken"],
        "provisionerId": PROVISIONER,
        "workerType": worker_type,
        "workerGroup": WORKER_GROUP,
        "workerId": WORKER_ID,
        "executor": "native",
        "tasksDir": str(workdir / "tasks"),
        "stateDir": str(workdir / "state"),
        "requiredDiskSpaceMegabytes": 16,
        "cachesDir": str(workdir / "caches"),
        "downloadsDir": str(workdir / "downloads"),
        "numberOfTasksToRun": 1,
        "capacity": 1,
        "maxTaskRunTime": 3600,
    }
    cfg.update(overrides)
    return cfg


def worker_config(double: TaskclusterDouble, worker_type: str, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """:func:`config_for` the double, with worker credentials it mints."""
    creds = double.worker_credentials(PROVISIONER, worker_type, WORKER_GROUP, WORKER_ID)
    return config_for(double.root_url, creds, worker_type, workdir, **overrides)


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


@contextlib.asynccontextmanager
async def scratch(prefix: str) -> AsyncIterator[Path]:
    """A temp dir removed afterwards even if the benchmark crashed (big files must not pile up in /tmp)."""
    path = Path(tempfile.mkdtemp(prefix=f"megalodon-bench-{prefix}-"))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)
