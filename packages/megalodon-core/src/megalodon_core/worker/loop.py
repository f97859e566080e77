"""The worker loop: claim work for free capacity, run each claim, report its resolution, exit when told.

Exit codes are generic-worker's (NOTES.md 1.8): 0 after ``numberOfTasksToRun`` tasks (a count persisted
across restarts), 68 idle timeout, 69 internal error, 70 worker-manager says terminate, 71 stopped by
SIGINT (running tasks finish), 72 shut down by SIGTERM or worker-runner's graceful-termination without
finish-tasks (running tasks are aborted with exception/worker-shutdown and still get their logs
uploaded).  Before each claim the worker makes sure ``requiredDiskSpaceMegabytes`` are free, asking
features and executors to evict what they keep; it never claims a task it could not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import platform
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from . import __version__
from .config import WorkerConfig
from .contracts import ExecutorRun, Feature, FeatureInitError, TaskExecutor
from .errors import MalformedPayload, ResourceUnavailable, State, WorkerShutdown
from .journal import ClaimJournal, ClaimRecord, kill_processes_under
from .pipeline import execute
from .plugins import PluginHost
from .reclaim import reclaim_loop
from .task import TaskRun
from .tasklog import TaskLog
from .timefmt import parse_iso
from .worker_context import WorkerContext

log = logging.getLogger(__name__)

EXIT_TASKS_COMPLETE = 0
EXIT_CANT_LOAD_CONFIG = 64
EXIT_IDLE_TIMEOUT = 68
EXIT_INTERNAL_ERROR = 69
EXIT_WORKER_MANAGER_SHUTDOWN = 70
EXIT_WORKER_STOPPED = 71
EXIT_WORKER_SHUTDOWN = 72
EXIT_INVALID_CONFIG = 73

#: Pause after a failed claimWork call, or while disk is short, before trying again.
CLAIM_ERROR_BACKOFF = 5.0
#: generic-worker asks worker-manager about termination about this often (every loop iteration, >= 5 s).
TERMINATE_CHECK_INTERVAL = 5.0

RESOLVED_COUNT_FILE = "tasks-resolved-count.txt"
#: Config values the running worker received from worker-runner, for ``megalodon config explain``.
RUNTIME_CONFIG_FILE = "worker-runner-config.json"
STATUS_FILE = "worker-status.json"
METADATA_FILE = "generic-worker-metadata.json"
JOURNAL_DIR = "megalodon-claims"


class RunnerLink(Protocol):
    """What the worker needs of the worker-runner protocol (a null one when not run by worker-runner)."""

    def capable(self, capability: str) -> bool: ...

    async def shutdown(self) -> bool: ...

    async def error_report(
        self, description: str, extra: Mapping[str, Any] | None = None, *, title: str = ..., kind: str = ...
    ) -> bool: ...


class MetricsSink(Protocol):
    def task_claimed(self) -> None: ...

    def task_resolved(self, state: str, reason: str, duration: float) -> None: ...

    def bytes_uploaded(self, n: int) -> None: ...

    def upload_error(self) -> None: ...

    def reclaim_failed(self) -> None: ...

    def observe_queue_call(self, method: str, seconds: float) -> None: ...

    def set_running(self, n: int) -> None: ...


class _NoExecutorRun(ExecutorRun[None]):
    def parse_payload(self, raw: Any) -> None:
        run = self.task_run
        installed = ", ".join(sorted(run.worker.plugins.executors)) or "none"
        raise MalformedPayload(
            f"No executor installed on this worker accepts this payload (configured executor: "
            f"{run.worker.config.executor!r}; installed executors: {installed})"
        )

    async def run(self) -> None:  # pragma: no cover - parse_payload always raises
        raise AssertionError("unreachable")


class NoExecutor(TaskExecutor):
    """Stands in when no installed executor accepts a payload, so the task still gets a log and a verdict."""

    name = "none"
    run_class = _NoExecutorRun


class Worker:
    """Claims and runs tasks until a stop condition; ``run()`` returns the process exit code."""

    def __init__(
        self,
        config: WorkerConfig,
        plugins: PluginHost,
        *,
        runner: RunnerLink | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.runner = runner
        self.metrics = metrics
        self.running: dict[asyncio.Task[None], TaskRun | None] = {}
        self.state_dir = Path(config.stateDir)
        self.resolved = 0
        self._stop_claiming = False
        self._exit_code: int | None = None
        self._wake = asyncio.Event()
        self._last_terminate_check = 0.0
        self.last_claim_at = time.monotonic()
        self.ctx: WorkerContext | None = None
        self.executors: dict[str, TaskExecutor] = {}
        self.features: list[Feature] = []
        self.journal: ClaimJournal | None = None
        #: One thread for claim bookkeeping (journal, state files, task dir removal): writes stay ordered,
        #: and the end-of-task part need not hold up the next claim.
        self._books = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megalodon-books")
        self._books_pending: set[asyncio.Future[None]] = set()
        #: Config values received at run time (worker-runner's new-credentials), for ``config explain``.
        self.runtime_config: dict[str, Any] = {}
        # What a previous worker process received from its runner does not describe this one.
        with contextlib.suppress(OSError):
            (self.state_dir / RUNTIME_CONFIG_FILE).unlink()

    # -- stopping ----------------------------------------------------------------------------------------
    def stop(self, *, finish_tasks: bool) -> None:
        """Stop claiming; with ``finish_tasks=False`` abort running tasks with worker-shutdown."""
        if self._exit_code is None:
            self._exit_code = EXIT_WORKER_STOPPED if finish_tasks else EXIT_WORKER_SHUTDOWN
        elif not finish_tasks and self._exit_code == EXIT_WORKER_STOPPED:
            self._exit_code = EXIT_WORKER_SHUTDOWN  # a request never downgrades from immediate to graceful
        self._stop_claiming = True
        if not finish_tasks:
            for run in self.running.values():
                if run is not None:
                    run.abort(WorkerShutdown("Task aborted: worker is shutting down (worker-shutdown)"))
        self._wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: self.stop(finish_tasks=True))
        loop.add_signal_handler(signal.SIGTERM, lambda: self.stop(finish_tasks=False))

    def update_credentials(self, credentials: dict[str, str]) -> None:
        """worker-runner's new-credentials: later worker calls use them; running tasks keep their own."""
        if self.ctx is None:  # before run(): the context will be built from the config
            self.config.clientId = credentials["clientId"]
            self.config.accessToken = credentials["accessToken"]
            self.config.certificate = credentials.get("certificate", "")
        else:
            self.ctx.credentials = {k: v for k, v in credentials.items() if v}
        self.runtime_config.update(
            {
                "clientId": credentials.get("clientId"),
                "accessToken": "<set>",
                "certificate": "<set>" if credentials.get("certificate") else "",
            }
        )
        # Secrets are never written: only which keys came from worker-runner, and the clientId.
        path = self.state_dir / RUNTIME_CONFIG_FILE
        path.write_text(json.dumps(self.runtime_config) + "\n")  # a few bytes, on the loop: fine
        log.info("worker credentials replaced (clientId %s)", credentials.get("clientId"))

    # -- setup -------------------------------------------------------------------------------------------
    def _instantiate(self, ctx: WorkerContext) -> None:
        available = self.plugins.executors
        wanted = self.config.executor
        if wanted == "auto":
            # A pool that installed several executors keeps running the kinds it can when one cannot start
            # (e.g. no Docker engine on a native pool): that executor's tasks then get malformed-payload.
            for name, info in available.items():
                try:
                    self.executors[name] = info.factory(ctx)
                except Exception as exc:
                    log.warning("executor %s unavailable on this worker: %s", name, exc)
        elif wanted in available:
            self.executors = {wanted: available[wanted].factory(ctx)}
        else:
            raise LookupError(
                f'Config setting "executor" names {wanted!r}, which no installed plugin provides '
                f"(installed: {', '.join(sorted(available)) or 'none'})"
            )
        self.features = [info.factory(ctx) for info in self.plugins.features.values()]

    def executor_for(self, payload: Any) -> TaskExecutor:
        if self.config.executor != "auto":
            return next(iter(self.executors.values()))
        info = self.plugins.executor_for_payload(payload)
        if info is not None and info.name in self.executors:
            return self.executors[info.name]
        if len(self.executors) == 1:
            return next(iter(self.executors.values()))
        assert self.ctx is not None
        return NoExecutor(self.ctx)

    @functools.cached_property
    def _metadata(self) -> dict[str, Any]:
        meta = dict(self.config.workerTypeMetadata)
        meta["megalodon"] = {
            "version": __version__,
            "engine": str(self.config.extra("nativeEngine", "insecure")),
            "executors": sorted(self.executors),
            "python-version": platform.python_version(),
            "os": sys.platform,
            "arch": platform.machine(),
        }
        return meta

    def metadata(self) -> dict[str, Any]:
        """What the task log header shows about this worker (computed once: it cannot change)."""
        return self._metadata

    # -- state files -------------------------------------------------------------------------------------
    def _read_resolved_count(self) -> int:
        try:
            return int((self.state_dir / RESOLVED_COUNT_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _current_ids(self) -> list[str]:
        return sorted(r.task_id for r in self.running.values() if r is not None)

    def _write_state(self, resolved: int | None = None, current: list[str] | None = None) -> None:
        """tasks-resolved-count.txt and worker-status.json, as generic-worker keeps them.

        Runs in a thread: callers pass values read on the loop rather than let the thread read live state.
        """
        resolved = self.resolved if resolved is None else resolved
        current = self._current_ids() if current is None else current
        (self.state_dir / RESOLVED_COUNT_FILE).write_text(f"{resolved}\n")
        status = self.state_dir / STATUS_FILE
        if current:
            status.write_text(json.dumps({"currentTaskIds": current}) + "\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                status.unlink()

    async def _save_state(self) -> None:
        await asyncio.to_thread(self._write_state, self.resolved, self._current_ids())

    # -- crash recovery ----------------------------------------------------------------------------------
    async def recover(self) -> int:
        """Resolve the runs a previous, killed process of this worker still held (exception/worker-shutdown)."""
        assert self.journal is not None and self.ctx is not None
        recovered = 0
        for entry in await asyncio.to_thread(self.journal.entries):
            task_dir = Path(entry.task_dir)
            killed = await asyncio.to_thread(kill_processes_under, task_dir)
            queue = self.ctx.queue(entry.credentials)
            try:
                await queue.reportException(entry.task_id, str(entry.run_id), {"reason": "worker-shutdown"})
                log.warning(
                    "recovered run %s/%s left by a previous worker process: resolved exception/worker-shutdown "
                    "(%d leftover processes killed)",
                    entry.task_id,
                    entry.run_id,
                    killed,
                )
                recovered += 1
            except (TaskclusterFailure, aiohttp.ClientError) as exc:
                # 409: already resolved (cancelled, deadline, claim expired); 401: credentials long expired.
                log.warning(
                    "run %s/%s left by a previous process could not be resolved: %s",
                    entry.task_id,
                    entry.run_id,
                    str(exc).splitlines()[0],
                )
            if self.config.cleanUpTaskDirs:
                await asyncio.to_thread(shutil.rmtree, task_dir, True)
            await asyncio.to_thread(self.journal.remove, entry.task_id, entry.run_id)
        return recovered

    # -- disk space --------------------------------------------------------------------------------------
    def _free_bytes(self) -> int:
        return shutil.disk_usage(self.config.tasksDir).free

    async def ensure_disk_space(self) -> bool:
        """True when ``requiredDiskSpaceMegabytes`` are free, after evicting what can be evicted."""
        required = self.config.requiredDiskSpaceMegabytes * 1024 * 1024
        if await asyncio.to_thread(self._free_bytes) >= required:
            return True
        owners: list[Feature | TaskExecutor] = [*self.features, *self.executors.values()]
        for owner in owners:
            try:
                await owner.free_disk_space()
            except Exception:
                log.exception("%s failed to free disk space", type(owner).__name__)
            free = await asyncio.to_thread(self._free_bytes)
            if free >= required:
                return True
        log.warning(
            "not able to free up enough disk space - require %d bytes, but only have %d bytes - and nothing "
            "left to delete: not claiming",
            required,
            free,
        )
        return False

    # -- worker-manager ----------------------------------------------------------------------------------
    async def _worker_manager_says_terminate(self) -> bool:
        if self.runner is None or self.ctx is None:
            return False
        now = time.monotonic()
        if now - self._last_terminate_check < TERMINATE_CHECK_INTERVAL:
            return False
        self._last_terminate_check = now
        import taskcluster.aio

        wm = taskcluster.aio.WorkerManager(self.ctx.client_options(), session=self.ctx.session)
        try:
            answer = await wm.shouldWorkerTerminate(
                self.config.task_queue_id, self.config.workerGroup, self.config.workerId
            )
        except (TaskclusterFailure, aiohttp.ClientError) as exc:
            log.warning("shouldWorkerTerminate failed: %s", str(exc).splitlines()[0])
            return False
        return bool(answer.get("terminate"))

    # -- main loop ---------------------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = False) -> int:
        async with aiohttp.ClientSession() as session:
            self.ctx = WorkerContext(self.config, self.plugins, session, self.config.credentials)
            self._instantiate(self.ctx)
            await asyncio.to_thread(Path(self.config.tasksDir).mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(self.state_dir.mkdir, parents=True, exist_ok=True)
            self.journal = await asyncio.to_thread(ClaimJournal, self.state_dir / JOURNAL_DIR)
            self.resolved = await asyncio.to_thread(self._read_resolved_count)
            if handle_signals:
                self.install_signal_handlers()
            try:
                for executor in self.executors.values():
                    await executor.initialise()
                for feature in self.features:
                    await feature.initialise()
            except FeatureInitError as exc:
                log.error("%s", exc)
                print(f"megalodon: {exc}", file=sys.stderr)
                return exc.exit_code
            try:
                await self.recover()
                code = await self._loop()
            except Exception as exc:
                log.exception("worker crashed")
                if self.runner is not None:
                    with contextlib.suppress(Exception):
                        await self.runner.error_report(f"{type(exc).__name__}: {exc}", {"version": __version__})
                code = EXIT_INTERNAL_ERROR
            finally:
                for task in list(self.running):
                    with contextlib.suppress(BaseException):
                        await task
                for feature in self.features:
                    try:
                        await feature.shutdown()
                    except Exception:
                        log.exception("feature %s failed to shut down", feature.name)
                for executor in self.executors.values():
                    try:
                        await executor.close()
                    except Exception:
                        log.exception("executor %s failed to close", executor.name)
                if self._books_pending:
                    await asyncio.wait(set(self._books_pending))
                self._books.shutdown(wait=True)
                await self._save_state()
            await self._after_exit(code)
            return code

    async def _after_exit(self, code: int) -> None:
        """generic-worker shuts the machine down after exit 70 always, 68/69 when configured."""
        wanted = (
            code == EXIT_WORKER_MANAGER_SHUTDOWN
            or (code == EXIT_IDLE_TIMEOUT and self.config.shutdownMachineOnIdle)
            or (code == EXIT_INTERNAL_ERROR and self.config.shutdownMachineOnInternalError)
        )
        if not wanted:
            return
        if self.runner is not None and self.runner.capable("shutdown"):
            await self.runner.shutdown()
            return
        if code != EXIT_WORKER_MANAGER_SHUTDOWN or self.runner is not None:
            log.warning("shutting down the machine (exit code %d)", code)
            proc = await asyncio.create_subprocess_exec("sudo", "/sbin/shutdown", "-h", "now")
            await proc.wait()

    async def _loop(self) -> int:
        assert self.ctx is not None
        idle_since = time.monotonic()
        last_idle_log = 0.0
        while True:
            if self._stop_claiming:
                await self._drain()
                return self._exit_code if self._exit_code is not None else EXIT_WORKER_STOPPED
            limit = self.config.numberOfTasksToRun
            if limit and self.resolved >= limit:
                await self._drain()
                return EXIT_TASKS_COMPLETE
            if await self._worker_manager_says_terminate():
                log.info("worker-manager says this worker should terminate")
                self._stop_claiming = True
                await self._drain()
                return EXIT_WORKER_MANAGER_SHUTDOWN
            free = self.config.capacity - len(self.running)
            if limit:
                free = min(free, limit - self.resolved - len(self.running))
            if free <= 0:
                await self._wait_for_completion(None)
                continue
            if not self.running and self.config.idleTimeoutSecs:
                idle = time.monotonic() - idle_since
                if idle > self.config.idleTimeoutSecs:
                    if self.runner is None or await self._worker_manager_agrees_to_idle_exit():
                        log.info("idle for more than %ss: exiting", self.config.idleTimeoutSecs)
                        return EXIT_IDLE_TIMEOUT
                    idle_since = time.monotonic()
                elif time.monotonic() - last_idle_log > 60:
                    last_idle_log = time.monotonic()
                    log.info("No task claimed. Idle for %.0fs", idle)
            if not await self.ensure_disk_space():
                await self._wait_for_completion(CLAIM_ERROR_BACKOFF)
                continue
            claims = await self._claim(free)
            for claim in claims:
                task = asyncio.create_task(self._run_claim(claim))
                self.running[task] = None
                task.add_done_callback(self._task_done)
            if self.running:
                idle_since = time.monotonic()

    async def _worker_manager_agrees_to_idle_exit(self) -> bool:
        """With worker-runner, an idle worker only exits when worker-manager agrees (generic-worker)."""
        self._last_terminate_check = 0.0
        return await self._worker_manager_says_terminate()

    async def _claim(self, count: int) -> list[dict[str, Any]]:
        assert self.ctx is not None
        queue = self.ctx.queue()
        started = time.monotonic()
        claim = asyncio.create_task(
            queue.claimWork(
                self.config.task_queue_id,
                {"tasks": count, "workerGroup": self.config.workerGroup, "workerId": self.config.workerId},
            )
        )
        self._wake.clear()
        waker = asyncio.create_task(self._wake.wait())
        done, _ = await asyncio.wait({claim, waker}, return_when=asyncio.FIRST_COMPLETED)
        waker.cancel()
        if claim not in done:
            # Woken by a stop request: the long poll may still hand us tasks, which we must then run.
            if self._stop_claiming:
                claim.cancel()
                with contextlib.suppress(BaseException):
                    await claim
                return []
            done, _ = await asyncio.wait({claim})
        try:
            result: dict[str, Any] = claim.result()
        except (TaskclusterFailure, aiohttp.ClientError) as exc:
            log.warning("claimWork failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
            await asyncio.sleep(CLAIM_ERROR_BACKOFF)
            return []
        finally:
            if self.metrics is not None:
                self.metrics.observe_queue_call("claimWork", time.monotonic() - started)
        self.last_claim_at = time.monotonic()
        return list(result.get("tasks", []))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.resolved += 1
        self._wake.set()
        if self.metrics is not None:
            self.metrics.set_running(len(self.running))
        if not task.cancelled() and task.exception() is not None:
            log.error("task runner crashed", exc_info=task.exception())

    async def _wait_for_completion(self, patience: float | None) -> None:
        self._wake.clear()
        waker = asyncio.create_task(self._wake.wait())
        await asyncio.wait({waker, *self.running}, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
        waker.cancel()

    async def _drain(self) -> None:
        while self.running:
            await asyncio.wait(set(self.running))

    # -- one claim ---------------------------------------------------------------------------------------
    def task_dir_for(self, task_id: str, run_id: int) -> Path:
        base = Path(self.config.tasksDir).resolve()
        candidate = base / f"task_{task_id[:12]}_{run_id}"
        n = 0
        while candidate.exists():
            n += 1
            candidate = base / f"task_{task_id[:12]}_{run_id}_{n}"
        return candidate

    async def _run_claim(self, claim: dict[str, Any]) -> None:
        assert self.ctx is not None and self.journal is not None
        started = time.monotonic()
        task_def: dict[str, Any] = claim["task"]
        task_id: str = claim["status"]["taskId"]
        run_id = int(claim["runId"])
        current = asyncio.current_task()
        task_dir = self.task_dir_for(task_id, run_id)
        record = ClaimRecord(task_id, run_id, claim["credentials"], claim["takenUntil"], str(task_dir))
        current_ids = sorted({*self._current_ids(), task_id})
        journal = self.journal

        def start_files() -> None:
            # One thread hop for the claim's bookkeeping: task directory, journal record, status file.
            task_dir.mkdir(parents=True)
            journal.record(record)
            self._write_state(self.resolved, current_ids)

        await asyncio.get_running_loop().run_in_executor(self._books, start_files)
        if self.metrics is not None:
            self.metrics.task_claimed()
            self.metrics.set_running(len(self.running))
        self.plugins.task_claimed(task_id=task_id, run_id=run_id, task=task_def)
        executor = self.executor_for(task_def.get("payload"))
        run = TaskRun(
            task_id=task_id,
            run_id=run_id,
            task=task_def,
            worker=self.ctx,
            credentials=claim["credentials"],
            taken_until=parse_iso(claim["takenUntil"]),
            task_dir=task_dir,
            log=TaskLog(task_dir / "generic-worker" / "live_backing.log", style=executor.log_style),
        )
        run.data.worker_metadata = self.metadata()
        if current is not None:
            self.running[current] = run
        if self._exit_code == EXIT_WORKER_SHUTDOWN:
            run.abort(WorkerShutdown("Task aborted: worker is shutting down (worker-shutdown)"))

        def remember(credentials: dict[str, str]) -> None:
            entry = ClaimRecord(task_id, run_id, credentials, run.taken_until.isoformat(), str(task_dir))
            journal.record(entry)  # a few hundred bytes, written atomically: cheap enough on the loop

        run.on_credentials(remember)
        log.info("task %s/%s claimed (executor %s)", task_id, run_id, executor.name)
        on_reclaim_failure = self.metrics.reclaim_failed if self.metrics is not None else None
        reclaimer = asyncio.create_task(reclaim_loop(run, on_failure=on_reclaim_failure))
        try:
            state, reason = await execute(run, executor, self.features)
        finally:
            reclaimer.cancel()
            with contextlib.suppress(BaseException):
                await reclaimer
        await self._report(run, state, reason)
        if current is not None:
            self.running[current] = None
        resolved = self.resolved + 1  # _task_done counts it once this coroutine returns
        remaining_ids = self._current_ids()
        metadata = (
            json.dumps({"lastTaskUrl": f"{self.config.rootURL}/tasks/{task_id}/runs/{run_id}"}) + "\n"
            if self.config.enableMetadata
            else None
        )
        clean = self.config.cleanUpTaskDirs

        def end_files() -> None:
            # One thread hop: forget the claim, persist the count (survives a kill), tidy up.
            journal.remove(task_id, run_id)
            self._write_state(resolved, remaining_ids)
            if metadata is not None:
                (self.state_dir / METADATA_FILE).write_text(metadata)
            if clean:
                shutil.rmtree(task_dir, True)

        pending = asyncio.get_running_loop().run_in_executor(self._books, end_files)
        self._books_pending.add(pending)
        pending.add_done_callback(self._books_pending.discard)
        if self.metrics is not None:
            self.metrics.task_resolved(state, reason if not run.canceled else "canceled", time.monotonic() - started)
            self.metrics.bytes_uploaded(sum(a.size for a in run.uploaded.values()))
            for error in run.errors.errors:
                if isinstance(error, ResourceUnavailable):
                    self.metrics.upload_error()

    async def _report(self, run: TaskRun, state: State, reason: str) -> None:
        if run.canceled:
            log.info("task %s/%s was cancelled by the queue: nothing to report", run.task_id, run.run_id)
            self.plugins.task_resolved(task_id=run.task_id, run_id=run.run_id, state="exception", reason="canceled")
            return
        queue = run.queue()
        started = time.monotonic()
        method = {"completed": "reportCompleted", "failed": "reportFailed"}.get(state, "reportException")
        try:
            if state == "completed":
                await queue.reportCompleted(run.task_id, str(run.run_id))
            elif state == "failed":
                await queue.reportFailed(run.task_id, str(run.run_id))
            else:
                await queue.reportException(run.task_id, str(run.run_id), {"reason": reason})
        except (TaskclusterFailure, aiohttp.ClientError) as exc:
            log.error("task %s/%s: could not report %s/%s: %s", run.task_id, run.run_id, state, reason, exc)
        else:
            log.info("task %s/%s resolved %s/%s", run.task_id, run.run_id, state, reason)
        if self.metrics is not None:
            self.metrics.observe_queue_call(method, time.monotonic() - started)
        self.plugins.task_resolved(task_id=run.task_id, run_id=run.run_id, state=state, reason=reason)


def running_task_ids(state_dir: Path) -> list[str]:
    """What ``megalodon status`` shows: the tasks a worker using ``state_dir`` runs now."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("currentTaskIds", []))


__all__ = ["EXIT_TASKS_COMPLETE", "Worker", "running_task_ids"]
