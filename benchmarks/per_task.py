"""Per-task cost of a worker *process* against the floor process, the CLI's start-up, and log-to-resolution latency.

Scenarios (issue 13's goals; figures printed with min/median/max over alternating rounds, never asserted):

- ``pertask``: N trivial tasks (``true``) created up front, then one process runs them: the floor
  (``benchmarks/floor.py``: claimWork -> subprocess -> backing log + live-log link -> reportCompleted, same
  client), megalodon core-only (``MEGALODON_BLOCK_PLUGINS=megalodon-features``) and megalodon with every
  plugin installed.  The double counts each ``reportCompleted`` as it arrives; the first one starts the
  steady-state window (so process start-up and the first claim are left out) and the N-th one ends it.
  Per run: wall time per task and tasks/s over that window, and the process's CPU per task (user + system
  of the process and its reaped children, read at both ends of the window).  Capacity 1 and capacity 4.
- ``cli``: ``megalodon --version`` and ``--help`` against ``python -c "import typer, rich"``: wall and CPU.
- ``loglatency``: a task printing ``--log-mib`` MiB then writing ``date +%s.%N`` to a marker as its last act;
  the time from that instant to the double receiving ``reportCompleted``, against the same task with a
  one-line log, same worker settings, alternating.

Rounds alternate the order (floor, core, all, then all, core, floor...) so drift on a noisy 2-core machine
falls on every side.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
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
from common import config_for, make_task, ratio, scratch, stats, worker_config

from megalodon_core.double import TaskclusterDouble
from megalodon_core.double.faults import CallCounter

HERE = Path(__file__).resolve().parent
GOAL_WALL_ALL = 1.1
GOAL_WALL_CORE = 1.05
GOAL_CPU = 1.3
GOAL_THROUGHPUT_C4 = 0.9
GOAL_THROUGHPUT_REAL = 0.95
GOAL_LOG_ADDED_S = 0.3
GOAL_VERSION = 1.3
GOAL_HELP = 2.0
SIDES = ("floor", "core", "all")


# -- watching resolutions as the double receives them ------------------------------------------------------
@dataclass
class ProcessWatch:
    """Arrival times of ``reportCompleted`` calls, and the watched process's CPU at the first and last."""

    pid: int
    n: int
    times: list[float] = field(default_factory=list)
    cpu_first: float = 0.0
    cpu_last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def cpu(self) -> float:
        """CPU of the process tree: the process, its live descendants (megalodon's spawner process) and the
        children each of them reaped (the task commands)."""
        return tree_cpu(self.pid)

    def resolved(self) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) == 1:
            self.cpu_first = self.cpu()
        if len(self.times) == self.n:
            self.cpu_last = self.cpu()
            self.done.set()


def tree_cpu(pid: int) -> float:
    """User + system seconds of ``pid``, its live descendants, and every child any of them reaped."""
    root = psutil.Process(pid)
    total = 0.0
    try:
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for proc in [root, *descendants]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class ResolutionClock(CallCounter):
    """The double's call counter, telling the current watch about each ``reportCompleted`` as it arrives."""

    watch: ProcessWatch | None = None

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        if key == "reportCompleted" and self.watch is not None:
            self.watch.resolved()


def install_clock(double: TaskclusterDouble) -> ResolutionClock:
    """Swap the class of the double's counter in place: the API handlers hold a reference to that object."""
    double.calls.__class__ = ResolutionClock
    clock = double.calls
    assert isinstance(clock, ResolutionClock)
    return clock


