"""megalodon benchmarks: per-task overhead, worker memory while uploading, task log throughput.

Run with ``python benchmarks/run.py [--json PATH] [--only NAME ...]``; ``MEGALODON_BENCH_QUICK=1`` (or
``--quick``) uses smaller sizes so the whole suite finishes in under a minute.

Every figure is printed next to a baseline measured *in the same run, on the same machine*, because
absolute timings mean little across machines while the ratio shows what megalodon itself costs.  Nothing
is asserted: the goals (<= 1.3x per-task overhead, < 150 MB worker RSS while uploading, >= 50 MB/s log
throughput) are printed beside the figures for a reader to judge, and the exit code is 0 unless a
benchmark crashed.

Scenarios (see ``benchmarks/README.md`` for what each number means):

- ``overhead``: N trivial tasks (``true``) run back to back by an in-process worker against the
  Taskcluster double, against the same minimum queue calls made by hand with the same client and a bare
  subprocess.
- ``upload``: a worker *process* (``python -m megalodon_core run``) uploads one big random artifact (s3
  gzip, s3 identity, object storage); its RSS is sampled every 50 ms from a thread of this process.
- ``log``: a worker process runs a task printing lots of text; the command's wall time as the worker
  saw it against the same command redirected to a file by ``sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import taskcluster
import taskcluster.aio
from common import PROVISIONER, WORKER_GROUP, WORKER_ID, make_task, ratio, scratch, stats, worker_config
from floor import publish_and_report
from per_task import SCENARIOS as PER_TASK_SCENARIOS

from megalodon_core import hookimpl
from megalodon_core.config import parse_config
from megalodon_core.double import TaskclusterDouble
from megalodon_core.plugins import PluginHost
from megalodon_core.tasklog import TaskLog
from megalodon_core.timefmt import iso, parse_iso, utcnow
from megalodon_core.worker import Worker

LOG_CONTENT_TYPE = "text/plain; charset=utf-8"
MIB = 1 << 20
#: RSS sampling period: short enough to catch a buffer that lives for a fraction of a second.
SAMPLE_INTERVAL = 0.05
#: Targets from the project's goals; printed, never enforced.
GOAL_OVERHEAD_RATIO = 1.3
GOAL_UPLOAD_RSS_MB = 150
GOAL_LOG_MB_S = 50


# -- settings ----------------------------------------------------------------------------------------------
@dataclass
class Settings:
    quick: bool
    tasks: int
    upload_mib: int
    log_mib: int
    object_storage: bool
    idle_seconds: float
    #: Alternating rounds of the per-task scenarios (0: their default, 3, quick 1): more on a noisy machine,
    #: where one slow round moves a median of three.
    rounds: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        quick = args.quick or os.environ.get("MEGALODON_BENCH_QUICK", "").strip().lower() in ("1", "true", "yes")
        return cls(
            quick=quick,
            tasks=args.tasks or (5 if quick else 20),
            upload_mib=args.upload_mib or (100 if quick else 500),
            log_mib=args.log_mib or (50 if quick else 200),
            object_storage=not args.no_object,
            idle_seconds=0.5 if quick else 1.5,
            rounds=args.rounds,
        )


# -- small helpers -----------------------------------------------------------------------------------------
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|µs|us|ms|h|m|s)")
_GO_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds from a Go ``time.Duration.String`` (the task log's "Wall Time: 1m2.5s")."""
    return sum(float(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(text))


def log_tail(path: Path, size: int = 64 * 1024) -> str:
    """The end of a (possibly huge) task log: the result block and the closing lines are there."""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read().decode(errors="replace")


def log_facts(tail: str) -> dict[str, Any]:
    """Command wall time and the "Task Finished" wall-clock instant, read from the backing log's tail."""
    facts: dict[str, Any] = {}
    wall = re.search(r"Wall Time: (\S+)", tail)
    if wall:
        facts["command_wall_s"] = parse_go_duration(wall.group(1))
    finished = re.search(r"\[taskcluster (\S+)\] === Task Finished ===", tail)
    if finished:
        facts["task_finished_at"] = parse_iso(finished.group(1)).timestamp()
    return facts


def find_backing_log(tasks_dir: Path) -> Path | None:
    found = sorted(tasks_dir.glob("task_*/generic-worker/live_backing.log"))
    return found[-1] if found else None


class LoopStallProbe:
    """Longest delay of a 1 ms timer on the current loop: shows anything that blocks the event loop.

    It shares the loop with the double and the code under test, so it measures the loop as a whole; the
    baseline run carries the same probe and the same double.
    """

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.max_stall = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            self.max_stall = max(self.max_stall, loop.time() - before - self.period)

    def __enter__(self) -> LoopStallProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


class PutRecorder:
    """Times every storage PUT the double serves (wall clock, so it lines up with task log timestamps).

    The double's dispatcher looks ``store.handle`` up on each request, so wrapping the bound method on the
    instance sees both s3 putUrl uploads and object-service putUrl uploads.
    """

    def __init__(self, double: TaskclusterDouble) -> None:
        self.puts: list[dict[str, Any]] = []
        inner = double.store.handle

        async def handle(request: Any) -> Any:
            if request.method != "PUT":
                return await inner(request)
            start = time.time()
            response = await inner(request)
            self.puts.append(
                {
                    "start": start,
                    "end": time.time(),
                    "bytes": int(request.headers.get("Content-Length", "0") or 0),
                    "encoding": request.headers.get("Content-Encoding"),
                    "status": response.status,
                }
            )
            return response

        double.store.handle = handle  # type: ignore[method-assign]

    def largest(self) -> dict[str, Any] | None:
        return max(self.puts, key=lambda p: p["bytes"]) if self.puts else None


def read_hwm(pid: int) -> int | None:
    """The kernel's RSS high-water mark (VmHWM) in bytes: the true peak, which sampling can miss."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's RSS every 50 ms from a thread.

    A thread, not a coroutine, because this process's event loop also serves the double and may be busy
    writing uploads to disk; the cadence must not depend on it.  The worker's descendants (the task's own
    commands) are sampled separately: they are not the worker's memory.
    """

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, worker rss, children rss)
        self.hwm: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                children = 0
                for child in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        children += child.memory_info().rss
                hwm = read_hwm(self.proc.pid)
            except psutil.Error:
                return
            if hwm is not None:
                self.hwm = hwm
            self.samples.append((time.monotonic(), rss, children))
            self._stop.wait(self.interval)

    def peak(self, since: float = 0.0) -> int:
        return max((s[1] for s in self.samples if s[0] >= since), default=0)

    def peak_children(self, since: float = 0.0) -> int:
        return max((s[2] for s in self.samples if s[0] >= since), default=0)

    def median(self, start: float, end: float) -> int:
        window = [s[1] for s in self.samples if start <= s[0] <= end]
        return int(statistics.median(window)) if window else 0


