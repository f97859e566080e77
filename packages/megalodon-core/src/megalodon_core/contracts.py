"""The contracts of RFC 126 — executor, feature, artifacts — in Python and asyncio.  Read this to write a plugin.

An *executor* turns one kind of payload (generic-worker's, docker-worker's, a third party's) into a run;
a *feature* adds one capability around the run (live log, proxy, chain of trust, mounts...); *artifacts*
are what the run leaves behind for upload.  The core drives all three in one fixed order
(:mod:`megalodon_core.pipeline`), so an implementation only answers questions and does its own work: it
never resolves the task, never talks to the queue about the run, and never invents its own cancellation.

An executor has two parts:

- :class:`TaskExecutor`, built once per worker: start-up checks (:meth:`TaskExecutor.initialise`), disk
  eviction, ``close``, and :meth:`TaskExecutor.new_run`, which makes
- an :class:`ExecutorRun` per task run, holding that run's state as attributes (its parsed payload, its
  container, its OS user...).  Steps, in order: ``write_header`` -> ``parse_payload`` ->
  ``requested_features`` / ``max_run_time`` / ``log_artifact_names`` -> ``prepare`` -> (features start) ->
  ``run`` -> ``artifacts`` -> (features stop) -> ``cleanup`` (always).

The smallest correct executor is one class with two methods — ``parse_payload`` and ``run`` — registered with
:func:`executor_for`::

    class ScriptRun(ExecutorRun[ScriptPayload]):
        def parse_payload(self, raw: Any) -> ScriptPayload: ...   # raise MalformedPayload naming the field
        async def run(self) -> None: ...                            # raise Failure on a non-zero exit

    ExecutorInfo(name="script", factory=executor_for("script", ScriptRun), summary=..., payload_schema=...)

Features never look at an executor's name or payload.  The executor says which features its payload asks
for (:meth:`ExecutorRun.requested_features`, with each feature's own section of the payload as options) and
what they need to know about the run as typed data on ``run.data`` (:mod:`megalodon_core.rundata`: where
the task reaches a proxy, the OS user, the image...).  A requested feature whose :attr:`Feature.needs` the
executor left unset is ``malformed-payload``, raised by the pipeline.

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
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .logstyle import GENERIC_WORKER, LogStyle

if TYPE_CHECKING:
    from .errors import ExecutionError, ExecutionErrors
    from .payloads import PublishedSchemas
    from .rundata import FeatureRequest, RunDataField
    from .task import TaskRun
    from .worker_context import WorkerContext

#: The type of an executor's own payload model.
P = TypeVar("P")


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
    """A feature or executor cannot work on this worker: the worker must not start.

    ``exit_code`` is the process's (generic-worker's code for the problem, e.g. 77 for an unsecured config).
    """

    def __init__(self, message: str, exit_code: int = 69) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Raised by :meth:`TaskExecutor.initialise`; the same exit mechanism as a feature's.
ExecutorInitError = FeatureInitError


class ExecutorUnavailable(FeatureInitError):
    """Raised by :meth:`TaskExecutor.initialise` when what the executor runs on is absent (no engine answers).

    The configured executor stops the worker with ``exit_code``, like any :class:`ExecutorInitError`; with
    ``"executor": "auto"`` the worker runs without it, as when its factory raises (its tasks then get
    malformed-payload), so a pool that installed several executors keeps running the kinds it can.
    """


class TaskFeature(ABC):
    """A feature's per-task half: scopes it needs, artifact names it owns, start before and stop after."""

    def required_scopes(self) -> list[list[str]]:
        """Scope alternatives: the task must hold every scope of at least one inner list (empty: none)."""
        return []

    def reserved_artifacts(self) -> list[str]:
        """Artifact names this feature uploads itself; payload artifacts with these names are skipped."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called after the executor's ``prepare``, before its ``run``; raising an ExecutionError stops the
        pipeline.  Typed run data set in ``prepare`` (``run.data.proxy``...) is available here."""

    async def stop(self, errors: ExecutionErrors) -> None:  # noqa: B027 - optional hook
        """Called after the run and the artifact upload (also when start failed); append to ``errors`` rather
        than raising."""


