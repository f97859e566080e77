"""The object service: upload negotiation, finish, metadata and download methods.

The queue's object artifacts are built on these same records, so the queue
calls into this module directly (as the real queue calls the object service
with its own credentials).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .api import Call, Endpoint
from .errors import TaskclusterError
from .schemas import CREATE_UPLOAD, FINISH_UPLOAD, START_DOWNLOAD
from .storage import OBJECT_BUCKET, BlobStore
from .timeutil import iso, now, parse_iso

PUT_URL_LIFETIME = dt.timedelta(minutes=45)
GET_URL_LIFETIME = dt.timedelta(minutes=1)
SIMPLE_URL_LIFETIME = dt.timedelta(minutes=30)


@dataclass
class StoredObject:
    name: str
    project_id: str
    upload_id: str
    expires: dt.datetime
    finished: bool = False
    hashes: dict[str, str] = field(default_factory=dict)


class ObjectService:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.objects: dict[str, StoredObject] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("object", "ping", "GET", "/ping", self.ping),
            Endpoint(
                "object", "createUpload", "PUT", "/upload/<name>", self.create_upload,
                "object:upload:<projectId>:<name>", CREATE_UPLOAD, "v1/create-upload-request.json#",
            ),
            Endpoint(
                "object", "finishUpload", "POST", "/finish-upload/<name>", self.finish_upload,
                "object:upload:<projectId>:<name>", FINISH_UPLOAD, "v1/finish-upload-request.json#",
            ),
            Endpoint(
                "object", "startDownload", "PUT", "/start-download/<name>", self.start_download,
                "object:download:<name>", START_DOWNLOAD, "v1/download-object-request.json#",
            ),
            Endpoint("object", "object", "GET", "/metadata/<name>", self.metadata, "object:download:<name>"),
            Endpoint("object", "download", "GET", "/download/<name>", self.download, "object:download:<name>"),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    # -- used by the queue as well as the HTTP API ----------------------------------------------

    def begin(self, name: str, project_id: str, upload_id: str, expires: dt.datetime) -> StoredObject:
        """Create or re-negotiate an upload, enforcing that upload parameters are locked in."""
        obj = self.objects.get(name)
        if obj is None:
            obj = StoredObject(name, project_id, upload_id, expires)
            self.objects[name] = obj
            return obj
        if obj.finished or obj.upload_id != upload_id or obj.project_id != project_id or obj.expires != expires:
            raise TaskclusterError("RequestConflict", "Object already exists")
        return obj

    def finished(self, name: str) -> StoredObject | None:
        obj = self.objects.get(name)
        return obj if obj is not None and obj.finished else None

    def download_url(self, name: str, lifetime: dt.timedelta = SIMPLE_URL_LIFETIME) -> str:
        return self.store.url("GET", OBJECT_BUCKET, name, lifetime)

    # -- handlers -------------------------------------------------------------------------------

    async def create_upload(self, call: Call) -> Any:
        body = call.body
        name = call.params["name"]
        call.authorize(projectId=body["projectId"])
        expires = parse_iso(body["expires"])
        obj = self.begin(name, body["projectId"], body["uploadId"], expires)
        proposed = body["proposedUploadMethods"]
        method: dict[str, Any] = {}
        if "dataInline" in proposed:
            try:
                data = base64.b64decode(proposed["dataInline"]["objectData"], validate=True)
            except binascii.Error as exc:
                raise TaskclusterError("InputError", "objectData is not valid base64") from exc
            self.store.put_bytes(OBJECT_BUCKET, name, data, proposed["dataInline"]["contentType"])
            method = {"dataInline": True}
        elif "putUrl" in proposed:
            put = proposed["putUrl"]
            method = {
                "putUrl": {
                    "url": self.store.url("PUT", OBJECT_BUCKET, name, PUT_URL_LIFETIME),
                    "expires": iso(now() + PUT_URL_LIFETIME),
                    "headers": {
                        "Content-Type": put["contentType"],
                        "Content-Length": str(put["contentLength"]),
                        "Content-Encoding": "identity",
                    },
                }
            }
        if "hashes" in body:
            obj.hashes.update(body["hashes"])
        return {
            "projectId": obj.project_id,
            "uploadId": obj.upload_id,
            "expires": iso(obj.expires),
            "uploadMethod": method,
        }

    async def finish_upload(self, call: Call) -> Any:
        body = call.body
        name = call.params["name"]
        call.authorize(projectId=body["projectId"])
        obj = self.objects.get(name)
        if obj is None:
            raise TaskclusterError("ResourceNotFound", f'Object "{name}" not found')
        hashes: dict[str, str] = body.get("hashes", {})
        if obj.finished:
            if any(obj.hashes.get(alg) != value for alg, value in hashes.items()):
                raise TaskclusterError("RequestConflict", f'Object "{name}" already has different hashes')
            return {}
        if obj.upload_id != body["uploadId"]:
            raise TaskclusterError("RequestConflict", f'Object "{name}" does not have uploadId {body["uploadId"]}')
        if obj.project_id != body["projectId"]:
            raise TaskclusterError("InputError", f'Object "{name}" does not have projectId {body["projectId"]}')
        for alg, value in hashes.items():
            if obj.hashes.get(alg, value) != value:
                raise TaskclusterError("RequestConflict", f'Object "{name}" already has a different {alg} hash')
        obj.hashes.update(hashes)
        obj.finished = True
        return {}

    def _require(self, name: str) -> StoredObject:
        obj = self.finished(name)
        if obj is None:
            raise TaskclusterError("ResourceNotFound", f'Object "{name}" not found')
        return obj

    async def start_download(self, call: Call) -> Any:
        name = call.params["name"]
        obj = self._require(name)
        accepted = call.body["acceptDownloadMethods"]
        if accepted.get("getUrl"):
            return {
                "method": "getUrl",
                "url": self.download_url(name, GET_URL_LIFETIME),
                "expires": iso(now() + GET_URL_LIFETIME),
                "hashes": dict(obj.hashes),
            }
        if accepted.get("simple"):
            return {"method": "simple", "url": self.download_url(name)}
        raise TaskclusterError("NoMatchingMethod", "Object supports methods simple, getUrl")

    async def metadata(self, call: Call) -> Any:
        obj = self._require(call.params["name"])
        return {"projectId": obj.project_id, "expires": iso(obj.expires), "hashes": dict(obj.hashes)}

    async def download(self, call: Call) -> Any:
        name = call.params["name"]
        self._require(name)
        raise web.HTTPSeeOther(self.download_url(name))