# -- scenario 1: per-task overhead -------------------------------------------------------------------------
class TaskTimes:
    """Worker lifecycle hooks, recording when each task was claimed, started and resolved."""

    __name__ = "megalodon-bench-timer"

    def __init__(self) -> None:
        self.claimed: list[float] = []
        self.started: list[float] = []
        self.resolved: list[float] = []
        self.states: list[str] = []

    @hookimpl
    def megalodon_task_claimed(self, task_id: str, run_id: int, task: dict[str, Any]) -> None:
        self.claimed.append(time.perf_counter())

    @hookimpl
    def megalodon_task_started(self, task_id: str, run_id: int, executor: str) -> None:
        self.started.append(time.perf_counter())

    @hookimpl
    def megalodon_task_resolved(self, task_id: str, run_id: int, state: str, reason: str) -> None:
        self.resolved.append(time.perf_counter())
        self.states.append(f"{state}/{reason}")


TRIVIAL_PAYLOAD: dict[str, Any] = {"command": [["true"]], "maxRunTime": 30}


async def create_tasks(root: Any, worker_type: str, n: int) -> tuple[list[str], list[float]]:
    """Create ``n`` tasks one after the other; return their ids and how long each createTask took."""
    ids: list[str] = []
    times: list[float] = []
    for _ in range(n):
        task_id = taskcluster.slugId()
        t0 = time.perf_counter()
        await root.createTask(task_id, make_task(TRIVIAL_PAYLOAD, worker_type))
        times.append(time.perf_counter() - t0)
        ids.append(task_id)
    return ids, times


def intervals(start: float, ends: list[float]) -> list[float]:
    """Per-task time when tasks run back to back: from the previous resolution (or the start) to this one."""
    out = []
    prev = start
    for end in ends:
        out.append(end - prev)
        prev = end
    return out


def calls_since(double: TaskclusterDouble, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in double.calls.items() if v != before.get(k, 0)}


def check_completed(double: TaskclusterDouble, ids: list[str], side: str) -> None:
    states = {t: double.task_state(t)["state"] for t in ids}
    bad = {t: s for t, s in states.items() if s != "completed"}
    if bad:
        raise RuntimeError(f"{side}: tasks not completed: {bad}")