# -- one process, N tasks ----------------------------------------------------------------------------------
def side_command(side: str, cfg_path: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MEGALODON_BLOCK_PLUGINS", None)
    if side == "floor":
        return [sys.executable, str(HERE / "floor.py"), str(cfg_path)], env
    if side == "core":
        env["MEGALODON_BLOCK_PLUGINS"] = "megalodon-features"
    return [sys.executable, "-m", "megalodon_core", "run", "--config", str(cfg_path)], env


async def create_tasks(double: TaskclusterDouble, worker_type: str, payload: dict[str, Any], n: int) -> list[str]:
    root = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": double.root_credentials})
    ids = []
    for _ in range(n):
        task_id = taskcluster.slugId()
        await root.createTask(task_id, make_task(payload, worker_type))
        ids.append(task_id)
    return ids


async def run_side(
    double: TaskclusterDouble,
    clock: ResolutionClock,
    workdir: Path,
    side: str,
    worker_type: str,
    n: int,
    capacity: int,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """Run ``n`` tasks of ``payload`` by one process of ``side``; figures over the steady-state window."""
    os.makedirs(workdir, exist_ok=True)  # harness set-up, outside every measured window
    ids = await create_tasks(double, worker_type, payload, n)
    cfg = worker_config(double, worker_type, workdir, numberOfTasksToRun=n, capacity=capacity)
    cfg_path = workdir / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    argv, env = side_command(side, cfg_path)
    out = (workdir / "out.txt").open("wb")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, env=env)
    watch = ProcessWatch(proc.pid, n)
    clock.watch = watch
    try:
        # Whichever comes first: the N-th resolution, or the process ending (a crash must not wait the bound out).
        waiter = asyncio.ensure_future(watch.done.wait())
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({waiter, exited}, timeout=120 + 2 * n, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        code = await asyncio.wait_for(exited, 60)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    finally:
        clock.watch = None
        out.close()
    bad = {t: s for t in ids if (s := double.task_state(t)["state"]) != "completed"}
    if code != 0 or bad:
        tail = (workdir / "out.txt").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{side}: exit {code}, tasks not completed: {bad}\n{tail}")
    window = watch.times[-1] - watch.times[0]
    steps = n - 1
    return {
        "wall_per_task_s": window / steps,
        "intervals_s": [b - a for a, b in zip(watch.times, watch.times[1:], strict=False)],
        "cpu_per_task_s": (watch.cpu_last - watch.cpu_first) / steps,
        "tasks_per_s": steps / window if window > 0 else float("nan"),
    }


def round_orders(rounds: int) -> list[tuple[str, ...]]:
    """ABC, CBA, ABC...: each side is as often early as late."""
    return [SIDES if i % 2 == 0 else tuple(reversed(SIDES)) for i in range(rounds)]


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, rs in runs.items():
        out[side] = {
            "wall_per_task": stats([r["wall_per_task_s"] for r in rs]),
            "cpu_per_task": stats([r["cpu_per_task_s"] for r in rs]),
            "tasks_per_s": stats([r["tasks_per_s"] for r in rs]),
            "interval": stats([x for r in rs for x in r["intervals_s"]]),
        }
    floor = out["floor"]
    for side in ("core", "all"):
        s = out[side]
        s["ratio_wall"] = ratio(s["wall_per_task"]["median"], floor["wall_per_task"]["median"])
        s["ratio_cpu"] = ratio(s["cpu_per_task"]["median"], floor["cpu_per_task"]["median"])
        s["ratio_throughput"] = ratio(s["tasks_per_s"]["median"], floor["tasks_per_s"]["median"])
        s["ratio_wall_per_round"] = [
            ratio(a["wall_per_task_s"], b["wall_per_task_s"]) for a, b in zip(runs[side], runs["floor"], strict=True)
        ]
    return out


def migration_probe(rounds: int = 10) -> dict[str, Any] | None:
    """What joining a cgroup by a write to ``cgroup.procs`` costs on this host (the native executor's commands
    pay it once each on cgroup v1; on v2 they start in their cgroup).  The write sleeps for an RCU grace
    period unless a hierarchy is mounted with ``favordynmods``, so the figures of the other scenarios depend on
    it; 30 ms apart, as commands of back-to-back tasks are.  None without root and cgroups."""
    from megalodon_core import cgroup as cgroups

    host = cgroups.host()
    if host is None:
        return None
    group = host.create(f"task-{os.urandom(16).hex()}")
    times: list[float] = []
    try:
        procs = group.dirs[0] / "cgroup.procs"
        for _ in range(rounds):
            sleeper = subprocess.Popen(["sleep", "30"])
            try:
                time.sleep(0.03)
                began = time.perf_counter()
                procs.write_text(str(sleeper.pid))
                times.append(time.perf_counter() - began)
            finally:
                sleeper.kill()
                sleeper.wait()
    finally:
        group.remove()
    return {"cgroup_version": host.version, "migration_s": stats(times)}


async def bench_pertask(settings: Any) -> dict[str, Any]:
    rounds = settings.rounds or (1 if settings.quick else 3)
    result: dict[str, Any] = {"rounds": rounds, "migration": await asyncio.to_thread(migration_probe)}
    payload = {"command": [["true"]], "maxRunTime": 30}
    async with scratch("pertask") as workdir:
        async with TaskclusterDouble(claim_work_wait=0.2, storage_dir=workdir / "store") as double:
            clock = install_clock(double)
            # Warm the page cache and the double's code paths once per side, unmeasured.
            for side in SIDES:
                await run_side(double, clock, workdir / f"warm-{side}", side, f"warm-{side}", 3, 1, payload)
            for capacity in (1, 4):
                # CPU time is read in clock ticks (10 ms): enough tasks per window keep that error to a few percent.
                n = settings.tasks * (5 if capacity == 1 else 10)
                runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
                for r, order in enumerate(round_orders(rounds)):
                    for side in order:
                        wt = f"c{capacity}-{side}-{r}"
                        wd = workdir / wt
                        runs[side].append(await run_side(double, clock, wd, side, wt, n, capacity, payload))
                result[f"capacity{capacity}"] = {"tasks_per_run": n, **summarise(runs)}
    return result


# -- the same against the real queue -------------------------------------------------------------------------
def real_queue_settings() -> tuple[str, dict[str, str]] | None:
    """``MEGALODON_BENCH_ROOT_URL`` (+ ``TASKCLUSTER_CLIENT_ID`` / ``TASKCLUSTER_ACCESS_TOKEN``), or None."""
    root_url = os.environ.get("MEGALODON_BENCH_ROOT_URL", "").strip()
    if not root_url:
        return None
    creds = {
        k: os.environ.get(f"TASKCLUSTER_{e}", "")
        for k, e in (("clientId", "CLIENT_ID"), ("accessToken", "ACCESS_TOKEN"))
    }
    if not all(creds.values()):
        raise RuntimeError("MEGALODON_BENCH_ROOT_URL needs TASKCLUSTER_CLIENT_ID and TASKCLUSTER_ACCESS_TOKEN")
    return root_url, creds


def _resolved_at(status: dict[str, Any]) -> float | None:
    runs = status["status"]["runs"]
    stamp = runs[-1].get("resolved") if runs else None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


async def run_side_real(
    root_url: str, creds: dict[str, str], workdir: Path, side: str, worker_type: str, n: int, capacity: int
) -> dict[str, Any]:
    """``run_side`` against a real queue: resolution instants are the queue's own (``status.runs[].resolved``)
    of every task, read after the run; CPU is sampled when the first and the n-th task resolve (the
    bench process polls those two statuses every 20 ms, the same load on every side; one more task keeps the
    process running past the n-th)."""
    os.makedirs(workdir, exist_ok=True)
    payload = {"command": [["true"]], "maxRunTime": 30}
    async with aiohttp.ClientSession() as session:
        queue = taskcluster.aio.Queue({"rootUrl": root_url, "credentials": dict(creds)}, session=session)
        ids = []
        # One task more than measured: the process is still running when the n-th resolution is seen (the
        # status poll lags by up to 20 ms), so its CPU can be read then.
        for _ in range(n + 1):
            task_id = taskcluster.slugId()
            await queue.createTask(task_id, make_task(payload, worker_type))
            ids.append(task_id)
        cfg = config_for(root_url, creds, worker_type, workdir, numberOfTasksToRun=n + 1, capacity=capacity)
        cfg_path = workdir / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        argv, env = side_command(side, cfg_path)
        with (workdir / "out.txt").open("wb") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, env=env)
        watch = ProcessWatch(proc.pid, 2)
        try:
            for task_id in (ids[0], ids[n - 1]):
                while proc.returncode is None:  # polling the queue: there is no event to wait on
                    if _resolved_at(await queue.status(task_id)) is not None:
                        break
                    await asyncio.sleep(0.02)
                if proc.returncode is None:
                    watch.resolved()
            code = await asyncio.wait_for(proc.wait(), 120 + 2 * n)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        found = [_resolved_at(await queue.status(task_id)) for task_id in ids[:n]]
        stamps = sorted(t for t in found if t is not None)
    if code != 0 or len(stamps) != n or len(watch.times) != 2:
        tail = (workdir / "out.txt").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{side} (real queue): exit {code}, {len(stamps)}/{n} tasks resolved\n{tail}")
    window = stamps[-1] - stamps[0]
    steps = n - 1
    return {
        "wall_per_task_s": window / steps,
        "intervals_s": [b - a for a, b in itertools.pairwise(stamps)],
        "cpu_per_task_s": (watch.cpu_last - watch.cpu_first) / steps,
        "tasks_per_s": steps / window if window > 0 else float("nan"),
    }


async def bench_pertask_real(settings: Any) -> dict[str, Any]:
    """``pertask`` at capacity 1 against the real Taskcluster queue named by ``MEGALODON_BENCH_ROOT_URL``."""
    found = real_queue_settings()
    if found is None:
        raise RuntimeError("pertask-real needs MEGALODON_BENCH_ROOT_URL (and TASKCLUSTER_CLIENT_ID/ACCESS_TOKEN)")
    root_url, creds = found
    rounds = settings.rounds or (1 if settings.quick else 3)
    n = settings.tasks * 5
    tag = taskcluster.slugId()[:8].replace("_", "x").replace("-", "y").lower()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    async with scratch("pertask-real") as workdir:
        for side in SIDES:  # warm-up, unmeasured
            await run_side_real(root_url, creds, workdir / f"warm-{side}", side, f"h9-{tag}-w{side}", 3, 1)
        for r, order in enumerate(round_orders(rounds)):
            for side in order:
                wt = f"h9-{tag}-{side}{r}"
                runs[side].append(await run_side_real(root_url, creds, workdir / wt, side, wt, n, 1))
    return {"rounds": rounds, "root_url": root_url, "capacity1": {"tasks_per_run": n, **summarise(runs)}}


def print_pertask_real(r: dict[str, Any]) -> None:
    print(f"\n== per task on the real queue {r['root_url']} (capacity 1, {r['rounds']} alternating rounds) ==")
    c = r["capacity1"]
    print(f"  {c['tasks_per_run']} tasks per run")
    for side in SIDES:
        s = c[side]
        print(
            f"    {side:5}  wall/task {_mmm(s['wall_per_task'])}   cpu/task {_mmm(s['cpu_per_task'])}   "
            f"tasks/s {s['tasks_per_s']['median']:6.1f}"
        )
    for side in ("core", "all"):
        s = c[side]
        print(
            f"    {side} / floor: throughput {s['ratio_throughput']:.2f}x (goal >= {GOAL_THROUGHPUT_REAL}x), "
            f"cpu {s['ratio_cpu']:.2f}x (goal <= {GOAL_CPU}x), wall {s['ratio_wall']:.2f}x"
        )


# -- the CLI's start-up ------------------------------------------------------------------------------------
def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system of the child) of one command, which must succeed.

    Reaped with a blocking ``wait4``, not ``subprocess.run(timeout=...)``: that polls with sleeps growing to
    50 ms, which rounded a ~100 ms command's wall time up by as much (a 66 or 114 ms ``import typer, rich``).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    return wall, usage.ru_utime + usage.ru_stime


