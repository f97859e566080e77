"""``TaskclusterDouble``: one aiohttp server on loopback hosting every emulated service.

Usage from tests::

    async with TaskclusterDouble(claim_timeout=5, resolver_interval=0.1) as double:
        queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})

Usage from a CLI (blocking until Ctrl-C / cancellation)::

    asyncio.run(TaskclusterDouble(port=8080).run_until_cancelled())
    # or simply: TaskclusterDouble(port=8080).serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import gzip
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .api import Api
from .artifacts import ArtifactService, object_name, s3_location
from .auth import Authenticator
from .authsvc import AuthService
from .errors import TaskclusterError, error_response
from .faults import CallCounter, FaultSet
from .index import IndexService
from .objects import ObjectService
from .purgecache import PurgeCacheService
from .queue import QUEUE_ISSUER, QueueConfig, QueueService
from .secrets import SecretsService
from .storage import OBJECT_BUCKET, PREFIX, BlobStore
from .timeutil import iso
from .workermanager import WorkerManagerService

log = logging.getLogger(__name__)

ROOT_CLIENT_ID = "static/taskcluster/root"
WORKER_MANAGER_ISSUER = "static/taskcluster/worker-manager"
MAX_API_BODY = 16 * 1024 * 1024


#: The anonymous scopes most deployments grant: anyone may read public artifacts.
PUBLIC_ARTIFACTS = ("queue:get-artifact:public/*",)


class TaskclusterDouble:
    """In-process Taskcluster (queue, object, index, secrets, auth) for tests and local runs."""

    def __init__(
        self,
        claim_timeout: float = 1200.0,
        claim_work_wait: float = 20.0,
        deadline_delay: float = 60.0,
        resolver_interval: float = 0.5,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_dir: Path | None = None,
        anonymous_scopes: tuple[str, ...] = (),
    ) -> None:
        """``anonymous_scopes`` are the ``anonymous`` role's: none by default, like the deployment the
        reference transcripts were recorded against; real deployments usually grant
        ``queue:get-artifact:public/*`` (see :data:`PUBLIC_ARTIFACTS`)."""
        self.host = host
        self.port = port
        self.resolver_interval = resolver_interval
        self.faults = FaultSet()
        self.calls = CallCounter()
        #: Seconds added to the ``Date`` header of every answer: a test's knob for a worker whose clock
        #: disagrees with the deployment's (the clock self-check).
        self.clock_offset = 0.0
        self.auth = Authenticator(anonymous_scopes)
        self.root_credentials = {"clientId": ROOT_CLIENT_ID, "accessToken": secrets.token_urlsafe(33)}
        self.auth.add_client(ROOT_CLIENT_ID, self.root_credentials["accessToken"], ["*"])
        for issuer in (QUEUE_ISSUER, WORKER_MANAGER_ISSUER):
            self.auth.add_client(issuer, secrets.token_urlsafe(33), ["*"])
        self.store = BlobStore(storage_dir)
        self.objects = ObjectService(self.store)
        self.queue = QueueService(self.auth, QueueConfig(claim_timeout, claim_work_wait, deadline_delay))
        self.artifacts = ArtifactService(self.queue, self.objects, self.store)
        self.index = IndexService()
        self.secrets = SecretsService()
        self.worker_manager = WorkerManagerService()
        self.purge_cache = PurgeCacheService()
        self.api = Api(self.auth, self.faults, self.calls)
        for service in (
            self.queue,
            self.artifacts,
            self.objects,
            self.index,
            self.secrets,
            self.worker_manager,
            self.purge_cache,
            AuthService(self.auth),
        ):
            for endpoint in service.endpoints():
                self.api.add(endpoint)
        self.root_url = ""
        self._runner: web.AppRunner | None = None
        self._resolver: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_API_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._date_header)
        # S3 stores bodies verbatim: gzip-encoded uploads must not be inflated on the way in.
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[0][1])
        self.root_url = f"http://{self.host}:{self.port}"
        self.api.root_url = self.root_url
        self.store.base_url = self.root_url
        self._resolver = asyncio.create_task(self._resolve_forever(), name="tc-double-resolvers")

    async def stop(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resolver
            self._resolver = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.store.close()

    async def __aenter__(self) -> TaskclusterDouble:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def run_until_cancelled(self) -> None:
        """Serve until the surrounding task is cancelled (e.g. by ``asyncio.run`` on Ctrl-C)."""
        await self.start()
        log.info("Taskcluster double listening on %s", self.root_url)
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    def serve_forever(self) -> None:
        """Blocking variant of :meth:`run_until_cancelled` for command-line use."""
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.run_until_cancelled())

    async def _resolve_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resolver_interval)
            try:
                self.queue.tick()
            except Exception:
                log.exception("resolver pass failed")

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.clock_offset:
            response.headers["Date"] = email.utils.formatdate(time.time() + self.clock_offset, usegmt=True)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if path.startswith("/api/"):
            parts = path.split("/", 4)
            if len(parts) >= 4 and parts[3] == "v1":
                rest = "/" + parts[4] if len(parts) > 4 else "/"
                return await self.api.handle(request, parts[2], rest)
        elif path.startswith(PREFIX + "/"):
            pseudo = "putUrl-storage" if request.method == "PUT" else "getUrl-storage"
            faulted = await self.api.apply_fault(pseudo, request)
            if faulted is not None:
                return faulted
            return await self.store.handle(request)
        err = TaskclusterError("ResourceNotFound", f"Nothing at {path}")
        return error_response(err, "unknown", {}, {})

    # -- test helpers ---------------------------------------------------------------------------

    def add_client(self, client_id: str, access_token: str, scopes: Sequence[str]) -> dict[str, str]:
        """Register a permanent client; returns credentials usable by the taskcluster client."""
        self.auth.add_client(client_id, access_token, scopes)
        return {"clientId": client_id, "accessToken": access_token}

    def worker_credentials(
        self, provisioner_id: str, worker_type: str, worker_group: str, worker_id: str
    ) -> dict[str, str]:
        """Credentials with the scopes worker-manager gives a static worker (permanent, for simplicity)."""
        pool = f"{provisioner_id}/{worker_type}"
        scopes = [
            f"assume:worker-type:{pool}",
            f"assume:worker-pool:{pool}",
            f"assume:worker-id:{worker_group}/{worker_id}",
            f"queue:worker-id:{worker_group}/{worker_id}",
            f"secrets:get:worker-type:{pool}",
            f"secrets:get:worker-pool:{pool}",
            f"queue:claim-work:{pool}",
            f"worker-manager:remove-worker:{pool}/{worker_group}/{worker_id}",
            f"worker-manager:reregister-worker:{pool}/{worker_group}/{worker_id}",
            f"worker-manager:should-worker-terminate:{pool}/{worker_group}/{worker_id}",
        ]
        client_id = f"worker/static/{pool}/{worker_group}/{worker_id}"
        return self.add_client(client_id, secrets.token_urlsafe(33), scopes)

    def temporary_credentials(
        self,
        scopes: Sequence[str],
        start: dt.datetime,
        expiry: dt.datetime,
        name: str | None = None,
        issuer: str = ROOT_CLIENT_ID,
    ) -> dict[str, str]:
        """Mint a certificate from a known client, e.g. to test expiry handling."""
        return self.auth.mint(issuer, scopes, start, expiry, name=name)

    def task_state(self, task_id: str) -> dict[str, Any]:
        """The ``status`` document ``queue.status`` would return."""
        return self.queue.task(task_id).status()

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """Same effect as ``queue.cancelTask``; returns the status document."""
        return dict(self.queue.cancel_task(task_id)["status"])

    def artifact_content(self, task_id: str, run_id: int, name: str) -> tuple[bytes, dict[str, Any]]:
        """Stored artifact data (gzip undone) and metadata, for assertions in tests."""
        task = self.queue.task(task_id)
        art = task.artifacts.get((run_id, name))
        if art is None:
            raise KeyError(f"no artifact {name!r} on {task_id}/{run_id}")
        meta: dict[str, Any] = {
            "storageType": art.storage_type,
            "contentType": art.content_type,
            "expires": iso(art.expires),
            "present": art.present,
            "contentEncoding": None,
        }
        if art.storage_type in ("reference", "link", "error"):
            meta.update(art.details)
            return b"", meta
        if art.storage_type == "s3":
            bucket, key = s3_location(task_id, run_id, name)
        else:
            bucket, key = OBJECT_BUCKET, object_name(task_id, run_id, name)
            obj = self.objects.objects.get(key)
            meta["hashes"] = dict(obj.hashes) if obj else {}
            meta["uploadId"] = art.details["uploadId"]
        blob = self.store.get(bucket, key)
        meta["uploaded"] = blob is not None
        if blob is None:
            return b"", meta
        meta["contentEncoding"] = blob.content_encoding
        meta["storedContentType"] = blob.content_type
        meta["storedSize"] = blob.size
        data = blob.path.read_bytes()
        if (blob.content_encoding or "").lower() == "gzip":
            data = gzip.decompress(data)
        return data, meta
