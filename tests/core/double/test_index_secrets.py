"""The small index and secrets services, with their real scope names."""

from __future__ import annotations

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble


async def test_index_insert_and_find(double: TaskclusterDouble) -> None:
    opts = {"rootUrl": double.root_url, "maxRetries": 0}
    creds = double.add_client("project/indexer", "tok", ["index:insert-task:project.a.*"])
    index = taskcluster.aio.Index({**opts, "credentials": creds})
    task_id = taskcluster.slugId()
    expires = taskcluster.stringDate(taskcluster.fromNow("1 day"))
    await index.insertTask("project.a.latest", {"taskId": task_id, "rank": 1, "data": {}, "expires": expires})
    found = await taskcluster.aio.Index(opts).findTask("project.a.latest")
    assert found["taskId"] == task_id
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await index.insertTask("project.b", {"taskId": task_id, "rank": 1, "data": {}, "expires": expires})
    assert err.value.status_code == 403
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await taskcluster.aio.Index(opts).findTask("project.nothing")
    assert err.value.status_code == 404


async def test_secrets(double: TaskclusterDouble) -> None:
    opts = {"rootUrl": double.root_url, "maxRetries": 0}
    admin = taskcluster.aio.Secrets({**opts, "credentials": double.root_credentials})
    expires = taskcluster.stringDate(taskcluster.fromNow("1 day"))
    await admin.set("worker/token", {"secret": {"token": "s3cr3t"}, "expires": expires})
    reader = taskcluster.aio.Secrets(
        {**opts, "credentials": double.add_client("project/reader", "tok", ["secrets:get:worker/*"])}
    )
    assert (await reader.get("worker/token"))["secret"] == {"token": "s3cr3t"}
    assert (await admin.list())["secrets"] == ["worker/token"]
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await reader.set("worker/token", {"secret": {}, "expires": expires})
    assert err.value.status_code == 403
    await admin.remove("worker/token")
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await reader.get("worker/token")
    assert err.value.status_code == 404
