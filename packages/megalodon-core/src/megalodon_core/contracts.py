"""The three contracts of RFC 126 — TaskExecutor, Feature, Artifacts — in Python and asyncio.

An *executor* turns one kind of payload (generic-worker's, docker-worker's, a third party's) into a run;
a *feature* adds one capability around the run (live log, proxy, chain of trust, mounts...); *artifacts*
are what the run leaves behind for upload.  The core drives all three in one fixed order
(:mod:`megalodon_core.pipeline`), so an implementation only answers questions and does its own work: it
never resolves the task, never talks to the queue about the run, and never invents its own cancellation.

Cancellation, of every kind (maxRunTime, a failed reclaim, worker shutdown), is one mechanism:
:meth:`megalodon_core.task.TaskRun.abort`.  Executors wait on :attr:`TaskRun.aborted` next to their
process and kill it when it fires.
"""

from __future__ import annotations

import datetime as dt
import importlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .errors import ExecutionError, ExecutionErrors
    from .task import TaskRun
    from .tasklog import LogStyle
    from .worker_context import WorkerContext


# -- artifacts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtifactEntry:
    """One artifact to publish: either content (``source`` set) or an error artifact (``error_reason`` set).

    ``fails_task`` says whether an error artifact fails the run when not optional: generic-worker fails the
    task on a missing artifact, docker-worker only records the error artifact.
    """

    name: str
    expires: dt.datetime
    content_type: str = "application/octet-stream"
    content_encoding: str = "identity"
    optional: bool = False
    source: Any = None
    error_reason: str | None = None
    error_message: str | None = None
    fails_task: bool = True

    @property
    def is_error(self) -> bool:
        return self.error_reason is not None


class Artifacts(ABC):
    """What a run produced.  ``collect`` lists names and metadata; ``open`` streams one content to disk.

    Content is handed over as a local file path because every upload path (object service, s3 PUT) must
    be able to re-read it for retries and to hash it, and a path keeps memory bounded for any size.
    """

    @abstractmethod
    async def collect(self) -> list[ArtifactEntry]:
        """Every artifact, error artifacts included, in a stable order."""

    @asynccontextmanager
    async def open(self, entry: ArtifactEntry) -> AsyncIterator[Path]:
        """A local file holding ``entry``'s content for the duration of the ``async with`` block."""
        if not isinstance(entry.source, Path):
            raise TypeError(f"artifact {entry.name!r} has no local file; override Artifacts.open")
        yield entry.source


class NoArtifacts(Artifacts):
    async def collect(self) -> list[ArtifactEntry]:
        return []


# -- features ----------------------------------------------------------------------------------------------
class FeatureInitError(Exception):
    """A feature cannot work on this worker: the worker must not start.  ``exit_code`` is the process's."""

    def __init__(self, message: str, exit_code: int = 69) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TaskFeature(ABC):
    """A feature's per-task half: scopes it needs, artifact names it owns, start before and stop after."""

    def required_scopes(self) -> list[list[str]]:
        """Scope alternatives: the task must hold every scope of at least one inner list (empty: none)."""
        return []

    def reserved_artifacts(self) -> list[str]:
        """Artifact names this feature uploads itself; payload artifacts with these names are skipped."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called before the executor runs the task; raising an ExecutionError stops the pipeline."""

    async def stop(self, errors: ExecutionErrors) -> None:  # noqa: B027 - optional hook
        """Called after the run (also when start failed); append to ``errors`` rather than raising."""


class Feature(ABC):
    """A worker-lifetime feature: a config gate, a per-task request test, and a per-task factory."""

    #: The name tasks use to request it (``taskclusterProxy``, ``chainOfTrust``...), also used in messages.
    name: ClassVar[str]
    #: Executors this feature works with (empty: every executor).
    executors: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, worker: WorkerContext) -> None:
        self.worker = worker

    async def initialise(self) -> None:  # noqa: B027 - optional hook
        """Once, when the worker starts (before any claim).  Raise :class:`FeatureInitError` to refuse to
        start the worker (e.g. a chain-of-trust key that is missing or readable by tasks)."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Once, when the worker stops, after the last task (close servers, sockets)."""

    async def free_disk_space(self) -> None:  # noqa: B027 - optional hook
        """Disk is short before a claim: evict what this feature keeps and no running task uses."""

    def is_enabled(self) -> bool:
        return True

    def disabled_reason(self) -> str | None:
        """Why it is disabled, when ``is_enabled`` is False and a generic message would mislead."""
        return None

    @abstractmethod
    def is_requested(self, run: TaskRun) -> bool:
        """Whether this task uses the feature (the payload has been validated already)."""

    @abstractmethod
    def new_task_feature(self, run: TaskRun) -> TaskFeature: ...


