"""File descriptors: a finished task holds none, the worker raises its soft limit, and many tasks under a low
hard limit all complete (issue 10: at capacity 4 under ``ulimit -n 1024`` finished live logs used to exhaust
the descriptors and crashed runners made the worker exit with claims it never reported)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.config import parse_config
from megalodon_core.double import PUBLIC_ARTIFACTS, TaskclusterDouble
from megalodon_core.double.faults import Fault
from megalodon_core.plugins import PluginHost
from megalodon_core.tasklog import TaskLog
from megalodon_core.testing import Harness, make_task
from megalodon_core.worker import Worker
from megalodon_features.livelog import LiveLogServer, LiveStream

MEGALODON = [sys.executable, "-m", "megalodon_core"]


# -- the live log stream ------------------------------------------------------------------------------------
def _open_paths() -> set[str]:
    """What this process's descriptors point at."""
    paths = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return paths


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str | None]:
    async with session.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers.get("Location")


async def test_finished_live_log_holds_no_descriptor_and_reopens_only_the_same_file(tmp_path: Path) -> None:
    tasklog = TaskLog(tmp_path / "live_backing.log")
    tasklog.write(b"header\n")
    tasklog.flush()
    fd = os.open(tasklog.path, os.O_RDONLY)
    artifact = "http://queue.example/api/queue/v1/task/T/runs/0/artifacts/public/logs/live_backing.log"
    stream = LiveStream(
        "s3cr3t", fd, tasklog.bytes_written, asyncio.get_running_loop(), path=tasklog.path, artifact_url=artifact
    )
    tasklog.add_sink(stream.append)
    server = LiveLogServer("127.0.0.1", 0)
    await server.start()
    server.register(stream)
    url = f"http://127.0.0.1:{server.port}/log/{stream.secret}"
    try:
        async with aiohttp.ClientSession() as session:
            tasklog.write(b"running\n")
            assert stream.holds_fd
            tasklog.close()
            stream.finish(tasklog.bytes_written)
            # Finished: the stream itself no longer holds the file...
            assert not stream.holds_fd
            assert str(tasklog.path) not in _open_paths()
            # ...yet a late reader gets the whole log, through a descriptor of its own.
            assert await _get(session, url) == (200, b"header\nrunning\n", None)
            # Another file put at the same path is never served: the reader goes to the artifact instead.
            tasklog.path.rename(tmp_path / "moved.log")
            tasklog.path.write_bytes(b"not the task's log\n")
            status, _, location = await _get(session, url)
            assert (status, location) == (303, artifact)
            # Gone (cleanUpTaskDirs): the backing log artifact has it all.
            tasklog.path.unlink()
            status, _, location = await _get(session, url)
            assert (status, location) == (303, artifact)
    finally:
        await server.stop()


