"""One claimed task run: its definition, credentials, directory, log, errors and abort signal."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Canceled, ExecutionError, ExecutionErrors
from .rundata import RunData

if TYPE_CHECKING:
    from .tasklog import TaskLog
    from .upload import Publisher
    from .worker_context import WorkerContext


@dataclass
class UploadedArtifact:
    """An artifact whose content was published, kept for chain of trust (name -> sha256)."""

    name: str
    sha256: str
    size: int


@dataclass
class TaskRun:
    """State of one run, shared by the pipeline, the executor and the features of that run.

    The only way to stop a run early is :meth:`abort`: the first call wins, records its error as the
    run's deciding error (unless an earlier error already decided), and sets :attr:`aborted`.
    """

    task_id: str
    run_id: int
    task: dict[str, Any]
    worker: WorkerContext
    credentials: dict[str, str]
    taken_until: dt.datetime
    task_dir: Path
    log: TaskLog
    #: The executor's own payload model (set by the pipeline from ``ExecutorRun.parse_payload``); features
    #: never read it — what they need is in :attr:`data`.
    payload: object = None
    errors: ExecutionErrors = field(default_factory=ExecutionErrors)
    #: Artifact name -> name of the feature that uploads it.
    reserved_artifacts: dict[str, str] = field(default_factory=dict)
    uploaded: dict[str, UploadedArtifact] = field(default_factory=dict)
    #: Typed data the executor, the pipeline and the features exchange (:mod:`megalodon_core.rundata`).
    data: RunData = field(default_factory=RunData)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    abort_error: ExecutionError | None = None
    #: Rows added to each command's result block (the resource monitor's memory lines), as (label, value).
    result_rows: list[Callable[[], list[tuple[str, str]]]] = field(default_factory=list)

    _credential_listeners: list[Callable[[dict[str, str]], None]] = field(default_factory=list)
    #: The queue client of :attr:`credentials` (built again when a reclaim changes them).
    _queue: tuple[dict[str, str], Any] | None = None

    # -- cancellation ------------------------------------------------------------------------------------
    def abort(self, error: ExecutionError) -> None:
        """Stop the run as soon as possible because of ``error`` (first call wins)."""
        if self.abort_error is not None:
            return
        self.abort_error = error
        self.errors.add(error)
        if isinstance(error, Canceled):
            self.log.error(error.message)
        self.aborted.set()

    @property
    def canceled(self) -> bool:
        return isinstance(self.abort_error, Canceled)

    # -- credentials -------------------------------------------------------------------------------------
    def on_credentials(self, listener: Callable[[dict[str, str]], None]) -> None:
        """Be told when a reclaim swaps in new task credentials (the proxy re-signs with them)."""
        self._credential_listeners.append(listener)

    def __post_init__(self) -> None:
        self.mask_credentials(self.credentials)
        self.log.add_secret(self.worker.config.accessToken)

    def mask_credentials(self, credentials: dict[str, str]) -> None:
        """Task credentials never appear in the task log, whatever the task prints."""
        for key in ("accessToken", "certificate"):
            if credentials.get(key):
                self.log.add_secret(credentials[key])

    def update_credentials(self, credentials: dict[str, str], taken_until: dt.datetime) -> None:
        self.mask_credentials(credentials)
        self.credentials = credentials
        self.taken_until = taken_until
        for listener in list(self._credential_listeners):
            listener(credentials)

    # -- clients -----------------------------------------------------------------------------------------
    def publisher(self) -> Publisher:
        """Uploads artifacts of this run (features publishing their own: live log, chain of trust)."""
        from .upload import Publisher

        return Publisher(self.queue, self.worker.object_service, self.worker.session)

    def queue(self) -> Any:
        """A queue client with the run's current task credentials: one per credentials, not per call (a
        client is a few dozen objects to build, and a task makes four queue calls at the least)."""
        if self._queue is None or self._queue[0] is not self.credentials:
            self._queue = (self.credentials, self.worker.queue(self.credentials))
        return self._queue[1]

    @property
    def scopes(self) -> list[str]:
        return list(self.task.get("scopes", []))

    @functools.cached_property
    def expires(self) -> dt.datetime:
        """Parsed once: the task definition does not change during its run, and every artifact asks."""
        from .timefmt import parse_iso

        return parse_iso(self.task["expires"])

    @functools.cached_property
    def deadline(self) -> dt.datetime:
        from .timefmt import parse_iso

        return parse_iso(self.task["deadline"])