async def baseline_tasks(
    double: TaskclusterDouble, session: aiohttp.ClientSession, n: int, worker_type: str
) -> dict[str, Any]:
    """The least any worker must do per task, with the same client: claim, run, one log + link, report."""
    root = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session)
    creds = double.worker_credentials(PROVISIONER, worker_type, WORKER_GROUP, WORKER_ID)
    wq = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": creds}, session=session)
    ids, create_times = await create_tasks(root, worker_type, n)
    calls_before = dict(double.calls)
    phases: dict[str, list[float]] = {"claimWork": [], "command": [], "log+link+report": []}
    resolved: list[float] = []
    with LoopStallProbe() as probe:
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            claims = (
                await wq.claimWork(
                    f"{PROVISIONER}/{worker_type}", {"tasks": 1, "workerGroup": WORKER_GROUP, "workerId": WORKER_ID}
                )
            )["tasks"]
            if not claims:
                raise RuntimeError("baseline: claimWork returned no task although all were created up front")
            claim = claims[0]
            task_id, run_id = claim["status"]["taskId"], str(claim["runId"])
            expires = claim["task"]["expires"]
            tq = taskcluster.aio.Queue(
                {"rootUrl": double.root_url, "credentials": claim["credentials"]}, session=session
            )
            t1 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec("true")
            await proc.wait()
            t2 = time.perf_counter()
            raw = f"[taskcluster {iso(utcnow())}] Task ID: {task_id}\n".encode() * 8
            await publish_and_report(session, tq, task_id, run_id, expires, raw)
            t3 = time.perf_counter()
            phases["claimWork"].append(t1 - t0)
            phases["command"].append(t2 - t1)
            phases["log+link+report"].append(t3 - t2)
            resolved.append(t3)
    check_completed(double, ids, "baseline")
    per_task = intervals(start, resolved)
    return {
        "create_s": create_times,
        "per_task_s": per_task,
        "phases_s": phases,
        "calls": calls_since(double, calls_before),
        "max_loop_stall_s": probe.max_stall,
        "first_task_s": per_task[0],
    }


async def megalodon_tasks(
    double: TaskclusterDouble, session: aiohttp.ClientSession, n: int, worker_type: str, workdir: Path
) -> dict[str, Any]:
    """The same tasks run by a real Worker (in this process, like megalodon_core.testing's Harness)."""
    root = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session)
    ids, create_times = await create_tasks(root, worker_type, n)
    times = TaskTimes()
    cfg = worker_config(double, worker_type, workdir, numberOfTasksToRun=n)
    worker = Worker(parse_config(cfg), PluginHost(plugins=[times]))
    calls_before = dict(double.calls)
    with LoopStallProbe() as probe:
        start = time.perf_counter()
        code = await asyncio.wait_for(worker.run(), 60 + 10 * n)
    if code != 0 or len(times.resolved) != n:
        raise RuntimeError(f"worker exited {code} after resolving {len(times.resolved)} of {n} tasks")
    check_completed(double, ids, "megalodon")
    per_task = intervals(start, times.resolved)
    prev = [start, *times.resolved[:-1]]
    return {
        "create_s": create_times,
        "per_task_s": per_task,
        "phases_s": {
            "claimWork (+prev cleanup)": [c - p for c, p in zip(times.claimed, prev, strict=True)],
            "setup (dir, log, validate)": [s - c for s, c in zip(times.started, times.claimed, strict=True)],
            "command+log+link+report": [r - s for r, s in zip(times.resolved, times.started, strict=True)],
        },
        "calls": calls_since(double, calls_before),
        "max_loop_stall_s": probe.max_stall,
        "first_task_s": per_task[0],
    }


def pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the rounds of one side: raw per-task lists are concatenated, then summarised."""
    create = [x for r in rounds for x in r["create_s"]]
    per_task = [x for r in rounds for x in r["per_task_s"]]
    total = [c + p for r in rounds for c, p in zip(r["create_s"], r["per_task_s"], strict=True)]
    phases: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    for r in rounds:
        for k, v in r["phases_s"].items():
            phases.setdefault(k, []).extend(v)
        for k, c in r["calls"].items():
            calls[k] = calls.get(k, 0) + c
    n = len(per_task)
    return {
        "create": stats(create),
        "per_task": stats(per_task),
        "total": stats(total),
        "phases": {k: stats(v) for k, v in phases.items()},
        "calls_per_task": {k: c / n for k, c in sorted(calls.items())},
        "max_loop_stall_s": max(r["max_loop_stall_s"] for r in rounds),
        "first_task_s": [r["first_task_s"] for r in rounds],
        "raw_total_s": total,
    }


async def bench_overhead(settings: Settings) -> dict[str, Any]:
    """Per-task overhead of megalodon on trivial tasks, against a hand-written minimal worker loop.

    Both sides run in rounds in ABBA order (quick: AB) so that drift on a noisy machine (CPU frequency,
    page cache, other tenants) falls on both equally; each round has its own worker type.
    """
    n = settings.tasks
    order = ["baseline", "megalodon"] if settings.quick else ["baseline", "megalodon", "megalodon", "baseline"]
    rounds: dict[str, list[dict[str, Any]]] = {"baseline": [], "megalodon": []}
    async with scratch("overhead") as workdir:
        async with (
            TaskclusterDouble(claim_work_wait=0.2, storage_dir=workdir / "store") as double,
            aiohttp.ClientSession() as session,
        ):
            # One throwaway task on each side warms imports, the client and the double's code paths.
            await baseline_tasks(double, session, 1, "warmup-baseline")
            await megalodon_tasks(double, session, 1, "warmup-megalodon", workdir / "warmup")
            for i, side in enumerate(order):
                if side == "baseline":
                    rounds[side].append(await baseline_tasks(double, session, n, f"overhead-baseline-{i}"))
                else:
                    rounds[side].append(
                        await megalodon_tasks(double, session, n, f"overhead-megalodon-{i}", workdir / f"worker-{i}")
                    )
    base, mega = pool(rounds["baseline"]), pool(rounds["megalodon"])
    return {
        "tasks_per_round": n,
        "order": order,
        "baseline": base,
        "megalodon": mega,
        "ratio_median_total": ratio(mega["total"]["median"], base["total"]["median"]),
        "ratio_mean_total": ratio(mega["total"]["mean"], base["total"]["mean"]),
        "ratio_median_claim_to_resolved": ratio(mega["per_task"]["median"], base["per_task"]["median"]),
        "goal_ratio": GOAL_OVERHEAD_RATIO,
    }


# -- worker processes (scenarios 2 and 3) ------------------------------------------------------------------
@dataclass
class ProcessRun:
    """One worker process running one task, with what was observed from outside."""

    exit_code: int
    state: str
    status: dict[str, Any]
    idle_rss: int
    idle_hwm: int | None
    peak_rss: int
    peak_rss_hwm: int | None
    peak_children_rss: int
    samples: int
    log_facts: dict[str, Any] = field(default_factory=dict)
    puts: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


async def run_worker_process(
    double: TaskclusterDouble,
    workdir: Path,
    worker_type: str,
    payload: dict[str, Any],
    settings: Settings,
    puts: PutRecorder,
    **config: Any,
) -> ProcessRun:
    """Start ``megalodon run`` in its own process, let it idle, then give it one task and watch its RSS.

    The worker runs in a separate process so its RSS is its own (this process hosts the double, which
    buffers and stores the uploads).  TMPDIR points into ``workdir`` so the worker's gzip temp files are
    removed with it even if the run is interrupted.
    """
    cfg = worker_config(double, worker_type, workdir, cleanUpTaskDirs=False, **config)
    cfg_path = workdir / "worker.json"
    cfg_path.write_text(json.dumps(cfg))
    out_path = workdir / "worker.out"
    tmp = workdir / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    before = double.calls["claimWork"]
    with out_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "megalodon_core",
            "-v",
            "run",
            "--config",
            str(cfg_path),
            stdout=out,
            stderr=out,
            env=env,
        )
    sampler = RssSampler(proc.pid).start()
    try:
        # Idle: the worker has started and is long-polling an empty queue.
        deadline = time.monotonic() + 60
        while double.calls["claimWork"] <= before:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start polling:\n{out_path.read_text()[-3000:]}")
            await asyncio.sleep(0.02)
        idle_start = time.monotonic()
        await asyncio.sleep(settings.idle_seconds)
        idle_end = time.monotonic()
        idle_hwm = sampler.hwm
        root = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
        task_id = taskcluster.slugId()
        await root.createTask(task_id, make_task(payload, worker_type))
        t0 = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), 3600)
        wall = time.monotonic() - t0
    except BaseException:
        if proc.returncode is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            proc.kill()
            await proc.wait()
        raise
    finally:
        sampler.stop()
    status = double.task_state(task_id)
    backing = find_backing_log(workdir / "tasks")
    facts = log_facts(await asyncio.to_thread(log_tail, backing)) if backing else {}
    if code != 0 or status["state"] != "completed":
        tail = out_path.read_text()[-3000:]
        log_end = (await asyncio.to_thread(log_tail, backing, 3000)) if backing else ""
        raise RuntimeError(f"worker exited {code}, task {status['state']}:\n{tail}\n--- task log tail ---\n{log_end}")
    return ProcessRun(
        exit_code=code,
        state=status["state"],
        status=status,
        idle_rss=sampler.median(idle_start, idle_end),
        idle_hwm=idle_hwm,
        peak_rss=sampler.peak(idle_end),
        peak_rss_hwm=sampler.hwm,
        peak_children_rss=sampler.peak_children(idle_end),
        samples=len(sampler.samples),
        log_facts=facts,
        puts=list(puts.puts),
        wall_s=wall,
    )


def mb(n: int | None) -> float:
    return (n or 0) / 1e6


# -- scenario 2: memory while uploading a big artifact -----------------------------------------------------
async def upload_case(settings: Settings, name: str, encoding: str | None, object_storage: bool) -> dict[str, Any]:
    size = settings.upload_mib
    artifact: dict[str, Any] = {"type": "file", "path": "big.bin", "name": "public/big.bin"}
    if encoding:
        artifact["contentEncoding"] = encoding
    payload = {
        "command": [["/bin/sh", "-c", f"head -c {size}M /dev/urandom > big.bin"]],
        "maxRunTime": 3600,
        "artifacts": [artifact],
    }
    async with scratch(f"upload-{name}") as workdir:
        async with TaskclusterDouble(claim_work_wait=1.0, storage_dir=workdir / "store") as double:
            puts = PutRecorder(double)
            run = await run_worker_process(
                double, workdir, f"upload-{name}", payload, settings, puts, createObjectArtifacts=object_storage
            )
    big = max(run.puts, key=lambda p: p["bytes"]) if run.puts else None
    finished = run.log_facts.get("task_finished_at")
    result: dict[str, Any] = {
        "case": name,
        "artifact_mib": size,
        "storage": "object" if object_storage else "s3",
        "encoding": "identity" if object_storage else (encoding or "gzip"),
        "idle_rss_mb": mb(run.idle_rss),
        "peak_rss_mb": mb(run.peak_rss),
        "peak_rss_hwm_mb": mb(run.peak_rss_hwm),
        "rss_growth_mb": mb(run.peak_rss - run.idle_rss),
        "peak_task_process_rss_mb": mb(run.peak_children_rss),
        "samples": run.samples,
        "command_wall_s": run.log_facts.get("command_wall_s"),
        "task_wall_s": run.wall_s,
    }
    if big is not None and finished is not None:
        upload_s = big["end"] - finished
        result.update(
            {
                "prepare_s": big["start"] - finished,  # gzip/hash to temp + createArtifact
                "put_s": big["end"] - big["start"],
                "upload_s": upload_s,
                "body_mb": mb(big["bytes"]),
                "throughput_mib_s": size / upload_s if upload_s > 0 else float("nan"),
                "put_mib_s": big["bytes"] / MIB / (big["end"] - big["start"]) if big["end"] > big["start"] else None,
            }
        )
    return result


async def bench_upload(settings: Settings) -> dict[str, Any]:
    """Peak RSS of a worker process uploading one big random artifact, per storage path."""
    cases: list[tuple[str, str | None, bool]] = [("s3-gzip", None, False), ("s3-identity", "identity", False)]
    if settings.object_storage:
        cases.append(("object", None, True))
    results = []
    for name, encoding, obj in cases:
        print(f"  upload: {name} ({settings.upload_mib} MiB)...", flush=True)
        results.append(await upload_case(settings, name, encoding, obj))
    return {"artifact_mib": settings.upload_mib, "cases": results, "goal_peak_rss_mb": GOAL_UPLOAD_RSS_MB}


# -- scenario 3: log throughput ----------------------------------------------------------------------------
def log_command(mib: int) -> str:
    """``mib`` MiB of 100-byte lines on stdout."""
    return f"yes {'a' * 99} | head -c {mib}M"


async def shell_baseline(script: str, cwd: Path) -> float:
    """Wall time of ``sh -c script`` as a bare subprocess."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", script, cwd=cwd)
    code = await proc.wait()
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"baseline command failed with {code}: {script}")
    return elapsed


