"""Queue artifact endpoints: create/finish, listing, info and the content/redirect readers.

The storage-type rules (idempotency exceptions, run-state checks, expiry
limits, link resolution) follow the queue's artifacts.js as observed in the
reference transcripts.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

from aiohttp import web

from .api import Call, Endpoint
from .errors import TaskclusterError, json_response
from .model import Artifact, Run, Task
from .objects import ObjectService
from .queue import QUEUE_ISSUER, QueueService
from .schemas import FINISH_ARTIFACT, POST_ARTIFACT
from .storage import PRIVATE_BUCKET, PUBLIC_BUCKET, BlobStore
from .timeutil import iso, now, parse_iso, slug_id

PUT_URL_LIFETIME = dt.timedelta(minutes=45)
PRIVATE_URL_LIFETIME = dt.timedelta(minutes=30)
DOWNLOAD_CREDS_LIFETIME = dt.timedelta(hours=1)
EXCEPTION_GRACE = dt.timedelta(minutes=25)
EXPIRES_DRIFT = dt.timedelta(minutes=15)
MAX_CREDS_LIFETIME = dt.timedelta(days=31) - dt.timedelta(minutes=1)
MAX_LINK_HOPS = 10


def s3_location(task_id: str, run_id: int, name: str) -> tuple[str, str]:
    bucket = PUBLIC_BUCKET if name.startswith("public/") else PRIVATE_BUCKET
    return bucket, f"{task_id}/{run_id}/{name}"


def object_name(task_id: str, run_id: int, name: str) -> str:
    return f"t/{task_id}/{run_id}/{name}"


def _compatible(old: Artifact, new: Artifact) -> bool:
    """createArtifactCallsCompatible: which repeated createArtifact calls are accepted."""
    if new.expires < old.expires:
        return False
    if old.storage_type == "reference" and new.storage_type == "link":
        return True
    if old.storage_type != new.storage_type or old.content_type != new.content_type:
        return False
    if old.storage_type == "reference":
        return True
    return old.details == new.details


class ArtifactService:
    def __init__(self, queue: QueueService, objects: ObjectService, store: BlobStore) -> None:
        self.queue = queue
        self.objects = objects
        self.store = store

    def endpoints(self) -> list[Endpoint]:
        get = {"AllOf": [{"each": "queue:get-artifact:<name>", "for": "name", "in": "names"}]}
        create = "queue:create-artifact:<taskId>/<runId>"
        run_path = "/task/<taskId>/runs/<runId>"
        return [
            Endpoint(
                "queue", "createArtifact", "POST", f"{run_path}/artifacts/<name>", self.create, create,
                POST_ARTIFACT, "v1/post-artifact-request.json#",
            ),
            Endpoint(
                "queue", "finishArtifact", "PUT", f"{run_path}/artifacts/<name>", self.finish, create,
                FINISH_ARTIFACT, "v1/finish-artifact-request.json#",
            ),
            Endpoint(
                "queue", "listArtifacts", "GET", f"{run_path}/artifacts", self.list_run,
                "queue:list-artifacts:<taskId>:<runId>",
            ),
            Endpoint(
                "queue", "listLatestArtifacts", "GET", "/task/<taskId>/artifacts", self.list_latest,
                "queue:list-artifacts:<taskId>",
            ),
            Endpoint(
                "queue", "artifactInfo", "GET", f"{run_path}/artifact-info/<name>", self.info_run,
                "queue:list-artifacts:<taskId>:<runId>",
            ),
            Endpoint(
                "queue", "latestArtifactInfo", "GET", "/task/<taskId>/artifact-info/<name>", self.info_latest,
                "queue:list-artifacts:<taskId>",
            ),
            Endpoint("queue", "artifact", "GET", f"{run_path}/artifact-content/<name>", self.content_run, get),
            Endpoint(
                "queue", "latestArtifact", "GET", "/task/<taskId>/artifact-content/<name>", self.content_latest, get
            ),
            Endpoint("queue", "getArtifact", "GET", f"{run_path}/artifacts/<name>", self.redirect_run, get),
            Endpoint(
                "queue", "getLatestArtifact", "GET", "/task/<taskId>/artifacts/<name>", self.redirect_latest, get
            ),
        ]  # fmt: skip

    # -- create / finish ------------------------------------------------------------------------

    def _writable_run(self, task: Task, run_id: int) -> Run:
        run = task.run(run_id)
        if run is None:
            raise TaskclusterError("InputError", "Run not found")
        if run.worker_group is None:
            raise TaskclusterError("InputError", "Run was not claimed by a worker and so no artifacts can exist")
        late_exception = (
            run.state == "exception" and run.resolved is not None and (now() - run.resolved > EXCEPTION_GRACE)
        )
        if run.state in ("completed", "failed") or late_exception:
            raise TaskclusterError(
                "RequestConflict",
                "Artifacts cannot be created for a task after it is resolved, unless it is resolved "
                "'exception', and even in this case only up to 25 min past resolution.This to ensure that "
                "artifacts have been uploaded before a task is 'completed' and output is consumed by a "
                f"dependent task\n\nTask status: {json.dumps(task.status(), indent=2)}",
            )
        return run

    async def create(self, call: Call) -> Any:
        task = self.queue.task(call.params["taskId"])
        run_id, name, body = int(call.params["runId"]), call.params["name"], call.body
        expires = parse_iso(body["expires"])
        if expires > task.expires:
            raise TaskclusterError(
                "InputError",
                f"Artifact expires ({iso(expires)}) after the task expiration {iso(task.expires)} "
                "(task.expires < expires) - this is not allowed, artifacts may not expire after the task "
                "they belong to expires",
            )
        if expires < now() - EXPIRES_DRIFT:
            raise TaskclusterError("InputError", "Expires must be in the future")
        run = self._writable_run(task, run_id)
        kind = body["storageType"]
        content_type = body.get("contentType", "application/binary")
        details: dict[str, Any] = {}
        upload_id = ""
        if kind == "reference":
            details = {"url": body["url"]}
        elif kind == "link":
            details = {"artifact": body["artifact"]}
        elif kind == "error":
            details = {"reason": body["reason"], "message": body["message"]}
        elif kind == "object":
            upload_id = self._begin_object(task, run_id, name, expires)
        new = Artifact(name, kind, content_type, expires, present=kind != "object", details=details)
        old = task.artifacts.get((run_id, name))
        if old is not None:
            if not _compatible(old, new):
                raise TaskclusterError(
                    "RequestConflict",
                    "Artifact already exists with different properties, and none of the allowed exceptions "
                    f"apply: {json.dumps(old.summary(), indent=2)}",
                )
            if old.storage_type == "reference" and kind == "link":
                new.content_type = old.content_type
        if kind == "object":
            new.details = {"uploadId": upload_id, "objectName": object_name(task.task_id, run_id, name)}
        task.artifacts[(run_id, name)] = new
        return self._create_response(task, run, new)

    def _begin_object(self, task: Task, run_id: int, name: str, expires: dt.datetime) -> str:
        upload_id = slug_id()
        try:
            self.objects.begin(
                object_name(task.task_id, run_id, name), task.definition["projectId"], upload_id, expires
            )
        except TaskclusterError as exc:
            raise TaskclusterError(
                "InternalServerError",
                f"Internal Server Error, incidentId {uuid.uuid4()}.",
            ) from exc
        return upload_id

    def _create_response(self, task: Task, run: Run, art: Artifact) -> dict[str, Any]:
        if art.storage_type == "s3":
            bucket, key = s3_location(task.task_id, run.run_id, art.name)
            return {
                "storageType": "s3",
                "contentType": art.content_type,
                "expires": iso(now() + PUT_URL_LIFETIME),
                "putUrl": self.store.url("PUT", bucket, key, PUT_URL_LIFETIME),
            }
        if art.storage_type != "object":
            return {"storageType": art.storage_type}
        obj_name = art.details["objectName"]
        project_id = task.definition["projectId"]
        t = now()
        creds = self.queue.auth.mint(
            QUEUE_ISSUER,
            [f"object:upload:{project_id}:{obj_name}"],
            t,
            min(art.expires, t + MAX_CREDS_LIFETIME),
            name=f"artifact-upload/{task.task_id}/{run.run_id}/on/{run.worker_group}/{run.worker_id}",
        )
        return {
            "storageType": "object",
            "name": obj_name,
            "projectId": project_id,
            "uploadId": art.details["uploadId"],
            "expires": iso(art.expires),
            "credentials": creds,
        }

    async def finish(self, call: Call) -> Any:
        task = self.queue.task(call.params["taskId"])
        run_id, name = int(call.params["runId"]), call.params["name"]
        art = task.artifacts.get((run_id, name))
        if art is None:
            raise TaskclusterError(
                "ResourceNotFound",
                f"Artifact with taskId `{task.task_id}`, runId {run_id}, name `{name}` not found",
            )
        if art.storage_type != "object":
            raise TaskclusterError("InputError", "Only object artifacts can be finished")
        if art.details["uploadId"] != call.body["uploadId"]:
            raise TaskclusterError("InputError", "given uploadId does not match that for the artifact")
        if self.objects.finished(art.details["objectName"]) is None:
            raise TaskclusterError("InputError", "Object storing artifact data does not exist")
        art.present = True
        return web.Response(status=204)

    # -- listing --------------------------------------------------------------------------------

    def _run_id(self, task: Task, raw: str | None) -> int:
        if raw is None:
            if not task.runs:
                raise TaskclusterError("ResourceNotFound", f"Task with taskId: `{task.task_id}` has no runs")
            return len(task.runs) - 1
        run_id = int(raw)
        if task.run(run_id) is None:
            raise TaskclusterError(
                "ResourceNotFound", f"Task with taskId: `{task.task_id}` has no run with runId: {run_id}"
            )
        return run_id

    def _list(self, call: Call, latest: bool) -> Any:
        task = self.queue.task(call.params["taskId"])
        run_id = self._run_id(task, None if latest else call.params["runId"])
        # Unfinished object artifacts are listed too (observed in the reference transcripts).
        arts = sorted((a for (rid, _), a in task.artifacts.items() if rid == run_id), key=lambda a: a.name)
        after = None
        token = call.query.get("continuationToken")
        if token:
            try:
                after = json.loads(base64.b64decode(token))[2]
            except (ValueError, IndexError, TypeError) as exc:
                raise TaskclusterError("InvalidRequestArguments", "Invalid continuationToken") from exc
            arts = [a for a in arts if a.name > after]
        limit = int(call.query.get("limit", "1000") or 1000)
        out: dict[str, Any] = {"artifacts": [a.info() for a in arts[:limit]]}
        if len(arts) > limit:
            last = [task.task_id, run_id, arts[limit - 1].name]
            out["continuationToken"] = base64.b64encode(json.dumps(last, separators=(",", ":")).encode()).decode()
        return out

    async def list_run(self, call: Call) -> Any:
        return self._list(call, latest=False)

    async def list_latest(self, call: Call) -> Any:
        return self._list(call, latest=True)

    def _lookup(self, task: Task, run_id: int, name: str) -> Artifact:
        art = task.artifacts.get((run_id, name))
        if art is None or not art.present:
            raise TaskclusterError("ResourceNotFound", "Artifact not found")
        if art.expires < now():
            raise TaskclusterError("ResourceExpired", "Artifact expired")
        return art

    def _info(self, call: Call, latest: bool) -> Any:
        task = self.queue.task(call.params["taskId"])
        run_id = self._run_id(task, None if latest else call.params["runId"])
        return self._lookup(task, run_id, call.params["name"]).info()

    async def info_run(self, call: Call) -> Any:
        return self._info(call, latest=False)

    async def info_latest(self, call: Call) -> Any:
        return self._info(call, latest=True)

    # -- content --------------------------------------------------------------------------------

    def _resolve(self, call: Call, latest: bool) -> tuple[Task, int, Artifact]:
        """Authorize and follow link artifacts; every name on the way needs ``queue:get-artifact``."""
        names = [call.params["name"]]
        call.authorize(names=names)
        task = self.queue.task(call.params["taskId"])
        try:
            run_id = self._run_id(task, None if latest else call.params["runId"])
        except TaskclusterError as exc:
            raise TaskclusterError("ResourceNotFound", "Artifact not found") from exc
        art = self._lookup(task, run_id, names[0])
        while art.storage_type == "link":
            target = art.details["artifact"]
            if target in names or len(names) > MAX_LINK_HOPS:
                raise TaskclusterError("InputError", "Artifact link cycle detected")
            names.append(target)
            call.authorize(names=names)
            art = self._lookup(task, run_id, target)
        return task, run_id, art

    def _url(self, task: Task, run_id: int, art: Artifact) -> str:
        if art.storage_type == "reference":
            return str(art.details["url"])
        if art.storage_type == "object":
            return self.objects.download_url(art.details["objectName"])
        bucket, key = s3_location(task.task_id, run_id, art.name)
        return self.store.url("GET", bucket, key, None if bucket == PUBLIC_BUCKET else PRIVATE_URL_LIFETIME)

    def _content(self, call: Call, latest: bool) -> Any:
        task, run_id, art = self._resolve(call, latest)
        if art.storage_type == "error":
            return {"storageType": "error", "reason": art.details["reason"], "message": art.details["message"]}
        if art.storage_type != "object":
            return {"storageType": art.storage_type, "url": self._url(task, run_id, art)}
        obj_name = art.details["objectName"]
        t = now()
        creds = self.queue.auth.mint(
            QUEUE_ISSUER,
            [f"object:download:{obj_name}"],
            t,
            t + DOWNLOAD_CREDS_LIFETIME,
            name=f"artifact-download/{task.task_id}/{run_id}/{art.name}",
        )
        return {"storageType": "object", "name": obj_name, "credentials": creds}

    async def content_run(self, call: Call) -> Any:
        return self._content(call, latest=False)

    async def content_latest(self, call: Call) -> Any:
        return self._content(call, latest=True)

    def _redirect(self, call: Call, latest: bool) -> web.Response:
        task, run_id, art = self._resolve(call, latest)
        headers = {"x-taskcluster-artifact-storage-type": art.storage_type}
        if art.storage_type == "error":
            body = {"reason": art.details["reason"], "message": art.details["message"]}
            return json_response(body, status=424, headers=headers)
        url = self._url(task, run_id, art)
        headers["Location"] = url
        return json_response({"storageType": art.storage_type, "url": url}, status=303, headers=headers)

    async def redirect_run(self, call: Call) -> Any:
        return self._redirect(call, latest=False)

    async def redirect_latest(self, call: Call) -> Any:
        return self._redirect(call, latest=True)
