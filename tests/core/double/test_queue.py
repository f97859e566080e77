"""Focused queue behaviour: long polls, reclaims, conflicts and the time-driven resolvers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble

TaskDef = Callable[..., dict[str, Any]]
CLAIM = {"workerGroup": "g", "workerId": "w", "tasks": 1}


def client(double: TaskclusterDouble, creds: dict[str, str], **opts: Any) -> Any:
    return taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": creds, "maxRetries": 0, **opts})


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    give_up = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < give_up, "timed out"
        await asyncio.sleep(0.02)


async def test_claim_work_long_poll_returns_when_task_created(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef
) -> None:
    double.queue.config.claim_work_wait = 10.0
    worker = client(double, double.worker_credentials("prov", "lp", "g", "w"))
    started = time.monotonic()
    poll = asyncio.create_task(worker.claimWork("prov/lp", CLAIM))
    await asyncio.sleep(0.3)
    assert not poll.done()
    task_id = taskcluster.slugId()
    await root_queue.createTask(task_id, task_def("prov/lp"))
    result = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - started < 3
    [claim] = result["tasks"]
    assert claim["status"]["taskId"] == task_id
    assert claim["takenUntil"].endswith("+00:00")
    assert claim["credentials"]["clientId"].startswith(f"task-client/{task_id}/0/on/g/w/until/")


async def test_empty_claim_work_times_out(double: TaskclusterDouble) -> None:
    double.queue.config.claim_work_wait = 0.3
    started = time.monotonic()
    result = await client(double, double.root_credentials).claimWork("prov/empty", CLAIM)
    assert result == {"tasks": []}
    assert 0.25 < time.monotonic() - started < 2


async def test_priority_order_and_multiple(double: TaskclusterDouble, root_queue: Any, task_def: TaskDef) -> None:
    low, high = taskcluster.slugId(), taskcluster.slugId()
    await root_queue.createTask(low, task_def("prov/prio", priority="low"))
    await root_queue.createTask(high, task_def("prov/prio", priority="high"))
    result = await root_queue.claimWork("prov/prio", {**CLAIM, "tasks": 3})
    assert [c["status"]["taskId"] for c in result["tasks"]] == [high, low]


async def test_reclaim_extends_and_returns_new_credentials(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef
) -> None:
    task_id = taskcluster.slugId()
    await root_queue.createTask(task_id, task_def("prov/recl"))
    [claim] = (await root_queue.claimWork("prov/recl", CLAIM))["tasks"]
    await asyncio.sleep(0.01)
    task_queue = client(double, claim["credentials"])
    reclaimed = await task_queue.reclaimTask(task_id, "0")
    assert reclaimed["takenUntil"] > claim["takenUntil"].replace("+00:00", "Z")
    assert reclaimed["credentials"]["clientId"] != claim["credentials"]["clientId"]
    assert double.task_state(task_id)["runs"][0]["takenUntil"] == reclaimed["takenUntil"]
    # the new credentials work, and so do the old ones until their own expiry
    await client(double, reclaimed["credentials"]).reclaimTask(task_id, "0")
    await task_queue.reportCompleted(task_id, "0")
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await task_queue.reclaimTask(task_id, "0")
    assert err.value.status_code == 409


async def test_resolution_conflicts_and_idempotency(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef
) -> None:
    task_id = taskcluster.slugId()
    definition = task_def("prov/conf")
    await root_queue.createTask(task_id, definition)
    assert (await root_queue.createTask(task_id, definition))["status"]["taskId"] == task_id
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await root_queue.createTask(task_id, {**definition, "payload": {"other": True}})
    assert err.value.status_code == 409
    [claim] = (await root_queue.claimWork("prov/conf", CLAIM))["tasks"]
    tq = client(double, claim["credentials"])
    await tq.reportFailed(task_id, "0")
    await tq.reportFailed(task_id, "0")
    for call in (tq.reportCompleted(task_id, "0"), tq.reportException(task_id, "0", {"reason": "internal-error"})):
        with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
            await call
        assert err.value.status_code == 409
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await tq.reportCompleted(task_id, "1")
    assert err.value.status_code == 403


@pytest.mark.parametrize(("reason", "created"), [("worker-shutdown", "retry"), ("intermittent-task", "task-retry")])
async def test_exception_retries(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef, reason: str, created: str
) -> None:
    task_id = taskcluster.slugId()
    await root_queue.createTask(task_id, task_def("prov/exc", retries=1))
    [claim] = (await root_queue.claimWork("prov/exc", CLAIM))["tasks"]
    status = (await client(double, claim["credentials"]).reportException(task_id, "0", {"reason": reason}))["status"]
    assert status["state"] == "pending" and status["retriesLeft"] == 0
    assert status["runs"][1]["reasonCreated"] == created
    [claim] = (await root_queue.claimWork("prov/exc", CLAIM))["tasks"]
    assert claim["runId"] == 1
    status = (await client(double, claim["credentials"]).reportException(task_id, "1", {"reason": reason}))["status"]
    assert status["state"] == "exception" and len(status["runs"]) == 2


async def test_claim_expiry_retries(task_def: TaskDef) -> None:
    async with TaskclusterDouble(claim_timeout=0.3, claim_work_wait=0.5, resolver_interval=0.05) as double:
        queue = client(double, double.root_credentials)
        task_id = taskcluster.slugId()
        await queue.createTask(task_id, task_def("prov/expire", retries=1))
        [claim] = (await queue.claimWork("prov/expire", CLAIM))["tasks"]
        await wait_until(lambda: double.task_state(task_id)["runs"][0]["state"] == "exception")
        status = double.task_state(task_id)
        assert status["runs"][0]["reasonResolved"] == "claim-expired"
        assert status["runs"][1] == {**status["runs"][1], "state": "pending", "reasonCreated": "retry"}
        assert status["retriesLeft"] == 0
        # expired-but-within-grace credentials still authenticate, and learn about it through a 409
        with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
            await client(double, claim["credentials"]).reclaimTask(task_id, "0")
        assert err.value.status_code == 409
        [claim] = (await queue.claimWork("prov/expire", CLAIM))["tasks"]
        assert claim["runId"] == 1
        await wait_until(lambda: double.task_state(task_id)["state"] == "exception")
        assert len(double.task_state(task_id)["runs"]) == 2  # no retries left


async def test_deadline_exceeded(task_def: TaskDef) -> None:
    async with TaskclusterDouble(deadline_delay=0.3, claim_work_wait=0.3, resolver_interval=0.05) as double:
        queue = client(double, double.root_credentials)
        running, pending, blocked = taskcluster.slugId(), taskcluster.slugId(), taskcluster.slugId()
        soon = {"deadline": taskcluster.stringDate(taskcluster.fromNow("1 second"))}
        await queue.createTask(running, task_def("prov/dl", **soon))
        [claim] = (await queue.claimWork("prov/dl", CLAIM))["tasks"]
        await queue.createTask(pending, task_def("prov/dl", **soon))
        await queue.createTask(blocked, task_def("prov/dl", dependencies=[pending], **soon))
        await asyncio.sleep(1.1)
        with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
            await client(double, claim["credentials"]).reclaimTask(running, "0")
        assert err.value.status_code == 409 and "deadline" in str(err.value)
        assert (await queue.claimWork("prov/dl", CLAIM))["tasks"] == []
        await wait_until(lambda: double.task_state(blocked)["state"] == "exception")
        for task_id in (running, pending):
            [run] = double.task_state(task_id)["runs"]
            assert (run["state"], run["reasonResolved"]) == ("exception", "deadline-exceeded")
        [run] = double.task_state(blocked)["runs"]
        assert (run["reasonCreated"], run["reasonResolved"]) == ("exception", "deadline-exceeded")


async def test_dependencies_schedule_after_completion(
    double: TaskclusterDouble, root_queue: Any, task_def: TaskDef
) -> None:
    up, down = taskcluster.slugId(), taskcluster.slugId()
    await root_queue.createTask(up, task_def("prov/dep"))
    created = await root_queue.createTask(down, task_def("prov/dep", dependencies=[up]))
    assert created["status"]["state"] == "unscheduled" and created["status"]["runs"] == []
    [claim] = (await root_queue.claimWork("prov/dep", CLAIM))["tasks"]
    await client(double, claim["credentials"]).reportCompleted(up, "0")
    [claim] = (await root_queue.claimWork("prov/dep", CLAIM))["tasks"]
    assert claim["status"]["taskId"] == down
    dependents = await root_queue.listDependentTasks(up)
    assert [t["status"]["taskId"] for t in dependents["tasks"]] == [down]


async def test_cancel(double: TaskclusterDouble, root_queue: Any, task_def: TaskDef) -> None:
    task_id = taskcluster.slugId()
    await root_queue.createTask(task_id, task_def("prov/cancel"))
    [claim] = (await root_queue.claimWork("prov/cancel", CLAIM))["tasks"]
    status = double.cancel_task(task_id)
    assert status["runs"][0]["reasonResolved"] == "canceled"
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await client(double, claim["credentials"]).reclaimTask(task_id, "0")
    assert err.value.status_code == 409
    await root_queue.cancelTask(task_id)
    assert double.task_state(task_id) == status


async def test_create_task_validation(root_queue: Any, task_def: TaskDef) -> None:
    past = taskcluster.stringDate(taskcluster.fromNow("-1 hour"))
    for body in (task_def("prov/bad", deadline=past), task_def("prov/bad", metadata={"name": "x"})):
        with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
            await root_queue.createTask(taskcluster.slugId(), body)
        assert err.value.status_code == 400
