"""Fault injection through the real client's retry logic."""

from __future__ import annotations

import time
from typing import Any

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import Fault, TaskclusterDouble


def queue(double: TaskclusterDouble, retries: int = 5) -> Any:
    return taskcluster.aio.Queue(
        {"rootUrl": double.root_url, "credentials": double.root_credentials, "maxRetries": retries}
    )


async def test_5xx_then_success_is_retried(double: TaskclusterDouble) -> None:
    double.faults.add(Fault(method="ping", status=503, times=2))
    assert (await queue(double).ping())["alive"] is True
    assert double.calls["ping"] == 3


async def test_connection_reset_is_retried(double: TaskclusterDouble) -> None:
    double.faults.add(Fault(method="pendingTasks", reset=True, times=1))
    assert (await queue(double).pendingTasks("prov/reset"))["pendingTasks"] == 0
    assert double.calls["pendingTasks"] == 2


async def test_persistent_fault_and_clear(double: TaskclusterDouble) -> None:
    double.faults.add(Fault(path_regex=r"/pending/", status=409, times=-1))
    for _ in range(2):
        with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
            await queue(double, retries=0).pendingTasks("prov/x")
        assert err.value.status_code == 409 and err.value.body["code"] == "RequestConflict"
    double.faults.clear()
    assert (await queue(double, retries=0).pendingTasks("prov/x"))["pendingTasks"] == 0


async def test_delay(double: TaskclusterDouble) -> None:
    double.faults.add(Fault(method="ping", delay=0.3))
    started = time.monotonic()
    await queue(double).ping()
    assert time.monotonic() - started >= 0.3
    assert len(double.faults) == 0


async def test_storage_put_fault_is_retried_by_upload_helper(double: TaskclusterDouble) -> None:
    from taskcluster.aio.download import downloadToBuf
    from taskcluster.aio.upload import uploadFromBuf

    double.faults.add(Fault(method="putUrl-storage", status=500, times=1))
    objects = taskcluster.aio.Object({"rootUrl": double.root_url, "credentials": double.root_credentials})
    data = b"\x01" * 20000  # large enough for the putUrl method
    expires = taskcluster.stringDate(taskcluster.fromNow("1 hour"))
    await uploadFromBuf(
        projectId="p", name="flaky.bin", contentType="application/octet-stream", contentLength=len(data),
        expires=expires, data=data, objectService=objects,
    )  # fmt: skip
    assert double.calls["putUrl-storage"] == 2
    assert bytes((await downloadToBuf(name="flaky.bin", objectService=objects))[0]) == data
