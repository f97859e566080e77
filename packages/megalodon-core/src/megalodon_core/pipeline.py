"""One task run from claim to resolution, in generic-worker's order.

    new run -> header -> parse payload -> maxRunTime check -> feature selection (the executor's requests
    matched by name), scopes, reserved names -> prepare -> run data the features need -> feature starts ->
    (maxRunTime timer) run -> artifact upload -> feature stops (reverse) -> cleanup -> first error logged ->
    backing log upload -> live log link -> resolution

Every step records errors in ``run.errors``; the first decides (:mod:`megalodon_core.errors`).  The order is
the mechanism: features never call each other, and nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .artifacts import check_artifact_name
from .contracts import Artifacts, ExecutorRun, Feature, TaskExecutor, TaskFeature
from .errors import ExecutionError, Failure, InternalError, MalformedPayload, ResourceUnavailable, State
from .logzip import discard_when_done
from .payload_limits import PayloadLimitError, check_payload_limits
from .rundata import LogNames
from .scopes import ScopeCheck, describe
from .tasklog import LOG_CONTENT_TYPE

if TYPE_CHECKING:
    from .task import TaskRun

log = logging.getLogger(__name__)

MAX_PARALLEL_UPLOADS = 10
#: Log names before the payload is parsed (and for a malformed one): generic-worker's and docker-worker's.
DEFAULT_LOG_NAMES = LogNames("public/logs/live.log", "public/logs/live_backing.log")


def _check_max_run_time(run: TaskRun, executor_run: ExecutorRun[Any]) -> int:
    max_run_time = int(executor_run.max_run_time())
    limit = run.worker.config.maxTaskRunTime
    if max_run_time > limit:
        # generic-worker's wording (max_run_time_feature.go), which users grep for; the limit is the
        # worker's config maxTaskRunTime.
        raise MalformedPayload(f"task's maxRunTime of {max_run_time} exceeded allowed maximum of {limit}")
    return max_run_time


def _check_payload_limits(run: TaskRun) -> None:
    """Bound the payload's depth and size before any executor parses it (see :mod:`.payload_limits`)."""
    try:
        check_payload_limits(run.task.get("payload"))
    except PayloadLimitError as exc:
        run.log.error(f"TASK FAIL since the task payload is invalid: {exc}")
        raise MalformedPayload(f"Validation of payload failed for task {run.task_id}: {exc}") from None


async def _select_features(
    run: TaskRun, executor: TaskExecutor, executor_run: ExecutorRun[Any], features: list[Feature]
) -> list[tuple[Feature | None, TaskFeature]]:
    """The one place answering "which features does this task use": the executor's declared requests,
    matched by name to the installed features (in their registration order)."""
    pool = run.worker.config.task_queue_id
    by_name = {f.name: f for f in features}
    requests = {request.name: request for request in executor_run.requested_features()}
    run.data.requests = requests
    for request in requests.values():
        feature = by_name.get(request.name)
        if not request.required:
            continue
        if feature is None:
            raise MalformedPayload(
                f'this task is attempting to use feature "{request.name}", but no megalodon plugin installed on '
                f"this worker provides it for the {executor.name} executor ({pool})"
            )
        if not feature.is_enabled():
            raise MalformedPayload(
                feature.disabled_reason()
                or f'this task is attempting to use feature "{request.name}", but it\'s not enabled on this worker '
                f"pool ({pool})"
            )
    selected: list[tuple[Feature | None, TaskFeature]] = [(None, tf) for tf in executor_run.task_features()]
    # Literal first, then through the auth service's roles: generic-worker's scopes.Given.Satisfies.
    task_scopes = ScopeCheck(run.scopes, run.worker.expand_scopes)
    for feature in features:
        if feature.is_enabled() and feature.is_requested(run):
            task_feature = feature.new_task_feature(run)
            scopes = task_feature.required_scopes()
            if not await task_scopes.satisfies(scopes):
                raise MalformedPayload(
                    f'Feature "{feature.name}" requires scopes:\n\n{describe(scopes)}\n\nbut task only has '
                    f"scopes:\n\n" + "\n".join(f"  {s}" for s in run.scopes) + "\n\nYou probably should add "
                    "some scopes to your task definition."
                )
            for name in task_feature.reserved_artifacts():
                if name in run.reserved_artifacts:
                    raise MalformedPayload(
                        f"artifact {name!r} is reserved by both {run.reserved_artifacts[name]} and {feature.name}"
                    )
                run.reserved_artifacts[name] = feature.name
            selected.append((feature, task_feature))
    return selected


