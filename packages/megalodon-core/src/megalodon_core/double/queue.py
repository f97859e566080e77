"""The queue's task lifecycle: creation, claiming, reclaiming, resolution and the resolvers.

Time-driven behaviour (claim expiry, deadlines, dependency scheduling) runs in
``tick()``, which the server calls every ``resolver_interval`` seconds, the
same polling design as the real claim/deadline/dependency resolvers.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
from dataclasses import dataclass
from typing import Any

from .api import Call, Endpoint
from .auth import Authenticator
from .errors import TaskclusterError
from .model import PRIORITIES, RESOLVED_STATES, Run, Task, priority_rank
from .schemas import CLAIM_WORK, CREATE_TASK, TASK_EXCEPTION
from .timeutil import iso, iso_offset, js_seconds, now, parse_iso

QUEUE_ISSUER = "static/taskcluster/queue"
RETRYING_REASONS = {"worker-shutdown": "retry", "intermittent-task": "task-retry"}
MAX_DEADLINE = dt.timedelta(days=5)


@dataclass
class QueueConfig:
    claim_timeout: float = 1200.0
    claim_work_wait: float = 20.0
    deadline_delay: float = 60.0


def _page(call: Call, items: list[Any], key: str) -> tuple[list[Any], str | None]:
    """Continuation-token pagination over an already ordered list."""
    limit = int(call.query.get("limit", "1000") or 1000)
    start = 0
    token = call.query.get("continuationToken")
    if token:
        try:
            start = int(json.loads(base64.b64decode(token))[key])
        except (ValueError, KeyError, TypeError) as exc:
            raise TaskclusterError("InvalidRequestArguments", "Invalid continuationToken") from exc
    chunk = items[start : start + limit]
    nxt = None
    if start + limit < len(items):
        nxt = base64.b64encode(json.dumps({key: start + limit}).encode()).decode()
    return chunk, nxt


class QueueService:
    def __init__(self, auth: Authenticator, config: QueueConfig) -> None:
        self.auth = auth
        self.config = config
        self.tasks: dict[str, Task] = {}
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    # -- helpers shared with the artifact endpoints ---------------------------------------------

    def task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskclusterError("ResourceNotFound", f"Task `{task_id}` not found. Are you sure it was created?")
        return task

    def _notify(self) -> None:
        """Wake every claimWork long-poll; each re-checks its own task queue."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _enqueue(self, task: Task, reason: str) -> None:
        t = now()
        task.runs.append(Run(len(task.runs), "pending", reason, t))
        task.queued_at = (t.timestamp(), next(self._seq))
        self._notify()

    def _resolve(self, task: Task, run: Run, state: str, reason: str) -> None:
        run.state = state
        run.reason_resolved = reason
        run.resolved = now()

    # -- endpoints ------------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        resolve = "queue:resolve-task:<taskId>/<runId>"
        cancel_scopes = {
            "AnyOf": [
                "queue:cancel-task:<schedulerId>/<taskGroupId>/<taskId>",
                "queue:cancel-task-in-project:<projectId>",
                {"AllOf": ["queue:cancel-task", "assume:scheduler-id:<schedulerId>/<taskGroupId>"]},
            ]
        }
        create_scopes = {
            "AllOf": [
                {"each": "<scope>", "for": "scope", "in": "scopes"},
                {"each": "queue:route:<route>", "for": "route", "in": "routes"},
                "queue:create-task:project:<projectId>",
                "queue:scheduler-id:<schedulerId>",
                {
                    "AnyOf": [
                        {
                            "each": "queue:create-task:<priority>:<provisionerId>/<workerType>",
                            "for": "priority",
                            "in": "priorities",
                        }
                    ]
                },
            ]
        }
        claim_scopes = {"AllOf": ["queue:claim-work:<taskQueueId>", "queue:worker-id:<workerGroup>/<workerId>"]}
        return [
            Endpoint("queue", "ping", "GET", "/ping", self.ping),
            Endpoint("queue", "task", "GET", "/task/<taskId>", self.get_task, "queue:get-task:<taskId>"),
            Endpoint("queue", "status", "GET", "/task/<taskId>/status", self.get_status, "queue:status:<taskId>"),
            Endpoint(
                "queue", "createTask", "PUT", "/task/<taskId>", self.create_task, create_scopes,
                CREATE_TASK, "v1/create-task-request.json#",
            ),
            Endpoint("queue", "cancelTask", "POST", "/task/<taskId>/cancel", self.cancel, cancel_scopes),
            Endpoint(
                "queue", "listDependentTasks", "GET", "/task/<taskId>/dependents", self.dependents,
                "queue:list-dependent-tasks:<taskId>",
            ),
            Endpoint(
                "queue", "claimWork", "POST", "/claim-work/<taskQueueId>", self.claim_work, claim_scopes,
                CLAIM_WORK, "v1/claim-work-request.json#",
            ),
            Endpoint(
                "queue", "reclaimTask", "POST", "/task/<taskId>/runs/<runId>/reclaim", self.reclaim,
                "queue:reclaim-task:<taskId>/<runId>",
            ),
            Endpoint(
                "queue", "reportCompleted", "POST", "/task/<taskId>/runs/<runId>/completed", self.completed,
                resolve,
            ),
            Endpoint("queue", "reportFailed", "POST", "/task/<taskId>/runs/<runId>/failed", self.failed, resolve),
            Endpoint(
                "queue", "reportException", "POST", "/task/<taskId>/runs/<runId>/exception", self.exception,
                resolve, TASK_EXCEPTION, "v1/task-exception-request.json#",
            ),
            Endpoint(
                "queue", "pendingTasks", "GET", "/pending/<taskQueueId>", self.pending_tasks,
                "queue:pending-count:<taskQueueId>",
            ),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    async def get_task(self, call: Call) -> Any:
        return self.task(call.params["taskId"]).definition

    async def get_status(self, call: Call) -> Any:
        return {"status": self.task(call.params["taskId"]).status()}

    # -- createTask -----------------------------------------------------------------------------

    def _with_defaults(self, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
        tq = body.get("taskQueueId")
        prov, wt = body.get("provisionerId"), body.get("workerType")
        if tq is None and (prov is None or wt is None):
            raise TaskclusterError(
                "InputError", "at least a provisionerId and a workerType or a taskQueueId must be provided"
            )
        if tq is not None:
            tq_prov, tq_wt = tq.split("/", 1)
            if (prov is not None and prov != tq_prov) or (wt is not None and wt != tq_wt):
                raise TaskclusterError("InputError", 'taskQueueId must match "provisionerId/workerType"')
            prov, wt = tq_prov, tq_wt
        deadline = parse_iso(body["deadline"])
        expires = parse_iso(body["expires"]) if "expires" in body else deadline + dt.timedelta(days=365)
        return {
            "provisionerId": prov,
            "workerType": wt,
            "taskQueueId": f"{prov}/{wt}",
            "schedulerId": body.get("schedulerId", "-"),
            "projectId": body.get("projectId", "none"),
            "taskGroupId": body.get("taskGroupId", task_id),
            "dependencies": list(body.get("dependencies", [])),
            "requires": body.get("requires", "all-completed"),
            "routes": list(body.get("routes", [])),
            "priority": body.get("priority", "lowest"),
            "retries": body.get("retries", 5),
            "created": iso(parse_iso(body["created"])),
            "deadline": iso(deadline),
            "expires": iso(expires),
            "scopes": list(body.get("scopes", [])),
            "payload": body["payload"],
            "metadata": body["metadata"],
            "tags": body.get("tags", {}),
            "extra": body.get("extra", {}),
        }

    async def create_task(self, call: Call) -> Any:
        task_id = call.params["taskId"]
        try:
            definition = self._with_defaults(task_id, call.body)
        except ValueError as exc:
            raise TaskclusterError("InputError", f"invalid date-time: {exc}") from exc
        prio = definition["priority"]
        call.authorize(
            scopes=definition["scopes"],
            routes=definition["routes"],
            projectId=definition["projectId"],
            schedulerId=definition["schedulerId"],
            provisionerId=definition["provisionerId"],
            workerType=definition["workerType"],
            priorities=PRIORITIES[: priority_rank(prio) + 1] if prio != "normal" else ["normal"],
        )
        created = parse_iso(definition["created"])
        deadline = parse_iso(definition["deadline"])
        expires = parse_iso(definition["expires"])
        if deadline < created:
            raise TaskclusterError("InputError", "`deadline` cannot be later than `created`")
        if deadline < now():
            raise TaskclusterError("InputError", "`deadline` cannot be in the past")
        if deadline - created > MAX_DEADLINE:
            raise TaskclusterError("InputError", "`deadline` cannot be more than 5 days into the future")
        if expires < deadline:
            raise TaskclusterError("InputError", "`expires` cannot be before `deadline`")
        existing = self.tasks.get(task_id)
        if existing is not None:
            if existing.definition == definition:
                return {"status": existing.status()}
            raise TaskclusterError(
                "RequestConflict",
                f"taskId `{task_id}` already used by another task.\nThis could be the result of faulty idempotency!",
            )
        missing = [d for d in definition["dependencies"] if d not in self.tasks and d != task_id]
        if missing:
            listed = "".join(f"\n * {d}" for d in missing)
            raise TaskclusterError("InputError", f"`task.dependencies` references non-existing tasks:{listed}")
        for other in self.tasks.values():
            if (
                other.definition["taskGroupId"] == definition["taskGroupId"]
                and other.definition["schedulerId"] != definition["schedulerId"]
            ):
                raise TaskclusterError(
                    "RequestConflict",
                    f"Task group {definition['taskGroupId']} contains tasks with schedulerId "
                    f"{other.definition['schedulerId']}. You are attempting to include tasks from "
                    f"schedulerId {definition['schedulerId']}, which is not permitted.",
                )
        task = Task(task_id, definition, created, deadline, expires, definition["retries"], next(self._seq))
        self.tasks[task_id] = task
        if self._dependencies_met(task):
            self._enqueue(task, "scheduled")
        return {"status": task.status()}

    def _dependencies_met(self, task: Task) -> bool:
        deps = [self.tasks.get(d) for d in task.definition["dependencies"] if d != task.task_id]
        if task.definition["requires"] == "all-resolved":
            return all(d is not None and d.resolved for d in deps)
        return all(d is not None and d.state == "completed" for d in deps)

    async def dependents(self, call: Call) -> Any:
        task_id = call.params["taskId"]
        self.task(task_id)
        deps = [
            {"status": t.status(), "task": t.definition}
            for t in sorted(self.tasks.values(), key=lambda t: t.task_id)
            if task_id in t.definition["dependencies"] and t.task_id != task_id
        ]
        page, token = _page(call, deps, "offset")
        out: dict[str, Any] = {"taskId": task_id, "tasks": page}
        if token:
            out["continuationToken"] = token
        return out

    # -- cancel ---------------------------------------------------------------------------------

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        task = self.task(task_id)
        if task.resolved:
            return {"status": task.status()}
        t = now()
        if not task.runs:
            task.runs.append(Run(0, "exception", "exception", t, "canceled", resolved=t))
        else:
            self._resolve(task, task.runs[-1], "exception", "canceled")
        return {"status": task.status()}

    async def cancel(self, call: Call) -> Any:
        task = self.task(call.params["taskId"])
        d = task.definition
        call.authorize(schedulerId=d["schedulerId"], taskGroupId=d["taskGroupId"], projectId=d["projectId"])
        return self.cancel_task(task.task_id)

    # -- claiming -------------------------------------------------------------------------------

    def task_credentials(self, task: Task, run: Run) -> dict[str, str]:
        """The temporary credentials a claim hands out, named and scoped like the real queue's."""
        assert run.taken_until is not None
        name = (
            f"task-client/{task.task_id}/{run.run_id}/on/{run.worker_group}/{run.worker_id}"
            f"/until/{js_seconds(run.taken_until)}"
        )
        scopes = [
            f"queue:reclaim-task:{task.task_id}/{run.run_id}",
            f"queue:resolve-task:{task.task_id}/{run.run_id}",
            f"queue:create-artifact:{task.task_id}/{run.run_id}",
            *task.definition["scopes"],
        ]
        return self.auth.mint(QUEUE_ISSUER, scopes, now(), run.taken_until, name=name)

    def _claimable(self, task_queue_id: str) -> list[Task]:
        t = now()
        ready = [
            task
            for task in self.tasks.values()
            if task.definition["taskQueueId"] == task_queue_id and task.state == "pending" and task.deadline > t
        ]
        return sorted(ready, key=lambda k: (priority_rank(k.definition["priority"]), k.queued_at))

    def _claim(self, task_queue_id: str, group: str, worker: str, count: int) -> list[dict[str, Any]]:
        claims = []
        for task in self._claimable(task_queue_id)[:count]:
            run = task.runs[-1]
            t = now()
            run.state = "running"
            run.worker_group, run.worker_id = group, worker
            run.started = t
            run.taken_until = t + dt.timedelta(seconds=self.config.claim_timeout)
            claims.append(
                {
                    "status": task.status(),
                    "runId": run.run_id,
                    "workerGroup": group,
                    "workerId": worker,
                    "takenUntil": iso_offset(run.taken_until),
                    "task": task.definition,
                    "credentials": self.task_credentials(task, run),
                }
            )
        return claims

    async def claim_work(self, call: Call) -> Any:
        body = call.body
        call.authorize(workerGroup=body["workerGroup"], workerId=body["workerId"])
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.claim_work_wait
        while True:
            transport = call.request.transport
            if transport is None or transport.is_closing():
                # The worker hung up (e.g. it is stopping): like the real queue, stop polling and claim nothing.
                return {"tasks": []}
            claimed = self._claim(call.params["taskQueueId"], body["workerGroup"], body["workerId"], body["tasks"])
            remaining = give_up - loop.time()
            if claimed or remaining <= 0:
                return {"tasks": claimed}
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                pass

    def _run_for(self, call: Call) -> tuple[Task, Run]:
        task = self.task(call.params["taskId"])
        run_id = int(call.params["runId"])
        run = task.run(run_id)
        if run is None:
            raise TaskclusterError("ResourceNotFound", f"Run {run_id} not found on task `{task.task_id}`.")
        return task, run

    async def reclaim(self, call: Call) -> Any:
        task = self.task(call.params["taskId"])
        if task.deadline < now():
            raise TaskclusterError(
                "RequestConflict",
                f"Task `{task.task_id}` can't be reclaimed past its deadline of {iso(task.deadline)}.",
            )
        task, run = self._run_for(call)
        if run.state != "running":
            raise TaskclusterError(
                "RequestConflict", f"Run {run.run_id} on task `{task.task_id}` is resolved or not running."
            )
        run.taken_until = now() + dt.timedelta(seconds=self.config.claim_timeout)
        return {
            "status": task.status(),
            "runId": run.run_id,
            "workerGroup": run.worker_group,
            "workerId": run.worker_id,
            "takenUntil": iso(run.taken_until),
            "credentials": self.task_credentials(task, run),
        }

    # -- resolution -----------------------------------------------------------------------------

    def _report(self, call: Call, state: str) -> Any:
        task, run = self._run_for(call)
        if run.state == state:
            return {"status": task.status()}
        if run.state != "running":
            raise TaskclusterError(
                "RequestConflict", f"Run {run.run_id} of task `{task.task_id}` is not running or {state}."
            )
        self._resolve(task, run, state, state)
        return {"status": task.status()}

    async def completed(self, call: Call) -> Any:
        return self._report(call, "completed")

    async def failed(self, call: Call) -> Any:
        return self._report(call, "failed")

    async def exception(self, call: Call) -> Any:
        reason = call.body["reason"]
        task, run = self._run_for(call)
        if run.state == "exception" and run.reason_resolved == reason:
            return {"status": task.status()}
        if run.state != "running":
            raise TaskclusterError(
                "RequestConflict", f"Run {run.run_id} on task `{task.task_id}` is resolved or not running."
            )
        self._resolve(task, run, "exception", reason)
        if reason in RETRYING_REASONS and task.retries_left > 0:
            task.retries_left -= 1
            self._enqueue(task, RETRYING_REASONS[reason])
        return {"status": task.status()}

    async def pending_tasks(self, call: Call) -> Any:
        tq = call.params["taskQueueId"]
        prov, wt = tq.split("/", 1)
        return {
            "provisionerId": prov,
            "workerType": wt,
            "taskQueueId": tq,
            "pendingTasks": len(self._claimable(tq)),
        }

    # -- resolvers ------------------------------------------------------------------------------

    def tick(self) -> None:
        """One pass of the claim-expiry, deadline and dependency resolvers."""
        t = now()
        delay = dt.timedelta(seconds=self.config.deadline_delay)
        for task in list(self.tasks.values()):
            if task.state in RESOLVED_STATES:
                continue
            if t >= task.deadline + delay:
                if task.runs:
                    self._resolve(task, task.runs[-1], "exception", "deadline-exceeded")
                else:
                    task.runs.append(Run(0, "exception", "exception", t, "deadline-exceeded", resolved=t))
                continue
            run = task.runs[-1] if task.runs else None
            if (
                run is not None
                and run.state == "running"
                and run.taken_until is not None
                and run.taken_until <= t
                and task.deadline > t
            ):
                self._resolve(task, run, "exception", "claim-expired")
                if task.retries_left > 0:
                    task.retries_left -= 1
                    self._enqueue(task, "retry")
            elif run is None and task.deadline > t and self._dependencies_met(task):
                self._enqueue(task, "scheduled")
