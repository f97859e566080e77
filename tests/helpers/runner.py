"""A worker-runner link that records what the worker sends it (error-reports, shutdown requests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorReport:
    """One ``error-report`` message, as the worker would send it to worker-runner."""

    description: str
    extra: dict[str, Any]
    title: str
    kind: str


@dataclass
class RecordingRunner:
    """Pass as ``Worker(..., runner=...)``.  ``capable_of_everything``: whether it claims every capability (``shutdown``
    among them), as worker-runner does; otherwise the worker sees none, as without worker-runner."""

    capable_of_everything: bool = False
    reports: list[ErrorReport] = field(default_factory=list)
    shutdowns: int = 0

    def capable(self, capability: str) -> bool:
        return self.capable_of_everything

    async def shutdown(self) -> bool:
        self.shutdowns += 1
        return self.capable_of_everything

    async def error_report(
        self, description: str, extra: Mapping[str, Any] | None = None, *, title: str = "", kind: str = ""
    ) -> bool:
        self.reports.append(ErrorReport(description, dict(extra or {}), title, kind))
        return True