def _check_needs(run: TaskRun, executor: TaskExecutor, selected: list[tuple[Feature | None, TaskFeature]]) -> None:
    """After ``prepare``: every selected feature gets the run data it declared it needs, or the task is
    malformed-payload — never a feature running with a silently missing placement or user."""
    for feature, _ in selected:
        if feature is None:
            continue
        for field in feature.needs:
            if getattr(run.data, field) is None:
                raise MalformedPayload(
                    f'this task is attempting to use feature "{feature.name}", which needs run data '
                    f'"{field}" from the executor, but the {executor.name} executor does not provide it '
                    f"({run.worker.config.task_queue_id})"
                )


async def _upload_artifacts(run: TaskRun, artifacts: Artifacts) -> None:
    try:
        entries = await artifacts.collect()
    except ExecutionError as exc:
        run.errors.add(exc)
        return
    publisher = run.publisher()
    object_storage = run.worker.config.createObjectArtifacts
    gate = asyncio.Semaphore(MAX_PARALLEL_UPLOADS)

    async def one(entry_index: int) -> None:
        entry = entries[entry_index]
        if entry.name in run.reserved_artifacts:
            run.log.warn(
                f"Not uploading artifact {entry.name} found in task.payload.artifacts section, since this will "
                f"be uploaded later by {run.reserved_artifacts[entry.name]}"
            )
            return
        async with gate:
            try:
                if entry.is_error:
                    assert entry.error_reason is not None
                    message = entry.error_message or ""
                    await publisher.error(
                        run.task_id, run.run_id, entry.name, entry.error_reason, message, entry.expires
                    )
                    if entry.fails_task and not entry.optional:
                        text = f"{entry.error_reason}: {message}"
                        run.log.error(f"TASK FAILURE during artifact upload: {text}")
                        run.errors.add(Failure(text))
                    elif entry.fails_task:
                        run.log.warn(f"Optional artifact {entry.name!r} not found: {message}")
                    return
                async with artifacts.open(entry) as path:
                    published = await publisher.file(
                        run.task_id,
                        run.run_id,
                        entry.name,
                        path,
                        content_type=entry.content_type,
                        content_encoding=entry.content_encoding,
                        expires=entry.expires,
                        object_storage=object_storage,
                    )
                from .task import UploadedArtifact

                run.uploaded[entry.name] = UploadedArtifact(entry.name, published.sha256, published.size)
            except ExecutionError as exc:
                if entry.optional and not isinstance(exc, MalformedPayload):
                    run.log.warn(f"Optional artifact {entry.name!r} could not be uploaded: {exc.message}")
                else:
                    run.log.error(exc.message)
                    run.errors.add(exc)

    await asyncio.gather(*(one(i) for i in range(len(entries))))


async def _upload_logs(run: TaskRun) -> None:
    """The backing log, and the live log's link to it.

    The link is created as soon as the queue has the backing log's artifact, while its bytes are sent: one
    round trip less on every task's way to its resolution (issue 13).  The queue follows a link when it is
    read, never when it is made, and the link exists only once its target does; a reader who follows it in
    the few milliseconds before the upload ends finds the backing log not yet there (see
    ``docs/compatibility.md``).  The resolution is reported only once both are done.
    """
    live_name, backing_name = run.data.logs.live, run.data.logs.backing
    run.log.close()
    gzip_body = run.log.take_gzip_body()  # a big log's body, compressed while the task wrote it
    if not backing_name:
        if gzip_body is not None:
            discard_when_done(gzip_body)
        return
    publisher = run.publisher()
    linking: list[asyncio.Future[None]] = []

    def link() -> None:
        if live_name:
            linking.append(
                asyncio.ensure_future(
                    publisher.link(run.task_id, run.run_id, live_name, backing_name, LOG_CONTENT_TYPE, run.expires)
                )
            )

    try:
        try:
            published = await publisher.file(
                run.task_id,
                run.run_id,
                backing_name,
                run.log.path,
                content_type=LOG_CONTENT_TYPE,
                content_encoding="gzip",
                expires=run.expires,
                object_storage=run.worker.config.createObjectArtifacts,
                gzip_body=gzip_body,
                created=link,
            )
        except BaseException:
            await _settled(linking)  # never left running; the upload's error is the one reported
            raise
        from .task import UploadedArtifact

        run.uploaded[backing_name] = UploadedArtifact(backing_name, published.sha256, published.size)
        for linked in linking:
            await linked
    except ExecutionError as exc:
        log.error("task %s/%s: could not upload its log: %s", run.task_id, run.run_id, exc.message)
        run.errors.add(ResourceUnavailable(exc.message))


