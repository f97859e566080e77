"""A minimal index service: insert and find tasks by namespace (for route-based lookups)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .api import Call, Endpoint
from .errors import TaskclusterError
from .schemas import INSERT_TASK
from .timeutil import iso, now, parse_iso


@dataclass
class IndexedTask:
    namespace: str
    task_id: str
    rank: float
    data: dict[str, Any]
    expires: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "taskId": self.task_id,
            "rank": self.rank,
            "data": self.data,
            "expires": iso(self.expires),
        }


class IndexService:
    def __init__(self) -> None:
        self.entries: dict[str, IndexedTask] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("index", "ping", "GET", "/ping", self.ping),
            Endpoint("index", "findTask", "GET", "/task/<indexPath>", self.find_task),
            Endpoint(
                "index", "insertTask", "PUT", "/task/<namespace>", self.insert_task,
                "index:insert-task:<namespace>", INSERT_TASK, "v1/insert-task-request.json#",
            ),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    def insert(self, namespace: str, task_id: str, rank: float, data: dict[str, Any], expires: dt.datetime) -> None:
        """Insert unless a higher-ranked entry already holds the namespace, like the real index."""
        current = self.entries.get(namespace)
        if current is None or current.expires < now() or rank >= current.rank:
            self.entries[namespace] = IndexedTask(namespace, task_id, rank, data, expires)

    async def insert_task(self, call: Call) -> Any:
        ns = call.params["namespace"]
        body = call.body
        self.insert(ns, body["taskId"], body["rank"], body["data"], parse_iso(body["expires"]))
        return self.entries[ns].to_json()

    async def find_task(self, call: Call) -> Any:
        entry = self.entries.get(call.params["indexPath"])
        if entry is None or entry.expires < now():
            raise TaskclusterError("ResourceNotFound", "Indexed task not found")
        return entry.to_json()