def tasklog_close_cost(path: Path, mib: int) -> dict[str, float]:
    """Time TaskLog.write of ``mib`` MiB (as the pipe delivers it) and then TaskLog.close().

    close() flushes and fsyncs the whole log on the caller's thread, which in the worker is the event loop.
    """
    chunk = (("a" * 99 + "\n") * 2621).encode()  # ~256 KiB, the size asyncio's pipe transport reads
    tlog = TaskLog(path)
    t0 = time.perf_counter()
    written = 0
    while written < mib * MIB:
        tlog.write(chunk)
        written += len(chunk)
    t1 = time.perf_counter()
    tlog.close()
    t2 = time.perf_counter()
    return {"write_s": t1 - t0, "close_s": t2 - t1, "mib": written / MIB}


async def bench_log(settings: Settings) -> dict[str, Any]:
    """Throughput of task output into the worker's log, against the same command writing to a file."""
    size = settings.log_mib
    script = log_command(size)
    async with scratch("log") as workdir:
        baseline_s = await shell_baseline(f"{script} > out.txt", workdir)
        (workdir / "out.txt").unlink()
        async with TaskclusterDouble(claim_work_wait=1.0, storage_dir=workdir / "store") as double:
            puts = PutRecorder(double)
            run = await run_worker_process(
                double, workdir, "log", {"command": [["/bin/sh", "-c", script]], "maxRunTime": 3600}, settings, puts
            )
        await asyncio.to_thread(shutil.rmtree, workdir / "tasks", True)
        close_cost = await asyncio.to_thread(tasklog_close_cost, workdir / "closecost.log", size)
    worker_s = run.log_facts.get("command_wall_s")
    finished = run.log_facts.get("task_finished_at")
    log_put = run.puts[-1] if run.puts else None
    result: dict[str, Any] = {
        "log_mib": size,
        "command": script,
        "baseline_s": baseline_s,
        "baseline_mib_s": size / baseline_s,
        "worker_command_s": worker_s,
        "worker_mib_s": size / worker_s if worker_s else None,
        "ratio_worker_to_baseline_mib_s": ratio(size / worker_s, size / baseline_s) if worker_s else None,
        "idle_rss_mb": mb(run.idle_rss),
        "peak_rss_mb": mb(run.peak_rss),
        "peak_rss_hwm_mb": mb(run.peak_rss_hwm),
        "task_wall_s": run.wall_s,
        "tasklog_close": close_cost,
        "goal_mb_s": GOAL_LOG_MB_S,
    }
    if log_put is not None and finished is not None:
        result["log_upload_s"] = log_put["end"] - finished
        result["log_body_mb"] = mb(log_put["bytes"])
    return result