async def bench_cli(settings: Any) -> dict[str, Any]:
    megalodon = str(Path(sys.executable).parent / "megalodon")
    commands: dict[str, list[str]] = {
        "import typer, rich": [sys.executable, "-c", "import typer, rich"],
        "megalodon --version": [megalodon, "--version"],
        "megalodon --help": [megalodon, "--help"],
    }
    rounds = 5 if settings.quick else 15
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    names = list(commands)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            wall, cpu = await asyncio.to_thread(_timed, commands[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    out: dict[str, Any] = {"rounds": rounds}
    base_wall = statistics.median(walls["import typer, rich"])
    base_cpu = statistics.median(cpus["import typer, rich"])
    for name in names:
        out[name] = {
            "wall": stats(walls[name]),
            "cpu": stats(cpus[name]),
            "ratio_wall": ratio(statistics.median(walls[name]), base_wall),
            "ratio_cpu": ratio(statistics.median(cpus[name]), base_cpu),
        }
    return out


# -- log to resolution -------------------------------------------------------------------------------------
async def latency_once(
    double: TaskclusterDouble, clock: ResolutionClock, workdir: Path, worker_type: str, mib: int
) -> float:
    """Seconds from the command's last act (after ``mib`` MiB of output) to the double receiving reportCompleted."""
    marker = workdir / "exited-at"
    produce = f"yes {'a' * 99} | head -c {mib}M; " if mib else "echo one line; "
    script = f"{produce}date +%s.%N > {marker}"
    payload = {"command": [["/bin/sh", "-c", script]], "maxRunTime": 600}
    resolved_at: list[float] = []

    class Stamp(ProcessWatch):
        def resolved(self) -> None:
            resolved_at.append(time.time())
            super().resolved()

    await create_tasks(double, worker_type, payload, 1)
    cfg = worker_config(double, worker_type, workdir, numberOfTasksToRun=1)
    cfg_path = workdir / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    argv, env = side_command("all", cfg_path)
    with (workdir / "out.txt").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, env=env)
    clock.watch = Stamp(proc.pid, 1)
    try:
        code = await asyncio.wait_for(proc.wait(), 600)
    finally:
        clock.watch = None
    if code != 0 or not resolved_at:
        raise RuntimeError(f"loglatency: worker exit {code}\n{(workdir / 'out.txt').read_text()[-3000:]}")
    return resolved_at[0] - float(marker.read_text())


async def bench_loglatency(settings: Any) -> dict[str, Any]:
    rounds = 2 if settings.quick else 4
    mib = settings.log_mib
    samples: dict[str, list[float]] = {"one line": [], f"{mib} MiB": []}
    cases: list[tuple[str, int]] = [("one line", 0), (f"{mib} MiB", mib)]
    async with scratch("loglatency") as workdir:
        async with TaskclusterDouble(claim_work_wait=0.2, storage_dir=workdir / "store") as double:
            clock = install_clock(double)
            for r in range(rounds):
                for name, size in cases if r % 2 == 0 else list(reversed(cases)):
                    wd = workdir / f"r{r}-{size}"
                    wd.mkdir()
                    samples[name].append(await latency_once(double, clock, wd, f"lat-{r}-{size}", size))
                    await asyncio.to_thread(_remove_tasks, wd)
    small, big = (statistics.median(v) for v in samples.values())
    return {
        "log_mib": mib,
        "rounds": rounds,
        "latency": {k: stats(v) for k, v in samples.items()},
        "added_by_log_s": big - small,
        "goal_added_s": GOAL_LOG_ADDED_S,
    }


def _remove_tasks(wd: Path) -> None:
    import shutil

    shutil.rmtree(wd / "tasks", ignore_errors=True)


# -- printing ----------------------------------------------------------------------------------------------
def _mmm(s: dict[str, float], scale: float = 1e3, unit: str = "ms") -> str:
    return f"{s['min'] * scale:7.2f} / {s['median'] * scale:7.2f} / {s['max'] * scale:7.2f} {unit}"


def print_pertask(r: dict[str, Any]) -> None:
    print(f"\n== per task (separate processes, {r['rounds']} alternating rounds; min / median / max) ==")
    probe = r.get("migration")
    if probe is not None:
        m = probe["migration_s"]
        print(
            f"  host: cgroup v{probe['cgroup_version']}; a cgroup.procs write (a command joining its cgroup on v1) "
            f"takes {m['median'] * 1000:.2f} ms (median of {m['n']}, max {m['max'] * 1000:.2f})"
        )
    for cap in ("capacity1", "capacity4"):
        c = r[cap]
        print(f"  {cap}: {c['tasks_per_run']} tasks per run")
        for side in SIDES:
            s = c[side]
            print(
                f"    {side:5}  wall/task {_mmm(s['wall_per_task'])}   cpu/task {_mmm(s['cpu_per_task'])}   "
                f"tasks/s {s['tasks_per_s']['median']:6.1f}"
            )
        for side, goal_wall in (("core", GOAL_WALL_CORE), ("all", GOAL_WALL_ALL)):
            s = c[side]
            line = f"    {side} / floor: wall {s['ratio_wall']:.2f}x"
            if cap == "capacity1":
                line += f" (goal <= {goal_wall}x)"
            line += f", cpu {s['ratio_cpu']:.2f}x (goal <= {GOAL_CPU}x), throughput {s['ratio_throughput']:.2f}x"
            if cap == "capacity4":
                line += f" (goal >= {GOAL_THROUGHPUT_C4}x)"
            print(line)


def print_cli(r: dict[str, Any]) -> None:
    print(f"\n== CLI start-up ({r['rounds']} alternating rounds; min / median / max) ==")
    for name in ("import typer, rich", "megalodon --version", "megalodon --help"):
        s = r[name]
        print(f"  {name:22} wall {_mmm(s['wall'])}   cpu {_mmm(s['cpu'])}   {s['ratio_wall']:.2f}x wall")
    print(f"  goals: --version <= {GOAL_VERSION}x, --help <= {GOAL_HELP}x the import")


def print_loglatency(r: dict[str, Any]) -> None:
    print(f"\n== command exit -> reportCompleted ({r['rounds']} alternating rounds; min / median / max) ==")
    for name, s in r["latency"].items():
        print(f"  {name:12} {_mmm(s)}")
    print(f"  added by a {r['log_mib']} MiB log: {r['added_by_log_s']:.3f} s (goal <= {GOAL_LOG_ADDED_S} s)")


SCENARIOS: dict[str, tuple[Callable[[Any], Any], Callable[[dict[str, Any]], None]]] = {
    "pertask": (bench_pertask, print_pertask),
    "cli": (bench_cli, print_cli),
    "loglatency": (bench_loglatency, print_loglatency),
    "pertask-real": (bench_pertask_real, print_pertask_real),
}
