"""The worker loop: claim work for free capacity, run each claim, report its resolution, exit when told.

What surrounds the loop lives next to it: exit codes and machine shutdown (:mod:`.exit_codes`), the state
files and claim bookkeeping (:mod:`.state_files`, :mod:`.bookkeeping`), the disk gate before each claim
(:mod:`.disk_gate`), crash recovery (:mod:`.recovery`), worker-manager's termination answer
(:mod:`.termination`), executor choice (:mod:`.executor_choice`) and the resolution report (:mod:`.report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import platform
import signal
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from .. import __version__
from ..config import WorkerConfig
from ..contracts import Feature, FeatureInitError, TaskExecutor
from ..errors import WorkerShutdown
from ..journal import ClaimRecord
from ..pipeline import execute
from ..plugins import PluginHost
from ..reclaim import Reclaimer
from ..task import TaskRun
from ..tasklog import TaskLog
from ..timefmt import parse_iso
from ..worker_context import WorkerContext
from .bookkeeping import ClaimBooks
from .disk_gate import DiskSpaceOwner, ensure_disk_space
from .drain import DRAIN_SIGNAL, WorkerFile
from .executor_choice import choose_executor, initialise_executors, instantiate_executors
from .exit_codes import (
    EXIT_IDLE_TIMEOUT,
    EXIT_INTERNAL_ERROR,
    EXIT_TASKS_COMPLETE,
    EXIT_WATCHDOG,
    EXIT_WORKER_MANAGER_SHUTDOWN,
    EXIT_WORKER_SHUTDOWN,
    EXIT_WORKER_STOPPED,
    shutdown_after_exit,
)
from .fd_limit import raise_open_files_limit
from .recovery import recover_runs
from .report import report_resolution
from .runner_link import NullRunnerLink, RunnerLink
from .self_checks import SelfChecks
from .state_files import clear_runtime_config, metadata_document, read_resolved_count, write_runtime_config
from .task_dirs import LOG_DIR, LOG_NAME, remove_leftover_spares
from .termination import TerminationCheck
from .watchdog import BACKSTOP_GRACE, Watchdog

log = logging.getLogger(__name__)

#: Pause after a failed claimWork call, or while disk is short, before trying again.
CLAIM_ERROR_BACKOFF = 5.0
#: Attempts (each with the client's own retries) to report a run whose task runner crashed.
CRASH_REPORT_ATTEMPTS = 3
#: Task runners crashing in a row (no run reported in between) after which the worker stops claiming and
#: exits 69: a worker whose every task crashes would otherwise resolve a whole queue internal-error.
MAX_CONSECUTIVE_CRASHES = 5
CRASHES_CAUSE = f"{MAX_CONSECUTIVE_CRASHES} task runners crashed in a row"

#: What the exit line says for each exit code the loop returns (71/72 say what stopped the worker).
EXIT_CAUSES = {
    EXIT_TASKS_COMPLETE: "numberOfTasksToRun tasks resolved",
    EXIT_IDLE_TIMEOUT: "idle timeout",
    EXIT_INTERNAL_ERROR: "internal error",
    EXIT_WORKER_MANAGER_SHUTDOWN: "worker-manager says this worker should terminate",
    EXIT_WATCHDOG: "the watchdog saw no claim-loop progress",
}


class Worker:
    """Claims and runs tasks until a stop condition; ``run()`` returns the process exit code."""

    def __init__(
        self,
        config: WorkerConfig,
        plugins: PluginHost,
        *,
        runner: RunnerLink | None = None,
        config_file: Path | None = None,
    ) -> None:
        """``runner``: the worker-runner link (None: not run by worker-runner, a null link stands in).

        ``config_file``: the file ``config`` was read from, offered to plugins as ``WorkerContext.config_file``.

        What observes the worker — core's Prometheus metrics, worker-runner log routing, third-party
        plugins — is a plugin on ``plugins``' lifecycle hooks, so the loop has no optional sinks.
        """
        self.config = config
        self.plugins = plugins
        self.runner: RunnerLink = runner if runner is not None else NullRunnerLink()
        self.config_file = config_file
        self.running: dict[asyncio.Task[None], TaskRun | None] = {}
        self.state_dir = Path(config.stateDir)
        self.resolved = 0
        self._stop_claiming = False
        self._exit_code: int | None = None
        #: What asked the worker to stop (a signal, worker-runner), for the exit line.
        self._stop_cause: str | None = None
        #: Runs the queue holds resolved whose coroutine still closes their books (:meth:`_hand_over`): out of
        #: the capacity count, still waited for at exit.
        self._closing: set[asyncio.Task[None]] = set()
        self._tasks_dir: Path | None = None
        #: Task runners that crashed since the last run that was reported (:data:`MAX_CONSECUTIVE_CRASHES`).
        self._consecutive_crashes = 0
        #: Where the worker's own servers listen (``metrics`` -> URL), for the start-up summary; the CLI sets it.
        self.endpoints: dict[str, str] = {}
        self._wake = asyncio.Event()
        # generic-worker only asks worker-manager when worker-runner started it.
        self._termination = TerminationCheck(config, enabled=runner is not None)
        self.last_claim_at = time.monotonic()
        self.ctx: WorkerContext | None = None
        self.executors: dict[str, TaskExecutor] = {}
        self.features: list[Feature] = []
        self.books = ClaimBooks(self.state_dir)
        #: Config values received at run time (worker-runner's new-credentials), for ``config explain``.
        self.runtime_config: dict[str, Any] = {}
        clear_runtime_config(self.state_dir)
        #: ``megalodon-worker.json``: pid, state and failing self-checks, for ``drain`` and ``status``.
        self.worker_file = WorkerFile(self.state_dir)
        self.watchdog = Watchdog(
            config.watchdogTimeoutSecs, waiting_on_tasks=self._waiting_on_tasks, on_expiry=self._watchdog_expired
        )

    # -- stopping ----------------------------------------------------------------------------------------
    def stop(self, *, finish_tasks: bool, cause: str = "stop requested") -> None:
        """Stop claiming; with ``finish_tasks=False`` abort running tasks with worker-shutdown.

        ``cause`` (``SIGTERM``, ``graceful-termination from worker-runner``...) is logged now and in the
        exit line.  An in-flight claimWork long poll is abandoned at once (:meth:`_claim`).
        """
        running = sum(1 for run in self.running.values() if run is not None)
        what = "running tasks finish first" if finish_tasks else "running tasks are aborted (worker-shutdown)"
        log.info("stopping (%s): no more claims; %d %s", cause, running, what)
        if self._stop_cause is None or not finish_tasks:
            self._stop_cause = cause
        if self._exit_code is None:
            self._exit_code = EXIT_WORKER_STOPPED if finish_tasks else EXIT_WORKER_SHUTDOWN
        elif not finish_tasks and (self._exit_code == EXIT_WORKER_STOPPED or self.worker_file.state == "draining"):
            self._exit_code = EXIT_WORKER_SHUTDOWN  # a request never downgrades from immediate to graceful
        self._stop_claiming = True
        if not finish_tasks:
            for run in self.running.values():
                if run is not None:
                    run.abort(WorkerShutdown("Task aborted: worker is shutting down (worker-shutdown)"))
        self._wake.set()

    def drain(self) -> None:
        """Drain (SIGUSR1, ``megalodon drain``): no more claims, running tasks finish and report, then exit 0."""
        running = sum(1 for run in self.running.values() if run is not None)
        log.info("draining: no more claims; %d running tasks finish, then the worker exits 0", running)
        if self._exit_code is None:
            self._exit_code = EXIT_TASKS_COMPLETE
            self._stop_cause = "drain"
        self.worker_file.set("draining")
        self._stop_claiming = True
        self._wake.set()

    def _waiting_on_tasks(self) -> bool:
        """Whether the loop waits for running tasks rather than claiming (the watchdog waits with it)."""
        if not self.running:
            return False
        limit = self.config.numberOfTasksToRun
        at_limit = bool(limit) and self.resolved + len(self.running) >= limit
        return self._stop_claiming or at_limit or len(self.running) >= self.config.capacity

    async def _watchdog_expired(self, reason: str) -> None:
        """The watchdog fired: report it, abort running tasks (worker-shutdown) and exit 90."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.runner.error_report(reason, {"version": __version__}, title="megalodon watchdog"), 10
            )
        self._exit_code = EXIT_WATCHDOG
        self.stop(finish_tasks=False, cause="watchdog")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(DRAIN_SIGNAL, self.drain)
        loop.add_signal_handler(signal.SIGINT, lambda: self.stop(finish_tasks=True, cause="SIGINT"))
        loop.add_signal_handler(signal.SIGTERM, lambda: self.stop(finish_tasks=False, cause="SIGTERM"))

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
        write_runtime_config(self.state_dir, self.runtime_config)
        log.info("worker credentials replaced (clientId %s)", credentials.get("clientId"))

    # -- setup -------------------------------------------------------------------------------------------
    def _instantiate(self, ctx: WorkerContext) -> None:
        self.executors = instantiate_executors(self.config, self.plugins, ctx)
        self.features = [info.factory(ctx) for info in self.plugins.features.values()]

    def executor_for(self, payload: Any) -> TaskExecutor:
        assert self.ctx is not None
        return choose_executor(self.config, self.plugins, self.executors, self.ctx, payload)

    @functools.cached_property
    def _metadata(self) -> dict[str, Any]:
        meta = dict(self.config.workerTypeMetadata)
        meta["megalodon"] = {
            "version": __version__,
            "executors": sorted(self.executors),
            "python-version": platform.python_version(),
            "os": sys.platform,
            "arch": platform.machine(),
        }
        return meta

    def metadata(self) -> dict[str, Any]:
        """What the task log header shows about this worker (computed once: it cannot change)."""
        return self._metadata

    def _current_ids(self) -> list[str]:
        return sorted(r.task_id for r in self.running.values() if r is not None)

    async def recover(self) -> int:
        """Resolve the runs a previous, killed process of this worker still held (exception/worker-shutdown)."""
        assert self.ctx is not None
        return await recover_runs(self.books.journal, self.ctx, clean_task_dirs=self.config.cleanUpTaskDirs)

    async def ensure_disk_space(self) -> bool:
        """True when ``requiredDiskSpaceMegabytes`` are free, after evicting what can be evicted."""
        owners: list[DiskSpaceOwner] = [*self.features, *self.executors.values()]
        return await ensure_disk_space(self.config.tasksDir, self.config.requiredDiskSpaceMegabytes, owners)

    # -- main loop ---------------------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = False) -> int:
        """Run until a stop condition; return the exit code.  Plugins see it start and stop (lifecycle hooks)."""
        self.plugins.worker_started(worker_group=self.config.workerGroup, worker_id=self.config.workerId)
        code = EXIT_INTERNAL_ERROR  # what plugins are told if set-up raises (the CLI may map it, e.g. to 73)
        try:
            code = await self._run(handle_signals=handle_signals)
            asked = self._stop_cause in ("drain", CRASHES_CAUSE)
            stopped = asked or code in (EXIT_WORKER_STOPPED, EXIT_WORKER_SHUTDOWN)
            cause = self._stop_cause if stopped else None
            log.info(
                "worker exiting with code %d (%s) after %d resolved tasks",
                code,
                cause or EXIT_CAUSES.get(code, "stopped"),
                self.resolved,
            )
            return code
        finally:
            self.plugins.worker_stopped(exit_code=code)

    def _log_summary(self) -> None:
        """One INFO line saying what this worker is: pool, id, what is loaded, capacity, where it listens."""
        cfg = self.config
        enabled = [f.name for f in self.features if f.is_enabled()]
        disabled = [f.name for f in self.features if not f.is_enabled()]
        features = ", ".join(enabled) or "none"
        if disabled:
            features += f"; features disabled by config: {', '.join(disabled)}"
        listening = dict(self.endpoints)
        for feature in self.features:
            where = feature.listening()
            if where:
                listening[feature.name] = where
        limit = f", numberOfTasksToRun {cfg.numberOfTasksToRun}" if cfg.numberOfTasksToRun else ""
        log.info(
            "megalodon %s worker %s/%s of pool %s started: executors %s; features %s; capacity %d%s; %s",
            __version__,
            cfg.workerGroup,
            cfg.workerId,
            cfg.task_queue_id,
            ", ".join(sorted(self.executors)) or "none",
            features,
            cfg.capacity,
            limit,
            "listening: " + ", ".join(f"{k} {v}" for k, v in listening.items()) if listening else "no listeners",
        )

    async def _run(self, *, handle_signals: bool) -> int:
        raise_open_files_limit()
        async with aiohttp.ClientSession() as session:
            self.ctx = WorkerContext(
                self.config, self.plugins, session, self.config.credentials, config_file=self.config_file
            )
            self._instantiate(self.ctx)
            await asyncio.to_thread(Path(self.config.tasksDir).mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(remove_leftover_spares, Path(self.config.tasksDir))
            await self.books.open()
            self.resolved = await asyncio.to_thread(read_resolved_count, self.state_dir)
            if handle_signals:
                self.install_signal_handlers()
            try:
                await initialise_executors(self.config, self.executors)
                for feature in self.features:
                    await feature.initialise()
            except FeatureInitError as exc:
                log.error("%s", exc)
                print(f"megalodon: {exc}", file=sys.stderr)
                return exc.exit_code
            self._log_summary()
            self.worker_file.write()
            watchdog = asyncio.create_task(self.watchdog.run()) if self.watchdog.enabled else None
            if watchdog is not None and handle_signals:  # this worker owns its process: a blocked loop ends it
                self.watchdog.start_backstop(max(BACKSTOP_GRACE, float(self.config.watchdogTimeoutSecs)))
            try:
                await self.recover()
                if handle_signals:  # this worker owns its process
                    # Start-up objects (modules, config, plugins, clients) live as long as the process: out of
                    # the collector's way, its full passes scan only what tasks allocate (issue 13).
                    gc.freeze()
                code = await self._loop()
            except Exception as exc:
                log.exception("worker crashed")
                with contextlib.suppress(Exception):
                    await self.runner.error_report(f"{type(exc).__name__}: {exc}", {"version": __version__})
                code = EXIT_INTERNAL_ERROR
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                for task in [*self.running, *self._closing]:
                    with contextlib.suppress(BaseException):
                        await task
                await self._resolve_unreported()
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
                await self.books.close(self.resolved, self._current_ids())
                self.worker_file.remove()
            await shutdown_after_exit(code, self.config, self.runner, managed=self._termination.enabled)
            return code

    async def _loop(self) -> int:
        assert self.ctx is not None
        idle_since = time.monotonic()
        last_idle_log = 0.0
        checks = SelfChecks(
            self.config,
            self.ctx,
            self.executors,
            disk=self.ensure_disk_space,
            runner=self.runner,
            on_change=self.worker_file.quarantine,
        )
        while True:
            if self._stop_claiming:
                await self._drain()
                return self._exit_code if self._exit_code is not None else EXIT_WORKER_STOPPED
            limit = self.config.numberOfTasksToRun
            if limit and self.resolved >= limit:
                await self._drain()
                return EXIT_TASKS_COMPLETE
            if await self._termination.says_terminate(self.ctx):
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
                    # With worker-runner, an idle worker only exits when worker-manager agrees (generic-worker).
                    if not self._termination.enabled or await self._termination.says_terminate(self.ctx, now=True):
                        log.info("idle for more than %ss: exiting", self.config.idleTimeoutSecs)
                        return EXIT_IDLE_TIMEOUT
                    idle_since = time.monotonic()
                elif time.monotonic() - last_idle_log > 60:
                    last_idle_log = time.monotonic()
                    log.info("No task claimed. Idle for %.0fs", idle)
            if not await checks.passing():  # disk, inodes, executors, clock, credentials (.self_checks)
                await self._wait_for_completion(CLAIM_ERROR_BACKOFF)
                continue
            claims = await self._claim(free)
            for claim in claims:
                task = asyncio.create_task(self._run_claim(claim))
                self.running[task] = None
                task.add_done_callback(self._task_done)
            if self.running:
                idle_since = time.monotonic()

    async def _claim(self, count: int) -> list[dict[str, Any]]:
        assert self.ctx is not None
        queue = self.ctx.queue()
        started = time.monotonic()
        self.watchdog.begin("claimWork")
        claim = asyncio.create_task(
            queue.claimWork(
                self.config.task_queue_id,
                {"tasks": count, "workerGroup": self.config.workerGroup, "workerId": self.config.workerId},
            )
        )
        # Other wake-ups (a task finishing, with capacity > 1) keep the poll going: its answer may hold tasks
        # we must then run.  Only a stop request abandons it, at once, however long the poll would last.  The
        # answer wakes this loop like any other event (no waiting task per claim).
        claim.add_done_callback(lambda _: self._wake.set())
        while not claim.done():
            self._wake.clear()
            if self._stop_claiming:
                claim.cancel()
                with contextlib.suppress(BaseException):
                    await claim
                log.info("claimWork long poll abandoned: the worker is stopping")
                return []
            await self._wake.wait()
        try:
            result: dict[str, Any] = claim.result()
        except (TaskclusterFailure, aiohttp.ClientError, TimeoutError) as exc:
            # TimeoutError: the client does not wrap its session's total timeout (a queue that stopped answering).
            log.warning("claimWork failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            await asyncio.sleep(CLAIM_ERROR_BACKOFF)
            return []
        finally:
            self.plugins.queue_call(method="claimWork", seconds=time.monotonic() - started)
            self.watchdog.progress("a claimWork round trip")
        self.last_claim_at = time.monotonic()
        return list(result.get("tasks", []))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.running.pop(task, False) is not False:  # not handed over: its capacity is freed now
            self._wake.set()
            self.plugins.running_changed(running=len(self.running))
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task runner crashed", exc_info=task.exception())

    async def _hand_over(self) -> None:
        """The queue holds the current run resolved: free its capacity, count it, and let the loop's next
        claimWork go out before the run's books are closed (issue 13).

        At capacity 1 the worker otherwise sat on its resolved run's journal, state files and directory
        (and the resolution's log line and hooks) before asking for the next task: 0.6 ms of every task's
        wall time, now spent while the queue answers that claimWork.  Only runs the queue holds resolved
        count toward ``numberOfTasksToRun`` (a crashed task runner's never does), and only here.

        Three turns of the event loop: the loop wakes and starts its claimWork, the claim's task builds the
        request, and (Python < 3.12) aiohttp writes its body from a task of its own.  Only the order of work
        depends on it: the books are closed after those turns whatever the loop did in them.
        """
        current = asyncio.current_task()
        self.resolved += 1
        if current is None or self.running.pop(current, False) is False:
            return
        self._closing.add(current)
        self._wake.set()
        self.plugins.running_changed(running=len(self.running))
        for _ in range(3):
            await asyncio.sleep(0)

    async def _wait_for_completion(self, patience: float | None) -> None:
        """Until a run ends or something else wakes the loop (every run's end sets :attr:`_wake`, see
        :meth:`_task_done`), at most ``patience`` seconds."""
        self._wake.clear()
        if patience is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), patience)

    async def _drain(self) -> None:
        while self.running or self._closing:
            await asyncio.wait({*self.running, *self._closing})

    # -- one claim ---------------------------------------------------------------------------------------
    def task_dir_for(self, task_id: str, run_id: int) -> Path:
        base = self._tasks_dir
        if base is None:  # resolved once: a symlink in the path is followed as it was at the first claim
            base = self._tasks_dir = Path(self.config.tasksDir).resolve()
        candidate = base / f"task_{task_id[:12]}_{run_id}"
        n = 0
        while candidate.exists():
            n += 1
            candidate = base / f"task_{task_id[:12]}_{run_id}_{n}"
        return candidate

    async def _run_claim(self, claim: dict[str, Any]) -> None:
        """Run one claim to its report; a task runner that crashes still gets its run reported.

        A crash (an error outside the pipeline's own handling: the task directory, the log file, an
        executor's constructor, the bookkeeping...) is reported exception/internal-error and does not count
        toward ``numberOfTasksToRun``, so the worker goes on claiming and never exits early with claims it
        did not report.
        """
        started = time.monotonic()
        current = asyncio.current_task()
        task_id: str = claim["status"]["taskId"]
        run_id = int(claim["runId"])
        record = ClaimRecord(task_id, run_id, claim["credentials"], claim["takenUntil"], "")
        try:
            reported = await self._run_claimed(claim, started, record)
        except Exception as exc:
            if current in self._closing:
                # Reported and counted (:meth:`_hand_over`): only what follows failed.  A record left in the
                # journal is found resolved when the worker exits (or starts next), and skipped.
                log.error(
                    "task %s/%s: resolved, but what follows its report failed (%s: %s)",
                    task_id,
                    run_id,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                return
            reported = await self._runner_crashed(record, exc, started)
            self._consecutive_crashes += 1
            if self._consecutive_crashes >= MAX_CONSECUTIVE_CRASHES and not self._stop_claiming:
                log.error(
                    "%d task runners crashed in a row: no more claims; the worker exits %d once running tasks end",
                    self._consecutive_crashes,
                    EXIT_INTERNAL_ERROR,
                )
                self._exit_code = EXIT_INTERNAL_ERROR
                self._stop_cause = CRASHES_CAUSE
                self._stop_claiming = True
                self._wake.set()
        else:
            self._consecutive_crashes = 0 if reported else self._consecutive_crashes

    async def _runner_crashed(self, record: ClaimRecord, exc: Exception, started: float) -> bool:
        """Report a crashed runner's run exception/internal-error; False: not counted (it never is)."""
        assert self.ctx is not None
        task_id, run_id = record.task_id, record.run_id
        current = asyncio.current_task()
        run = self.running.get(current) if current is not None else None
        if current is not None and current in self.running:
            self.running[current] = None
        log.error(
            "task %s/%s: task runner crashed (%s: %s): reporting exception/internal-error; "
            "it does not count toward numberOfTasksToRun",
            task_id,
            run_id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        credentials = record.credentials
        if run is not None:
            credentials = run.credentials  # a reclaim may have replaced them
            run.abort(WorkerShutdown("Task aborted: its task runner crashed"))
            with contextlib.suppress(Exception):
                run.log.close()  # release its descriptor now
        resolved_elsewhere = False
        for attempt in range(CRASH_REPORT_ATTEMPTS):
            try:
                await self.ctx.queue(credentials).reportException(task_id, str(run_id), {"reason": "internal-error"})
                break
            except TaskclusterFailure as failure:
                if getattr(failure, "status_code", None) == 409:
                    resolved_elsewhere = True  # cancelled, deadline, or claim expired: nothing left to report
                    break
                error: Exception = failure
            except (aiohttp.ClientError, TimeoutError) as client_error:
                error = client_error
            if attempt + 1 < CRASH_REPORT_ATTEMPTS:
                await asyncio.sleep(CLAIM_ERROR_BACKOFF)
        else:
            log.error(
                "task %s/%s: could not report the crashed run (%s); it stays in the claim journal and is "
                "resolved before this worker exits, or by its next start",
                task_id,
                run_id,
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )
            # Recovery kills processes working under the record's directory: a run that crashed before it had
            # one gets a path that never exists (never "", which would mean the worker's own directory).
            journal_dir = record.task_dir or self._unstarted_dir(task_id, run_id)
            with contextlib.suppress(Exception):
                self.books.credentials_changed(
                    ClaimRecord(task_id, run_id, credentials, record.taken_until, journal_dir)
                )
            return False
        reason = "canceled" if resolved_elsewhere else "internal-error"
        self.plugins.task_resolved(
            task_id=task_id,
            run_id=run_id,
            state="exception",
            reason=reason,
            duration=time.monotonic() - started,
            run=None,
        )
        task_dir = Path(record.task_dir) if record.task_dir else None
        if task_dir is not None:
            self.books.claim_ended(
                task_id,
                run_id,
                task_dir,
                resolved=self.resolved,
                current=self._current_ids(),
                metadata=None,
                clean=self.config.cleanUpTaskDirs,
            )
        return False

    def _unstarted_dir(self, task_id: str, run_id: int) -> str:
        """A directory under ``tasksDir`` that no run ever creates (for a claim that crashed before it had one)."""
        return str(Path(self.config.tasksDir).resolve() / f"unstarted_{task_id}_{run_id}")

    async def _resolve_unreported(self) -> None:
        """Before exiting: runs still in the claim journal (a crashed runner whose report failed) are
        resolved now, as a restarted worker would resolve them."""
        try:
            left = await self.books.unreported()
        except Exception:
            log.exception("could not read the claim journal")
            return
        if left:
            log.warning("%d claimed runs were not reported: resolving them before exiting", len(left))
            await self.recover()

    async def _run_claimed(self, claim: dict[str, Any], started: float, record: ClaimRecord) -> bool:
        assert self.ctx is not None
        task_def: dict[str, Any] = claim["task"]
        task_id, run_id = record.task_id, record.run_id
        current = asyncio.current_task()
        task_dir = self.task_dir_for(task_id, run_id)
        record.task_dir = str(task_dir)
        await self.books.claim_started(record, task_dir, self.resolved, sorted({*self._current_ids(), task_id}))
        self.plugins.task_claimed(task_id=task_id, run_id=run_id, task=task_def)
        self.plugins.running_changed(running=len(self.running))
        executor = self.executor_for(task_def.get("payload"))
        run = TaskRun(
            task_id=task_id,
            run_id=run_id,
            task=task_def,
            worker=self.ctx,
            credentials=claim["credentials"],
            taken_until=parse_iso(claim["takenUntil"]),
            task_dir=task_dir,
            log=TaskLog(task_dir / LOG_DIR / LOG_NAME, style=executor.log_style),
        )
        run.data.worker_metadata = self.metadata()
        run.data.phases.claimed(claim, at=started)
        if current is not None:
            self.running[current] = run
        if self._exit_code == EXIT_WORKER_SHUTDOWN:
            run.abort(WorkerShutdown("Task aborted: worker is shutting down (worker-shutdown)"))

        # A weak reference: the run holds this listener, and a closure over the run would make the whole
        # run (log, executor run, payload...) a reference cycle left to the garbage collector (issue 13).
        run_ref = weakref.ref(run)

        def remember(credentials: dict[str, str]) -> None:
            current = run_ref()
            if current is not None:
                self.books.credentials_changed(
                    ClaimRecord(task_id, run_id, credentials, current.taken_until.isoformat(), str(task_dir))
                )

        run.on_credentials(remember)
        log.info("task %s/%s claimed (executor %s)", task_id, run_id, executor.name)
        reclaiming = Reclaimer(
            run, on_failure=functools.partial(self.plugins.reclaim_failed, task_id=task_id, run_id=run_id)
        )
        try:
            state, reason = await execute(run, executor, self.features)
        finally:
            await reclaiming.stop()
        reported = await report_resolution(
            run, state, reason, plugins=self.plugins, duration=time.monotonic() - started, settled=self._hand_over
        )
        if current is not None and current in self.running:
            self.running[current] = None
        if not reported:
            return False  # the journal keeps the claim: resolved before exit (_resolve_unreported)
        self.books.claim_ended(
            task_id,
            run_id,
            task_dir,
            resolved=self.resolved,
            current=self._current_ids(),
            metadata=metadata_document(self.config.rootURL, task_id, run_id) if self.config.enableMetadata else None,
            clean=self.config.cleanUpTaskDirs,
        )
        return True