class Feature(ABC):
    """A worker-lifetime feature: a config gate, a per-task request test, and a per-task factory.

    A feature is selected by name: the executor lists the names the payload requests
    (:meth:`ExecutorRun.requested_features`), the pipeline matches them to features.  It works with every
    executor that provides the run data in :attr:`needs`.
    """

    #: The name tasks use to request it (``taskclusterProxy``, ``chainOfTrust``...), also used in messages.
    name: ClassVar[str]
    #: :class:`~megalodon_core.rundata.RunData` fields the executor must set (by the end of ``prepare``) for
    #: this feature to work; a task requesting it on an executor that leaves one unset is malformed-payload.
    needs: ClassVar[tuple[RunDataField, ...]] = ()

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

    def listening(self) -> str | None:
        """Where this feature's server listens (a URL), for the worker's start-up log line; None: nowhere."""
        return None

    def is_requested(self, run: TaskRun) -> bool:
        """Whether this task uses the feature: by default, whether the executor declared a request for
        :attr:`name` (``run.data.requests``).  The request's ``options`` carry the payload's section."""
        return run.data.request(self.name) is not None

    @abstractmethod
    def new_task_feature(self, run: TaskRun) -> TaskFeature: ...


# -- executors ---------------------------------------------------------------------------------------------
class ExecutorRun(ABC, Generic[P]):
    """The per-run half of an executor: one object per task run, its state in attributes.

    Made by :meth:`TaskExecutor.new_run` right after the claim.  :attr:`task_run` is the core's view of the
    run (task definition, directory, log, credentials, abort signal, typed data); :attr:`executor` is the
    worker-lifetime half (config, engine clients, image and cache stores).  :attr:`payload` is set by the
    pipeline from :meth:`parse_payload` and is this executor's own model: no feature reads it.
    """

    #: The payload as returned by :meth:`parse_payload` (set before any later step runs).
    payload: P

    def __init__(self, executor: TaskExecutor, task_run: TaskRun) -> None:
        self.executor = executor
        self.task_run = task_run

    @property
    def worker(self) -> WorkerContext:
        return self.executor.worker

    @property
    def parsed(self) -> bool:
        """Whether :attr:`payload` is set: ``artifacts`` and ``cleanup`` also run after a malformed payload."""
        return "payload" in self.__dict__

    def write_header(self) -> None:
        """First lines of the task log, written before the payload is parsed."""

    @abstractmethod
    def parse_payload(self, raw: Any) -> P:
        """``task.payload`` (as decoded from JSON) -> this executor's model.

        Raise :class:`~megalodon_core.errors.MalformedPayload` naming the offending fields; any object is a
        valid model (a dict will do).
        """

    def requested_features(self) -> list[FeatureRequest]:
        """The features the payload asks for, each with its own payload section as ``options``.

        A ``required`` request for a feature that no installed plugin provides, or that is disabled on this
        worker, is malformed-payload; an optional one is then skipped.
        """
        return []

    def max_run_time(self) -> int:
        """Seconds the run may take.  Default: the worker's limit (config ``maxTaskRunTime``) — override it
        to read the payload's own field."""
        return int(self.worker.config.maxTaskRunTime)

    def max_run_time_error(self) -> ExecutionError:
        """The error that aborts the run when maxRunTime expires."""
        from .errors import Failure

        return Failure("task aborted - max run time exceeded")

    def log_artifact_names(self) -> tuple[str | None, str | None]:
        """(live log name or None, backing log name or None) as the payload asks.  Before the payload is
        parsed (and when it is malformed) the pipeline uses the default below."""
        return "public/logs/live.log", "public/logs/live_backing.log"

    def task_features(self) -> list[TaskFeature]:
        """Executor-private per-task features, started before the plugin features."""
        return []

    async def prepare(self) -> None:
        """Set up what the run needs before features start (task directory, image, network) and set the run
        data the requested features need (``task_run.data.proxy``, ``.task_user``, ``.image``)."""

    @abstractmethod
    async def run(self) -> None:
        """Run the task.  Return on success; raise an ExecutionError otherwise; watch ``task_run.aborted``.

        Pass ``task_run.data.env`` (variables features add) to the task's processes; set
        ``task_run.data.exit_code``.
        """

    def artifacts(self) -> Artifacts:
        """What the run produced (called once, after ``run`` returned or raised; also after a failed
        ``parse_payload`` or ``prepare``, when the attributes those set may be missing)."""
        return NoArtifacts()

    async def cleanup(self) -> None:
        """Remove what ``prepare`` and ``run`` left behind; always called, whatever step failed."""