# -- the worker's limit, and many tasks under a low hard limit ----------------------------------------------
def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    from megalodon_core.worker.fd_limit import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_open_files_limit() == (min(256, hard), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard or hard == resource.RLIM_INFINITY
        assert raise_open_files_limit() is None  # already there: nothing to do
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class FdWatch:
    """Samples a process's open descriptors (``/proc/PID/fd``) from a thread, keeping the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, len(os.listdir(f"/proc/{self.pid}/fd")))
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


TASKS = 2500
CAPACITY = 4
HARD_LIMIT = 1024


def _low_hard_limit() -> None:
    """In the worker's child before exec: ``ulimit -n 1024`` (soft and hard), as on the reported machine."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (HARD_LIMIT, HARD_LIMIT))


async def test_many_tasks_under_a_low_hard_limit_all_complete(tmp_path: Path) -> None:
    async with TaskclusterDouble(
        claim_work_wait=1.0, resolver_interval=0.5, anonymous_scopes=PUBLIC_ARTIFACTS
    ) as double:
        worker_type = "fd-limits"
        creds = double.worker_credentials("megalodon-test", worker_type, "g", "w")
        cfg = {
            "rootURL": double.root_url, "clientId": creds["clientId"], "accessToken": creds["accessToken"],
            "provisionerId": "megalodon-test", "workerType": worker_type, "workerGroup": "g", "workerId": "w",
            "tasksDir": str(tmp_path / "tasks"), "stateDir": str(tmp_path / "state"), "executor": "native",
            "requiredDiskSpaceMegabytes": 16, "capacity": CAPACITY, "numberOfTasksToRun": TASKS,
        }  # fmt: skip
        config = tmp_path / "worker.json"
        config.write_text(json.dumps(cfg))
        queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
        payload = {"command": [["true"]], "maxRunTime": 30}
        limit = asyncio.Semaphore(8)

        async def create() -> str:
            task_id: str = taskcluster.slugId()
            async with limit:
                await queue.createTask(task_id, make_task(payload, worker_type))
            return task_id

        task_ids = await asyncio.gather(*(create() for _ in range(TASKS)))
        stderr = tmp_path / "worker.stderr"
        started = time.monotonic()
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *MEGALODON, "run", "--config", str(config), cwd=tmp_path, stderr=err,
                preexec_fn=_low_hard_limit,  # the test's own child, before exec
            )  # fmt: skip
        watch = FdWatch(proc.pid)
        try:
            code = await asyncio.wait_for(proc.wait(), 900)
        finally:
            peak = watch.stop()
            if proc.returncode is None:
                proc.kill()
        elapsed = time.monotonic() - started
        log = stderr.read_text()
        print(f"\n{TASKS} tasks at capacity {CAPACITY}: {elapsed:.1f} s, peak worker fds {peak}")
        assert code == 0, log[-3000:]
        states: dict[str, int] = {}
        for task_id in task_ids:
            runs: list[dict[str, Any]] = double.task_state(task_id)["runs"]
            for run in runs:
                key = f"{run['state']}/{run.get('reasonResolved', '')}"
                states[key] = states.get(key, 0) + 1
        assert states == {"completed/completed": TASKS}, states
        assert "Too many open files" not in log
        # Bounded by capacity and readers, not by tasks finished in the last minute (that was ~1,000 and more).
        assert peak < 256, peak


# -- crashed task runners ----------------------------------------------------------------------------------
def _crash_task_log_of(monkeypatch: pytest.MonkeyPatch, task_id: str) -> None:
    """The crash issue 10 measured: the task log cannot be opened ("Too many open files") for one task — outside
    the pipeline's error handling, in the task runner itself."""
    from megalodon_core.worker import loop

    real = loop.TaskLog

    def task_log(path: Path, **kwargs: Any) -> TaskLog:
        if f"task_{task_id[:12]}_" in str(path):
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, **kwargs)

    monkeypatch.setattr(loop, "TaskLog", task_log)


async def _worker(harness: Harness, worker_type: str, **config: Any) -> Worker:
    host = PluginHost()
    return Worker(parse_config(harness.config(worker_type, **config), host.config_fields()), host)


async def test_a_crashed_runner_reports_internal_error_and_is_not_counted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_type = harness.worker_type()
    payload = {"command": [["true"]], "maxRunTime": 30}
    crashed = await harness.create(payload, worker_type)
    others = [await harness.create(payload, worker_type) for _ in range(2)]
    _crash_task_log_of(monkeypatch, crashed)
    worker = await _worker(harness, worker_type, numberOfTasksToRun=2)
    assert await asyncio.wait_for(worker.run(), 120) == 0
    runs = harness.double.task_state(crashed)["runs"]
    assert [(r["state"], r["reasonResolved"]) for r in runs] == [("exception", "internal-error")]
    # Not counted: the worker ran two more tasks before numberOfTasksToRun (2) was reached.
    for task_id in others:
        assert harness.double.task_state(task_id)["state"] == "completed"
    assert worker.resolved == 2
    assert worker.books.journal.entries() == []


