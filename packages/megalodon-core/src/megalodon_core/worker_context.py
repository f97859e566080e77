"""What executors and features may use of the worker: its config, HTTP session, clients and hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import taskcluster.aio

from . import hawk_debug

if TYPE_CHECKING:
    from .config import WorkerConfig
    from .plugins import PluginHost


hawk_debug.quiet()  # every client of the worker is made here


@dataclass
class WorkerContext:
    """Shared by every task of one worker process.

    ``credentials`` are the *worker's* (claimWork, index lookups for images); tasks use the temporary
    credentials from their claim, held by :class:`megalodon_core.task.TaskRun`.
    """

    config: WorkerConfig
    plugins: PluginHost
    session: aiohttp.ClientSession
    credentials: dict[str, str] = field(default_factory=dict)
    #: The config file this worker was started with (None when built in-process), for plugins that must
    #: protect it — e.g. the multiuser engine proves task users cannot read it.
    config_file: Path | None = None

    @property
    def root_url(self) -> str:
        return self.config.rootURL

    def client_options(self, credentials: dict[str, str] | None = None) -> dict[str, Any]:
        creds = self.credentials if credentials is None else credentials
        opts: dict[str, Any] = {"rootUrl": self.root_url}
        if creds:
            opts["credentials"] = {k: v for k, v in creds.items() if v}
        return opts

    #: The queue client of the worker's own credentials and the credentials it was made with: claimWork runs
    #: with it on every claim, and making a client costs tens of microseconds (options merged and deep-copied).
    _worker_queue: tuple[dict[str, str], Any] | None = field(default=None, init=False, repr=False, compare=False)

    def queue(self, credentials: dict[str, str] | None = None) -> Any:
        """A queue client with ``credentials`` (default: the worker's, one client until they change)."""
        if credentials is not None:
            return taskcluster.aio.Queue(self.client_options(credentials), session=self.session)
        cached = self._worker_queue
        if cached is None or cached[0] != self.credentials:
            cached = self._worker_queue = (
                dict(self.credentials),
                taskcluster.aio.Queue(self.client_options(), session=self.session),
            )
        return cached[1]

    def index(self, credentials: dict[str, str] | None = None) -> Any:
        return taskcluster.aio.Index(self.client_options(credentials), session=self.session)

    async def expand_scopes(self, scopes: list[str]) -> list[str]:
        """``auth.expandScopes`` with the worker's credentials, as generic-worker and docker-worker call it."""
        auth = taskcluster.aio.Auth(self.client_options(), session=self.session)
        return list((await auth.expandScopes({"scopes": scopes}))["scopes"])

    def object_service(self, credentials: dict[str, str]) -> Any:
        return taskcluster.aio.Object(self.client_options(credentials), session=self.session)
