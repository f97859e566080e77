"""What the worker loop needs of worker-runner, and the null link used when worker-runner did not start it.

The worker depends on this shape, not on :mod:`megalodon_core.workerrunner`, so the loop can be driven
(and tested) with a scripted runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class RunnerLink(Protocol):
    """What the worker needs of the worker-runner protocol (a null one when not run by worker-runner)."""

    def capable(self, capability: str) -> bool: ...

    async def shutdown(self) -> bool: ...

    async def error_report(
        self, description: str, extra: Mapping[str, Any] | None = None, *, title: str = ..., kind: str = ...
    ) -> bool: ...


class NullRunnerLink:
    """Not run by worker-runner: no capabilities, nothing is sent (so the worker never branches on it)."""

    def capable(self, capability: str) -> bool:
        return False

    async def shutdown(self) -> bool:
        return False

    async def error_report(
        self, description: str, extra: Mapping[str, Any] | None = None, *, title: str = "", kind: str = ""
    ) -> bool:
        return False
