"""The live log's link to the backing log is created while the backing log's bytes are still being sent
(one round trip less per task, issue 13), and the resolution waits for both."""

from __future__ import annotations

import asyncio

from megalodon_core.double.faults import Fault
from megalodon_core.testing import Harness

LIVE, BACKING = "public/logs/live.log", "public/logs/live_backing.log"


async def test_the_log_link_is_made_while_the_backing_log_uploads(harness: Harness) -> None:
    hold = asyncio.Event()
    harness.double.faults.add(Fault(method="putUrl-storage", hold=hold))  # the only PUT: the backing log
    seen: dict[str, object] = {}

    async def during(task_id: str) -> None:
        try:
            async with asyncio.timeout(60):  # a worker that links after the upload never gets there
                while True:
                    try:
                        seen["link"] = harness.double.artifact_content(task_id, 0, LIVE)[1]
                        break
                    except KeyError:
                        await asyncio.sleep(0.02)
            seen["state"] = harness.double.task_state(task_id)["state"]
        finally:
            hold.set()

    outcome = await harness.run({"command": [["echo", "hello"]], "maxRunTime": 30}, during=during)
    link = seen["link"]
    assert isinstance(link, dict) and link["storageType"] == "link" and link["artifact"] == BACKING
    assert seen["state"] == "running", "the resolution was reported before the log's upload ended"
    assert outcome.state == "completed" and "hello" in outcome.log


async def test_a_failed_backing_log_upload_still_waits_for_the_link(harness: Harness) -> None:
    """The upload's error is the one reported (exception), and no link request is left running."""
    harness.double.faults.add(Fault(method="putUrl-storage", status=403, times=-1))
    outcome = await harness.run({"command": [["true"]], "maxRunTime": 30})
    assert outcome.state == "exception" and outcome.reason == "resource-unavailable"
    assert outcome.artifacts[LIVE]["storageType"] == "link"