async def test_a_crashed_run_whose_report_fails_is_resolved_before_the_worker_exits(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megalodon_core.worker import loop

    monkeypatch.setattr(loop, "CLAIM_ERROR_BACKOFF", 0.1)
    worker_type = harness.worker_type()
    payload = {"command": [["true"]], "maxRunTime": 30}
    crashed = await harness.create(payload, worker_type)
    other = await harness.create(payload, worker_type)
    _crash_task_log_of(monkeypatch, crashed)
    # Every attempt of the runner's own report is refused; the queue answers again by the time the worker exits.
    harness.double.faults.add(Fault(method="reportException", status=400, times=loop.CRASH_REPORT_ATTEMPTS))
    worker = await _worker(harness, worker_type, numberOfTasksToRun=1)
    assert await asyncio.wait_for(worker.run(), 120) == 0
    assert harness.double.task_state(other)["state"] == "completed"
    first = harness.double.task_state(crashed)["runs"][0]
    assert (first["state"], first["reasonResolved"]) == ("exception", "worker-shutdown")
    assert worker.books.journal.entries() == []


async def test_runners_crashing_in_a_row_stop_the_worker(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose every task runner crashes must not resolve a whole queue internal-error: after
    MAX_CONSECUTIVE_CRASHES in a row it stops claiming and exits 69 (generic-worker's internal error)."""
    from megalodon_core.worker import loop

    def broken(path: Path, **kwargs: Any) -> TaskLog:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(loop, "TaskLog", broken)
    worker_type = harness.worker_type()
    payload = {"command": [["true"]], "maxRunTime": 30}
    task_ids = [await harness.create(payload, worker_type) for _ in range(loop.MAX_CONSECUTIVE_CRASHES + 3)]
    worker = await _worker(harness, worker_type, numberOfTasksToRun=0)
    assert await asyncio.wait_for(worker.run(), 120) == 69
    states = [harness.double.task_state(t)["runs"][0]["state"] if harness.double.task_state(t)["runs"] else "pending"
              for t in task_ids]  # fmt: skip
    assert states.count("exception") == loop.MAX_CONSECUTIVE_CRASHES
    assert states.count("pending") == 3


async def test_a_run_that_crashed_before_its_directory_is_journalled_with_a_directory_nobody_uses(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery kills whatever works under a journalled run's directory: a crash before the run had one must
    never journal "" (the worker's own working directory) — it gets a path under tasksDir that never exists."""
    from megalodon_core.journal import ClaimRecord
    from megalodon_core.worker import loop

    monkeypatch.setattr(loop, "CLAIM_ERROR_BACKOFF", 0.1)

    def no_dir(self: Worker, task_id: str, run_id: int) -> Path:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Worker, "task_dir_for", no_dir)
    worker_type = harness.worker_type()
    crashed = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    harness.double.faults.add(Fault(method="reportException", status=400, times=loop.CRASH_REPORT_ATTEMPTS))
    worker = await _worker(harness, worker_type, numberOfTasksToRun=1, idleTimeoutSecs=2)
    journalled: list[ClaimRecord] = []
    record = worker.books.credentials_changed

    def spy(entry: ClaimRecord) -> None:
        journalled.append(entry)
        record(entry)

    monkeypatch.setattr(worker.books, "credentials_changed", spy)
    assert await asyncio.wait_for(worker.run(), 120) == 68  # nothing counted: the idle timeout ends it
    assert [e.task_id for e in journalled] == [crashed]
    directory = Path(journalled[0].task_dir)
    tasks_dir = Path(harness.config(worker_type)["tasksDir"]).resolve()
    assert directory.is_absolute() and tasks_dir in directory.parents and not directory.exists()
    first = harness.double.task_state(crashed)["runs"][0]
    assert (first["state"], first["reasonResolved"]) == ("exception", "worker-shutdown")
