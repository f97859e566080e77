"""The worker loop: claim work for free capacity, run each claim, report its resolution, exit when told.

Exit codes are generic-worker's (NOTES.md 1.8): 0 after ``numberOfTasksToRun`` tasks, 68 idle timeout,
71 stopped by SIGINT (running tasks finish), 72 shut down by SIGTERM (running tasks are aborted with
exception/worker-shutdown and still get their logs uploaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from . import __version__
from .config import WorkerConfig
from .contracts import Feature, FeatureInitError, TaskExecutor
from .errors import MalformedPayload, State, WorkerShutdown
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
EXIT_WORKER_STOPPED = 71
EXIT_WORKER_SHUTDOWN = 72
EXIT_INVALID_CONFIG = 73

#: Pause after a failed claimWork call before trying again.
CLAIM_ERROR_BACKOFF = 5.0


class NoExecutor(TaskExecutor):
    """Stands in when no installed executor accepts a payload, so the task still gets a log and a verdict."""

    name = "none"

    def validate_payload(self, run: TaskRun) -> None:
        installed = ", ".join(sorted(run.worker.plugins.executors)) or "none"
        raise MalformedPayload(
            f"No executor installed on this worker accepts this payload (configured executor: "
            f"{run.worker.config.executor!r}; installed executors: {installed})"
        )

    async def run(self, run: TaskRun) -> None:  # pragma: no cover - validate_payload always raises
        raise AssertionError("unreachable")


class Worker:
    """Claims and runs tasks until a stop condition; ``run()`` returns the process exit code."""

    def __init__(self, config: WorkerConfig, plugins: PluginHost) -> None:
        self.config = config
        self.plugins = plugins
        self.running: dict[asyncio.Task[None], TaskRun | None] = {}
        self.resolved = 0
        self._stop_claiming = False
        self._exit_code: int | None = None
        self._wake = asyncio.Event()
        self.ctx: WorkerContext | None = None
        self.executors: dict[str, TaskExecutor] = {}
        self.features: list[Feature] = []

    # -- stopping ----------------------------------------------------------------------------------------
    def stop(self, *, finish_tasks: bool) -> None:
        """Stop claiming; with ``finish_tasks=False`` abort running tasks with worker-shutdown."""
        if self._exit_code is None:
            self._exit_code = EXIT_WORKER_STOPPED if finish_tasks else EXIT_WORKER_SHUTDOWN
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

    def metadata(self) -> dict[str, Any]:
        meta = dict(self.config.workerTypeMetadata)
        meta["megalodon"] = {
            "version": __version__,
            "engine": "insecure",
            "executors": sorted(self.executors),
            "python-version": platform.python_version(),
            "os": sys.platform,
            "arch": platform.machine(),
        }
        return meta

    # -- main loop ---------------------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = False) -> int:
        async with aiohttp.ClientSession() as session:
            self.ctx = WorkerContext(self.config, self.plugins, session, self.config.credentials)
            self._instantiate(self.ctx)
            await asyncio.to_thread(Path(self.config.tasksDir).mkdir, parents=True, exist_ok=True)
            if handle_signals:
                self.install_signal_handlers()
            try:
                for feature in self.features:
                    await feature.initialise()
            except FeatureInitError as exc:
                log.error("%s", exc)
                print(f"megalodon: {exc}", file=sys.stderr)
                return exc.exit_code
            try:
                return await self._loop()
            finally:
                for task in list(self.running):
                    with contextlib.suppress(BaseException):
                        await task
                for feature in self.features:
                    try:
                        await feature.shutdown()
                    except Exception:
                        log.exception("feature %s failed to shut down", feature.name)

    async def _loop(self) -> int:
        assert self.ctx is not None
        queue = self.ctx.queue()
        idle_since = time.monotonic()
        while True:
            if self._stop_claiming:
                await self._drain()
                return self._exit_code if self._exit_code is not None else EXIT_WORKER_STOPPED
            limit = self.config.numberOfTasksToRun
            if limit and self.resolved >= limit:
                await self._drain()
                return EXIT_TASKS_COMPLETE
            free = self.config.capacity - len(self.running)
            if limit:
                free = min(free, limit - self.resolved - len(self.running))
            if free <= 0:
                await self._wait_for_completion()
                continue
            if not self.running and self.config.idleTimeoutSecs:
                if time.monotonic() - idle_since > self.config.idleTimeoutSecs:
                    log.info("idle for more than %ss: exiting", self.config.idleTimeoutSecs)
                    return EXIT_IDLE_TIMEOUT
            claims = await self._claim(queue, free)
            for claim in claims:
                task = asyncio.create_task(self._run_claim(claim))
                self.running[task] = None
                task.add_done_callback(self._task_done)
            if self.running:
                idle_since = time.monotonic()

    async def _claim(self, queue: Any, count: int) -> list[dict[str, Any]]:
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
            log.warning("claimWork failed: %s", exc)
            await asyncio.sleep(CLAIM_ERROR_BACKOFF)
            return []
        return list(result.get("tasks", []))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.resolved += 1
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("task runner crashed", exc_info=task.exception())

    async def _wait_for_completion(self) -> None:
        if not self.running:
            return
        self._wake.clear()
        waker = asyncio.create_task(self._wake.wait())
        await asyncio.wait({waker, *self.running}, return_when=asyncio.FIRST_COMPLETED)
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
        assert self.ctx is not None
        task_def: dict[str, Any] = claim["task"]
        task_id: str = claim["status"]["taskId"]
        run_id = int(claim["runId"])
        current = asyncio.current_task()
        self.plugins.task_claimed(task_id=task_id, run_id=run_id, task=task_def)
        executor = self.executor_for(task_def.get("payload"))
        task_dir = self.task_dir_for(task_id, run_id)
        task_dir.mkdir(parents=True)
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
        run.facts["worker_metadata"] = self.metadata()
        if current is not None:
            self.running[current] = run
        if self._exit_code == EXIT_WORKER_SHUTDOWN:
            run.abort(WorkerShutdown("Task aborted: worker is shutting down (worker-shutdown)"))
        log.info("task %s/%s claimed (executor %s)", task_id, run_id, executor.name)
        reclaimer = asyncio.create_task(reclaim_loop(run))
        try:
            state, reason = await execute(run, executor, self.features)
        finally:
            reclaimer.cancel()
            with contextlib.suppress(BaseException):
                await reclaimer
        await self._report(run, state, reason)
        if self.config.cleanUpTaskDirs:
            await asyncio.to_thread(shutil.rmtree, task_dir, True)

    async def _report(self, run: TaskRun, state: State, reason: str) -> None:
        if run.canceled:
            log.info("task %s/%s was cancelled by the queue: nothing to report", run.task_id, run.run_id)
            self.plugins.task_resolved(task_id=run.task_id, run_id=run.run_id, state="exception", reason="canceled")
            return
        queue = run.queue()
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
        self.plugins.task_resolved(task_id=run.task_id, run_id=run.run_id, state=state, reason=reason)
