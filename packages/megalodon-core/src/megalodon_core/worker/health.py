"""The ``/healthz`` document of a running worker.

``status`` is ``ok`` (HTTP 200) or ``unhealthy`` (503, with ``reason`` and every failing self-check in
``problems``: the worker is quarantined and claims nothing, :mod:`.self_checks`).  ``state`` is ``running``,
``draining`` or ``quarantined``.  A draining worker is healthy — it is finishing its tasks on request — so it
answers 200: a probe acting on 503 would otherwise kill exactly the tasks the drain protects.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import Worker


def health_document(worker: Worker) -> dict[str, Any]:
    """What ``GET /healthz`` answers for ``worker`` now."""
    problems = dict(worker.worker_file.problems)
    doc: dict[str, Any] = {
        "status": "unhealthy" if problems else "ok",
        "state": worker.worker_file.state,
        "runningTasks": sorted(r.task_id for r in worker.running.values() if r is not None),
        "lastClaimAgeSeconds": round(time.monotonic() - worker.last_claim_at, 3),
        "resolvedTasks": worker.resolved,
    }
    if problems:
        doc["reason"] = "; ".join(problems.values())
        doc["problems"] = problems
    return doc


__all__ = ["health_document"]
