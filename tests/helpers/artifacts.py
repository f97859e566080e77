"""Waiting for an artifact a running task's worker publishes (the live log reference, the shell page)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from megalodon_core.testing import Harness


async def wait_for_artifact(harness: Harness, task_id: str, name: str, within: float = 20.0) -> dict[str, Any]:
    """Run 0's artifact ``name``: its metadata once the double holds it; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            _, meta = harness.double.artifact_content(task_id, 0, name)
        except KeyError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was never published") from None
            await asyncio.sleep(0.025)
            continue
        return meta