# -- docker (scenario 4) -----------------------------------------------------------------------------------
DOCKER_BENCH_IMAGE = "megalodon-test/busybox:latest"
DOCKER_TRIVIAL_PAYLOAD: dict[str, Any] = {"image": DOCKER_BENCH_IMAGE, "command": ["true"], "maxRunTime": 30}
#: The docker executor's per-task target, against a bare ``docker run --rm`` of the same container.
GOAL_DOCKER_RATIO = 1.5


async def bare_docker_runs(n: int) -> list[float]:
    """Wall time of ``docker run --rm <image> true``: what any docker-based worker must pay per task."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "docker", "run", "--rm", DOCKER_BENCH_IMAGE, "true",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"docker run failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        times.append(time.perf_counter() - t0)
    return times


async def executor_tasks(
    double: TaskclusterDouble,
    session: aiohttp.ClientSession,
    n: int,
    worker_type: str,
    workdir: Path,
    payload: dict[str, Any],
    executor: str,
) -> dict[str, Any]:
    """``n`` copies of ``payload`` run back to back by an in-process worker with the installed plugins."""
    root = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session)
    ids, create_times = [], []
    for _ in range(n):
        task_id = taskcluster.slugId()
        t0 = time.perf_counter()
        await root.createTask(task_id, make_task(payload, worker_type))
        create_times.append(time.perf_counter() - t0)
        ids.append(task_id)
    times = TaskTimes()
    host = PluginHost(plugins=[times])
    # requiredDiskSpaceMegabytes 0: image GC under disk pressure would untag the benchmark image.
    cfg = worker_config(
        double, worker_type, workdir, executor=executor, numberOfTasksToRun=n, requiredDiskSpaceMegabytes=0
    )
    worker = Worker(parse_config(cfg, host.config_fields()), host)
    with LoopStallProbe() as probe:
        start = time.perf_counter()
        code = await asyncio.wait_for(worker.run(), 60 + 10 * n)
    if code != 0 or len(times.resolved) != n:
        raise RuntimeError(f"worker exited {code} after resolving {len(times.resolved)} of {n} tasks")
    check_completed(double, ids, f"{executor} executor")
    per_task = intervals(start, times.resolved)
    return {
        "create_s": create_times,
        "per_task_s": per_task,
        "started_to_resolved_s": [r - s for r, s in zip(times.resolved, times.started, strict=True)],
        "max_loop_stall_s": probe.max_stall,
    }


async def bench_docker(settings: Settings) -> dict[str, Any]:
    """A trivial docker task through megalodon against a bare ``docker run --rm`` and the native executor.

    Rounds alternate the three sides (bare docker, megalodon docker, megalodon native) so machine drift
    falls on all of them; one warm-up of each side first (image cache, imports, the engine's first run).
    """
    n = max(3, settings.tasks // 2) if not settings.quick else 3
    rounds = 1 if settings.quick else 2
    samples: dict[str, list[float]] = {"bare": [], "docker": [], "native": []}
    docker_started: list[float] = []
    stalls: list[float] = []
    async with scratch("docker") as workdir:
        async with (
            TaskclusterDouble(claim_work_wait=0.2, storage_dir=workdir / "store") as double,
            aiohttp.ClientSession() as session,
        ):
            native_payload = TRIVIAL_PAYLOAD
            await bare_docker_runs(1)
            await executor_tasks(double, session, 1, "warm-docker", workdir / "w1", DOCKER_TRIVIAL_PAYLOAD, "docker")
            await executor_tasks(double, session, 1, "warm-native", workdir / "w2", native_payload, "native")
            for i in range(rounds):
                samples["bare"].extend(await bare_docker_runs(n))
                d = await executor_tasks(
                    double, session, n, f"docker-{i}", workdir / f"d{i}", DOCKER_TRIVIAL_PAYLOAD, "docker"
                )
                samples["docker"].extend(c + p for c, p in zip(d["create_s"], d["per_task_s"], strict=True))
                docker_started.extend(d["started_to_resolved_s"])
                stalls.append(d["max_loop_stall_s"])
                nat = await executor_tasks(
                    double, session, n, f"native-{i}", workdir / f"n{i}", native_payload, "native"
                )
                samples["native"].extend(c + p for c, p in zip(nat["create_s"], nat["per_task_s"], strict=True))
    bare, dock, nat_s = stats(samples["bare"]), stats(samples["docker"]), stats(samples["native"])
    return {
        "tasks_per_round": n,
        "rounds": rounds,
        "bare_docker_run": bare,
        "megalodon_docker": dock,
        "megalodon_native": nat_s,
        "docker_started_to_resolved": stats(docker_started),
        "max_loop_stall_s": max(stalls),
        "ratio_docker_to_bare_median": ratio(dock["median"], bare["median"]),
        "ratio_docker_to_bare_mean": ratio(dock["mean"], bare["mean"]),
        "docker_minus_native_median_s": dock["median"] - nat_s["median"],
        "ratio_docker_to_native_median": ratio(dock["median"], nat_s["median"]),
        "goal_ratio": GOAL_DOCKER_RATIO,
    }


# -- output ------------------------------------------------------------------------------------------------
def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:8.1f} ms"


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    return format(x, spec)


def print_overhead(r: dict[str, Any]) -> None:
    base, mega = r["baseline"], r["megalodon"]
    rounds = len(r["order"])
    print(
        f"\n== 1. per-task overhead: trivial tasks (`true`), capacity 1, back to back; {rounds} rounds of "
        f"{r['tasks_per_round']} ({'/'.join(s[0].upper() for s in r['order'])}) =="
    )
    print(f"{'':34}{'baseline':>14}{'megalodon':>14}{'ratio':>9}")
    rows = [
        ("createTask (root, same client)", "create", "mean"),
        ("claim->resolved, median", "per_task", "median"),
        ("claim->resolved, mean", "per_task", "mean"),
        ("total per task, median", "total", "median"),
        ("total per task, mean", "total", "mean"),
        ("total per task, max", "total", "max"),
    ]
    for label, key, stat in rows:
        b, m = base[key][stat], mega[key][stat]
        print(f"{label:34}{ms(b):>14}{ms(m):>14}{ratio(m, b):>8.2f}x")
    print(f"{'max event-loop stall':34}{ms(base['max_loop_stall_s']):>14}{ms(mega['max_loop_stall_s']):>14}")
    firsts = ", ".join(f"{x * 1000:.1f}" for x in mega["first_task_s"])
    print(f"  megalodon first task of each round (incl. worker start), ms: {firsts}")
    for name, side in (("baseline", base), ("megalodon", mega)):
        phases = ", ".join(f"{k} {v['median'] * 1000:.1f}" for k, v in side["phases"].items())
        print(f"  {name} phases (median ms): {phases}")
        calls = ", ".join(f"{k} {v:g}" for k, v in side["calls_per_task"].items())
        print(f"  {name} calls per task: {calls}")
    print(
        f"  => megalodon/baseline, total per task (createTask + claim..resolved): median "
        f"{r['ratio_median_total']:.2f}x, mean {r['ratio_mean_total']:.2f}x (goal <= {r['goal_ratio']}x)"
    )


def print_upload(r: dict[str, Any]) -> None:
    print(
        f"\n== 2. worker RSS while uploading a {r['artifact_mib']} MiB random artifact (worker in its own process) =="
    )
    header = (
        f"{'case':12}{'idle RSS':>10}{'peak RSS':>10}{'VmHWM':>9}{'growth':>9}{'prepare':>9}{'PUT':>8}"
        f"{'upload':>8}{'MiB/s':>8}{'body MB':>9}"
    )
    print(header)
    for c in r["cases"]:
        print(
            f"{c['case']:12}{fmt(c['idle_rss_mb']):>7} MB{fmt(c['peak_rss_mb']):>7} MB{fmt(c['peak_rss_hwm_mb']):>6} MB"
            f"{fmt(c['rss_growth_mb']):>6} MB{fmt(c.get('prepare_s'), '.2f'):>8}s{fmt(c.get('put_s'), '.2f'):>7}s"
            f"{fmt(c.get('upload_s'), '.2f'):>7}s{fmt(c.get('throughput_mib_s')):>8}{fmt(c.get('body_mb')):>9}"
        )
    print(
        "  prepare = task finished -> PUT starts (gzip or hash to temp, createArtifact); upload = task finished ->"
        " artifact PUT done; MiB/s = artifact MiB / upload"
    )
    print(f"  goal: peak worker RSS < {r['goal_peak_rss_mb']} MB; the task's own process is not counted")


def print_log(r: dict[str, Any]) -> None:
    print(f"\n== 3. log throughput: {r['log_mib']} MiB of 100-byte lines on stdout ==")
    print(f"  command: {r['command']}")
    print(f"  baseline (sh > file):      {r['baseline_s']:7.2f} s  {r['baseline_mib_s']:8.1f} MiB/s")
    if r.get("worker_command_s"):
        print(f"  megalodon (as task):       {r['worker_command_s']:7.2f} s  {r['worker_mib_s']:8.1f} MiB/s")
        print(
            f"  => worker/baseline throughput: {r['ratio_worker_to_baseline_mib_s']:.2f}x "
            f"(goal >= {r['goal_mb_s']} MB/s)"
        )
    print(
        f"  worker RSS: idle {r['idle_rss_mb']:.1f} MB, peak {r['peak_rss_mb']:.1f} MB "
        f"(VmHWM {r['peak_rss_hwm_mb']:.1f} MB)"
    )
    if "log_upload_s" in r:
        print(f"  backing log upload after the task: {r['log_upload_s']:.2f} s ({r['log_body_mb']:.1f} MB gzipped)")
    c = r["tasklog_close"]
    print(
        f"  TaskLog in isolation: write {c['mib']:.0f} MiB {c['write_s']:.2f} s, close() (flush + fsync, on the "
        f"event loop in the worker) {c['close_s'] * 1000:.0f} ms"
    )


def print_docker(r: dict[str, Any]) -> None:
    print(
        f"\n== 4. docker executor: trivial task (`true` on {DOCKER_BENCH_IMAGE}), back to back; "
        f"{r['rounds']} round(s) of {r['tasks_per_round']} =="
    )
    print(f"{'':44}{'median':>12}{'mean':>12}{'max':>12}")
    for label, key in (
        ("bare `docker run --rm` (subprocess)", "bare_docker_run"),
        ("megalodon docker task (create..resolved)", "megalodon_docker"),
        ("  of which task started..resolved", "docker_started_to_resolved"),
        ("megalodon native task (create..resolved)", "megalodon_native"),
    ):
        st = r[key]
        print(f"{label:44}{ms(st['median']):>12}{ms(st['mean']):>12}{ms(st['max']):>12}")
    print(f"  max event-loop stall during docker tasks: {ms(r['max_loop_stall_s']).strip()}")
    print(
        f"  => megalodon docker / bare docker run: median {r['ratio_docker_to_bare_median']:.2f}x, mean "
        f"{r['ratio_docker_to_bare_mean']:.2f}x (goal <= {r['goal_ratio']}x); docker - native executor: "
        f"{r['docker_minus_native_median_s'] * 1000:.0f} ms median ({r['ratio_docker_to_native_median']:.1f}x)"
    )


SCENARIOS: dict[str, tuple[Callable[[Settings], Any], Callable[[dict[str, Any]], None]]] = {
    "overhead": (bench_overhead, print_overhead),
    "upload": (bench_upload, print_upload),
    "log": (bench_log, print_log),
    "docker": (bench_docker, print_docker),
    **PER_TASK_SCENARIOS,
}


async def main_async(settings: Settings, only: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "settings": settings.__dict__,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_mb": psutil.virtual_memory().total / 1e6,
        },
        "results": {},
        "errors": {},
    }
    for name in only:
        bench, show = SCENARIOS[name]
        print(f"-- running {name}...", flush=True)
        t0 = time.perf_counter()
        try:
            result = await bench(settings)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            continue
        result["elapsed_s"] = time.perf_counter() - t0
        results["results"][name] = result
        show(result)
        sys.stdout.flush()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write machine-readable results here")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--quick", action="store_true", help="small sizes (same as MEGALODON_BENCH_QUICK=1)")
    parser.add_argument("--tasks", type=int, default=0, help="tasks for the overhead scenario")
    parser.add_argument("--upload-mib", type=int, default=0, help="artifact size for the upload scenario")
    parser.add_argument("--log-mib", type=int, default=0, help="log size for the log scenario")
    parser.add_argument("--no-object", action="store_true", help="skip the object-storage upload case")
    parser.add_argument(
        "--rounds", type=int, default=0, help="alternating rounds of pertask and pertask-real (default 3, quick 1)"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_args(args)
    only = args.only or list(SCENARIOS)
    mode = "quick" if settings.quick else "full"
    print(
        f"megalodon benchmarks ({mode}): tasks={settings.tasks} upload={settings.upload_mib} MiB "
        f"log={settings.log_mib} MiB; {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    t0 = time.perf_counter()
    results = asyncio.run(main_async(settings, only))
    results["elapsed_s"] = time.perf_counter() - t0
    print(f"\ndone in {results['elapsed_s']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