async def _settled(futures: list[asyncio.Future[None]]) -> None:
    """Wait for ``futures`` and mark their errors seen (asyncio logs an error nobody read)."""
    if futures:
        await asyncio.wait(futures)
        for future in futures:
            if not future.cancelled():
                future.exception()


async def execute(run: TaskRun, executor: TaskExecutor, features: list[Feature]) -> tuple[State, str]:
    """Run ``run`` through ``executor`` and ``features``; return the (state, reason) to report."""
    started: list[TaskFeature] = []
    timer: asyncio.TimerHandle | None = None
    run.data.executor = executor.name
    run.data.style = executor.log_style.name
    run.data.logs = DEFAULT_LOG_NAMES
    executor_run: ExecutorRun[Any] | None = None
    phases = run.data.phases
    setup_started = phases.clock()
    try:
        executor_run = executor.new_run(run)
        executor_run.write_header()
        _check_payload_limits(run)
        payload = executor_run.parse_payload(run.task.get("payload"))
        executor_run.payload = payload
        run.payload = payload
        max_run_time = run.data.max_run_time = _check_max_run_time(run, executor_run)
        live_name, backing_name = executor_run.log_artifact_names()
        run.data.logs = LogNames(live_name, backing_name)
        for name in (live_name, backing_name):
            if name:
                check_artifact_name(name, "logs")
                run.reserved_artifacts.setdefault(name, "the task log")
        selected = await _select_features(run, executor, executor_run, features)
        await executor_run.prepare()
        _check_needs(run, executor, selected)
        for _, task_feature in selected:
            if run.aborted.is_set():
                break
            started.append(task_feature)
            await task_feature.start()
        if not run.aborted.is_set():
            loop = asyncio.get_running_loop()
            on_timeout = executor_run.max_run_time_error
            timer = loop.call_later(max_run_time, lambda: run.abort(on_timeout()))
            phases.add("setup", phases.clock() - setup_started)
            run.worker.plugins.task_started(task_id=run.task_id, run_id=run.run_id, executor=executor.name)
            with phases.phase("command"):
                await executor_run.run()
    except ExecutionError as exc:
        if exc is not run.abort_error:
            run.errors.add(exc)
    except Exception as exc:
        log.exception("task %s/%s: unexpected error", run.task_id, run.run_id)
        run.errors.add(InternalError(f"megalodon internal error: {type(exc).__name__}: {exc}"))
    finally:
        if timer is not None:
            timer.cancel()

    if executor_run is not None:
        try:
            with phases.phase("artifact_upload"):
                await _upload_artifacts(run, executor_run.artifacts())
        except Exception as exc:
            log.exception("task %s/%s: artifact upload crashed", run.task_id, run.run_id)
            run.errors.add(InternalError(f"artifact upload failed: {exc}"))
    for task_feature in reversed(started):
        try:
            await task_feature.stop(run.errors)
        except ExecutionError as exc:
            run.errors.add(exc)
        except Exception as exc:
            log.exception("task %s/%s: feature stop failed", run.task_id, run.run_id)
            run.errors.add(InternalError(f"feature {type(task_feature).__name__} failed to stop: {exc}"))
    if executor_run is not None:
        try:
            await executor_run.cleanup()
        except Exception as exc:
            log.exception("task %s/%s: cleanup failed", run.task_id, run.run_id)
            run.errors.add(InternalError(f"cleanup failed: {exc}"))
    # No shell starts after the run's end; the launcher refers back to the executor run, which refers to the
    # run: without this the whole run would be a reference cycle left to the garbage collector (issue 13).
    run.data.interactive = None
    first = run.errors.first
    if first is not None and not run.log.closed:
        run.log.error(first.message)
    with phases.phase("artifact_upload"):
        await _upload_logs(run)
    return run.errors.resolution()