# -- executors ---------------------------------------------------------------------------------------------
class TaskExecutor(ABC):
    """Runs one kind of payload.  Steps: validate_payload -> prepare -> (features) -> run -> result."""

    #: Registry name (``native``, ``docker``).
    name: ClassVar[str]
    #: Which worker's log format this executor's tasks use.
    log_style: ClassVar[LogStyle] = "generic-worker"

    def __init__(self, worker: WorkerContext) -> None:
        self.worker = worker

    @abstractmethod
    def validate_payload(self, run: TaskRun) -> None:
        """Parse ``run.task['payload']`` into ``run.payload``; raise MalformedPayload naming the fields."""

    def write_header(self, run: TaskRun) -> None:  # noqa: B027 - optional hook
        """First lines of the task log, written before the payload is validated."""

    def requested_features(self, run: TaskRun) -> list[str]:
        """Feature names the payload explicitly asks for: each must be provided by an enabled Feature."""
        return []

    def max_run_time(self, run: TaskRun) -> int:
        """Seconds the run may take, from the validated payload."""
        return int(run.payload.maxRunTime)

    def max_run_time_error(self, run: TaskRun) -> ExecutionError:
        """The error that aborts the run when maxRunTime expires."""
        from .errors import Failure

        return Failure("task aborted - max run time exceeded")

    def task_features(self, run: TaskRun) -> list[TaskFeature]:
        """Executor-private per-task features, started before the plugin features."""
        return []

    async def prepare(self, run: TaskRun) -> None:  # noqa: B027 - optional hook
        """Set up what the run needs before features start (task directory, image...)."""

    @abstractmethod
    async def run(self, run: TaskRun) -> None:
        """Run the task.  Return on success; raise an ExecutionError otherwise; watch ``run.aborted``."""

    def result(self, run: TaskRun) -> Artifacts:
        return NoArtifacts()

    def log_artifact_names(self, run: TaskRun) -> tuple[str | None, str | None]:
        """(live log name or None, backing log name or None) as the payload asks."""
        return "public/logs/live.log", "public/logs/live_backing.log"

    async def cleanup(self, run: TaskRun) -> None:  # noqa: B027 - optional hook
        """Remove what ``prepare`` and ``run`` left behind; always called."""

    async def free_disk_space(self) -> None:  # noqa: B027 - optional hook
        """Disk is short before a claim: evict what this executor keeps and no running task uses
        (unused images, idle caches)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Once, when the worker stops after its last task: release connections and threads."""


# -- registration records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorInfo:
    """What a plugin registers for an executor.  ``factory`` is imported lazily by the plugin's hooks."""

    name: str
    factory: Callable[[WorkerContext], TaskExecutor]
    summary: str
    payload_schema: Callable[[], dict[str, Any]]
    #: Whether a payload looks like this executor's (used when the worker accepts several kinds).
    accepts: Callable[[Any], bool] | None = None
    #: Check one payload without a worker; returns ``(field, message)`` errors (``validate-payload``).
    validate: Callable[[Any], list[tuple[str, str]]] | None = None


def payload_module_hooks(module: str) -> tuple[Callable[[], dict[str, Any]], Callable[[Any], list[tuple[str, str]]]]:
    """``payload_schema`` and ``validate`` callables for an :class:`ExecutorInfo`, importing ``module`` lazily.

    The module follows the executors' convention: ``payload_json_schema()`` and ``validate_payload(data)``
    raising an exception whose ``errors`` attribute lists ``(field, message)`` pairs.
    """

    def schema() -> dict[str, Any]:
        result: dict[str, Any] = importlib.import_module(module).payload_json_schema()
        return result

    def validate(payload: Any) -> list[tuple[str, str]]:
        mod = importlib.import_module(module)
        try:
            mod.validate_payload(payload)
        except mod.PayloadError as exc:
            return list(exc.errors)
        return []

    return schema, validate


@dataclass(frozen=True)
class CommandInfo:
    """A ``megalodon`` subcommand a plugin adds (e.g. ``new-ed25519-keypair``): a typer-style callback."""

    name: str
    callback: Callable[..., Any]
    help: str


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    factory: Callable[[WorkerContext], Feature]
    summary: str
