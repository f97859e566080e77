"""Queue records: tasks, runs and artifacts, rendered in the queue's JSON shapes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .timeutil import iso

PRIORITIES = ["highest", "very-high", "high", "medium", "low", "very-low", "lowest"]
RESOLVED_STATES = {"completed", "failed", "exception"}


def priority_rank(priority: str) -> int:
    """Lower is more urgent; the legacy ``normal`` priority ranks with ``lowest``."""
    return PRIORITIES.index("lowest" if priority == "normal" else priority)


@dataclass
class Run:
    run_id: int
    state: str
    reason_created: str
    scheduled: dt.datetime
    reason_resolved: str | None = None
    worker_group: str | None = None
    worker_id: str | None = None
    taken_until: dt.datetime | None = None
    started: dt.datetime | None = None
    resolved: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runId": self.run_id, "state": self.state, "reasonCreated": self.reason_created}
        if self.reason_resolved is not None:
            out["reasonResolved"] = self.reason_resolved
        if self.worker_group is not None:
            out["workerGroup"] = self.worker_group
            out["workerId"] = self.worker_id
        if self.taken_until is not None:
            out["takenUntil"] = iso(self.taken_until)
        out["scheduled"] = iso(self.scheduled)
        if self.started is not None:
            out["started"] = iso(self.started)
        if self.resolved is not None:
            out["resolved"] = iso(self.resolved)
        return out


@dataclass
class Artifact:
    name: str
    storage_type: str
    content_type: str
    expires: dt.datetime
    present: bool
    details: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "storageType": self.storage_type,
            "name": self.name,
            "expires": iso(self.expires),
            "contentType": self.content_type,
        }

    def summary(self) -> dict[str, Any]:
        """What the 409 "different properties" message quotes."""
        return {"storageType": self.storage_type, "contentType": self.content_type, "expires": iso(self.expires)}


@dataclass
class Task:
    task_id: str
    definition: dict[str, Any]
    created: dt.datetime
    deadline: dt.datetime
    expires: dt.datetime
    retries_left: int
    seq: int
    runs: list[Run] = field(default_factory=list)
    artifacts: dict[tuple[int, str], Artifact] = field(default_factory=dict)
    #: Order key within a priority: when the current pending run entered the queue.
    queued_at: tuple[float, int] = (0.0, 0)

    @property
    def state(self) -> str:
        return self.runs[-1].state if self.runs else "unscheduled"

    @property
    def resolved(self) -> bool:
        return self.state in RESOLVED_STATES

    def run(self, run_id: int) -> Run | None:
        return self.runs[run_id] if 0 <= run_id < len(self.runs) else None

    def status(self) -> dict[str, Any]:
        d = self.definition
        return {
            "taskId": self.task_id,
            "provisionerId": d["provisionerId"],
            "workerType": d["workerType"],
            "taskQueueId": d["taskQueueId"],
            "schedulerId": d["schedulerId"],
            "projectId": d["projectId"],
            "taskGroupId": d["taskGroupId"],
            "priority": d["priority"],
            "deadline": d["deadline"],
            "expires": d["expires"],
            "retriesLeft": self.retries_left,
            "state": self.state,
            "runs": [r.to_json() for r in self.runs],
        }