class TaskExecutor:
    """The worker-lifetime half of an executor: built once by the registered factory.

    Subclass it to keep state across runs (engine clients, image caches) and to check the host at start;
    the per-run work is in :attr:`run_class` (:class:`ExecutorRun`).
    """

    #: Registry name (``native``, ``docker``).
    name: ClassVar[str] = ""
    #: The format of the worker's lines in this executor's task logs (and the peer whose conventions the
    #: run follows, :attr:`megalodon_core.rundata.RunData.style`).
    log_style: ClassVar[LogStyle] = GENERIC_WORKER
    #: The per-run half :meth:`new_run` instantiates.
    run_class: ClassVar[type[ExecutorRun[Any]]]

    def __init__(self, worker: WorkerContext) -> None:
        self.worker = worker

    async def initialise(self) -> None:
        """Once, when the worker starts, before any claim (host checks, sweeping what a crashed worker left).

        Raise :class:`ExecutorInitError` to refuse to start the worker with its exit code, or
        :class:`ExecutorUnavailable` when what the executor runs on is absent (an ``auto`` worker then runs
        without it).  Connect to engines here, not in the factory: building an executor touches nothing.
        """

    def new_run(self, run: TaskRun) -> ExecutorRun[Any]:
        """The per-run object for one claimed run (the default instantiates :attr:`run_class`)."""
        return self.run_class(self, run)

    async def free_disk_space(self) -> None:
        """Disk is short before a claim: evict what this executor keeps and no running task uses
        (unused images, idle caches)."""

    async def health(self) -> str | None:
        """Whether this executor can run a task now: None, or why not (e.g. its engine does not answer).

        Asked before each claim when config ``selfCheckExecutors`` is on (a passing answer is kept for a few
        seconds); a reason keeps the worker from claiming until it clears.  Keep it cheap and bounded: the
        worker gives up waiting after 10 s and counts that as a failure.
        """
        return None

    async def close(self) -> None:
        """Once, when the worker stops after its last task: release connections and threads."""


def executor_for(name: str, run_class: type[ExecutorRun[Any]]) -> Callable[[WorkerContext], TaskExecutor]:
    """An :attr:`ExecutorInfo.factory` for an executor that needs no worker-lifetime state of its own."""
    executor_class = type(
        f"{run_class.__name__}Executor", (TaskExecutor,), {"name": name, "run_class": run_class, "__doc__": None}
    )

    def factory(worker: WorkerContext) -> TaskExecutor:
        executor: TaskExecutor = executor_class(worker)
        return executor

    return factory


# -- registration records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorInfo:
    """What a plugin registers for an executor.  ``factory`` is imported lazily by the plugin's hooks.

    ``factory`` builds the worker-lifetime :class:`TaskExecutor` once per worker (a ``TaskExecutor``
    subclass, or :func:`executor_for` around an :class:`ExecutorRun` class when no lifetime state is needed);
    with ``"executor": "auto"``, raising there leaves the executor unavailable on that worker (its tasks get
    malformed-payload).  Host checks that must stop the worker belong in :meth:`TaskExecutor.initialise`.
    """

    name: str
    factory: Callable[[WorkerContext], TaskExecutor]
    summary: str
    payload_schema: Callable[[], dict[str, Any]]
    #: Whether a payload looks like this executor's (used when the worker accepts several kinds).
    accepts: Callable[[Any], bool] | None = None
    #: Check one payload without a worker; returns ``(field, message)`` errors (``validate-payload``).
    validate: Callable[[Any], list[tuple[str, str]]] | None = None
    #: The official schema the executor's peer publishes (per engine), which ``show-payload-schema`` prints;
    #: None: it prints :attr:`payload_schema` (derived from the model) instead.
    published_schemas: PublishedSchemas | None = None


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
    """A ``megalodon`` subcommand a plugin adds (e.g. ``new-ed25519-keypair``): a typer-style callback.

    ``callback`` is best given as ``"package.module:function"``: ``megalodon --help`` then lists the command
    by ``name`` and ``help`` alone, and the module (with whatever it imports) is imported only when the
    command runs.  A plain callable still works; its module is then imported with the plugin's hooks.
    """

    name: str
    callback: Callable[..., Any] | str
    help: str

    def __post_init__(self) -> None:
        # A malformed target fails at registration (the plugin is listed broken), not when a user runs it.
        if isinstance(self.callback, str):
            module, sep, attr = self.callback.partition(":")
            if not sep or not module or not attr.isidentifier():
                raise ValueError(f"command {self.name!r}: callback {self.callback!r} is not 'package.module:function'")

    def load(self) -> Callable[..., Any]:
        """The callback itself, importing its module when it was given as ``"package.module:function"``."""
        if not isinstance(self.callback, str):
            return self.callback
        module, _, attr = self.callback.partition(":")
        target: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return target


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    factory: Callable[[WorkerContext], Feature]
    summary: str
