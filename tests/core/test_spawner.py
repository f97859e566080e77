"""The spawner process (issue 13): commands forked by a small process behave exactly as commands forked here.

Each behaviour is checked both ways — ``run_command`` with the worker's :class:`Spawner` and without — so a
difference between the two paths fails a test: exit codes and signals, the environment and directory, a
program that does not exist, cgroup membership, abort, cancellation, and the spawner process dying under a
running command.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from megalodon_core import cgroup as cgroups
from megalodon_core import process as process_module
from megalodon_core import spawner as spawner_module
from megalodon_core import spawner_process
from megalodon_core.process import CommandResult, run_command
from megalodon_core.spawner import Spawner

from ..helpers.procs import alive, wait_for, wait_gone

HOST = cgroups.detect()
ENV = {"PATH": "/usr/bin:/bin", "ONLY": "this"}


@pytest.fixture
async def spawner() -> AsyncIterator[Spawner]:
    spawner = Spawner()
    yield spawner
    await spawner.close()


@pytest.fixture(autouse=True)
def started_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[str]]:
    """This test's own count of the commands run_command started in this process, by path."""
    counter: collections.Counter[str] = collections.Counter()
    monkeypatch.setattr(process_module, "STARTED_HERE", counter)
    monkeypatch.setattr(cgroups, "_MIGRATE", [0, False])
    yield counter


@contextlib.contextmanager
def no_passage() -> Iterator[None]:
    """Commands forked here the classic way (a child that joins, then execs), as the reference to match."""
    saved = cgroups._MIGRATE[:]
    cgroups._MIGRATE[1] = True
    try:
        yield
    finally:
        cgroups._MIGRATE[:] = saved


def _freezer_of(pid: int | str) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line.split(":", 2)[2] for line in lines if ":freezer:" in line)


async def _run(
    argv: list[str],
    cwd: Path,
    spawner: Spawner | None,
    *,
    env: dict[str, str] | None = None,
    abort: asyncio.Event | None = None,
    started: list[int] | None = None,
    cgroup: cgroups.TaskCgroup | None = None,
    as_self: bool = True,
) -> tuple[CommandResult, bytes]:
    """``argv`` by ``run_command``.  Without a cgroup it runs ``as_self`` (``user`` = this uid): a step
    between fork and exec, so a spawner takes the command (with nothing to do there it is forked here, by
    vfork), and so does the same Popen call when there is no spawner."""
    out = bytearray()
    result = await run_command(
        argv,
        cwd=cwd,
        env=ENV if env is None else env,
        output=out.extend,
        abort=asyncio.Event() if abort is None else abort,
        started=(started.append if started is not None else lambda pid: None),
        cgroup=cgroup,
        spawner=spawner,
        user=os.getuid() if cgroup is None and as_self else None,
    )
    return result, bytes(out)


def _spawner_pid(spawner: Spawner) -> int:
    assert spawner._proc is not None, "the spawner process never started"
    return spawner._proc.pid


async def test_exit_status_output_environment_and_directory_match_a_fork_here(tmp_path: Path, spawner: Spawner) -> None:
    script = 'echo "out $ONLY $(pwd)"; echo err >&2; env | sort > env.txt; ls /proc/self/fd > fds.txt; exit 7'
    local, local_out = await _run(["sh", "-c", script], tmp_path, None)
    local_env = (tmp_path / "env.txt").read_text()
    local_fds = (tmp_path / "fds.txt").read_text()
    remote, remote_out = await _run(["sh", "-c", script], tmp_path, spawner)
    assert (remote.exit_code, remote.system_error, remote.signalled) == (7, None, None)
    assert (local.exit_code, local.system_error) == (7, None)
    assert remote_out == local_out == f"out this {tmp_path}\nerr\n".encode()
    assert (tmp_path / "env.txt").read_text() == local_env  # nothing added or lost on the way
    assert (tmp_path / "fds.txt").read_text() == local_fds == "0\n1\n2\n3\n"  # 3: ls's own; nothing leaks
    assert remote.user_time >= 0 and remote.kernel_time >= 0 and remote.duration > 0
    # It really ran there: the command was the spawner's child, not ours.
    parents: list[int] = []
    await _run(["sh", "-c", "echo $PPID > ppid.txt"], tmp_path, spawner, started=parents)
    assert int((tmp_path / "ppid.txt").read_text()) == _spawner_pid(spawner)


async def test_a_missing_program_is_the_same_system_error_either_way(tmp_path: Path, spawner: Spawner) -> None:
    local, _ = await _run(["no-such-program-megalodon"], tmp_path, None)
    remote, _ = await _run(["no-such-program-megalodon"], tmp_path, spawner)
    assert remote.exit_code == local.exit_code == -2
    assert remote.system_error == local.system_error == "no-such-program-megalodon: No such file or directory"
    (tmp_path / "not-exec").write_text("#!/bin/sh\n")
    local, _ = await _run(["./not-exec"], tmp_path, None)
    remote, _ = await _run(["./not-exec"], tmp_path, spawner)
    assert remote.system_error == local.system_error == "./not-exec: Permission denied"


async def test_signals_have_their_default_disposition_in_the_command(tmp_path: Path, spawner: Spawner) -> None:
    """The spawner catches INT/TERM/HUP for itself; its commands must not inherit that."""
    result, _ = await _run(["sh", "-c", "kill -TERM $$; sleep 5"], tmp_path, spawner)
    assert (result.exit_code, result.signalled) == (-1, signal.SIGTERM)
    result, _ = await _run(["sh", "-c", "kill -INT $$; sleep 5"], tmp_path, spawner)
    assert (result.exit_code, result.signalled) == (-1, signal.SIGINT)


async def test_the_spawner_survives_int_and_term(tmp_path: Path, spawner: Spawner) -> None:
    await _run(["true"], tmp_path, spawner)
    pid = _spawner_pid(spawner)
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    result, out = await _run(["echo", "still here"], tmp_path, spawner)
    assert result.exit_code == 0 and out == b"still here\n"
    assert _spawner_pid(spawner) == pid


async def test_abort_kills_a_command_started_there(tmp_path: Path, spawner: Spawner) -> None:
    abort = asyncio.Event()
    pids: list[int] = []
    call = asyncio.create_task(_run(["sleep", "300"], tmp_path, spawner, abort=abort, started=pids))
    await wait_for(lambda: pids)  # the command started
    abort.set()
    result, _ = await asyncio.wait_for(call, 60)
    assert result.aborted and result.exit_code == -1 and result.signalled == signal.SIGKILL
    assert await wait_gone(pids[0])


async def test_a_cancelled_command_started_there_is_killed(tmp_path: Path, spawner: Spawner) -> None:
    pids: list[int] = []
    call = asyncio.create_task(_run(["sleep", "300"], tmp_path, spawner, started=pids))
    await wait_for(lambda: pids)  # the command started
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await wait_gone(pids[0]), "a cancelled command kept running"


async def test_a_spawner_killed_under_a_command_fails_it_and_kills_it(tmp_path: Path, spawner: Spawner) -> None:
    pids: list[int] = []
    call = asyncio.create_task(_run(["sleep", "300"], tmp_path, spawner, started=pids))
    await wait_for(lambda: pids)  # the command started
    os.kill(_spawner_pid(spawner), signal.SIGKILL)
    result, _ = await asyncio.wait_for(call, 60)
    assert result.system_error == "sleep: the worker's spawner process exited while the command ran"
    assert await wait_gone(pids[0]), "the command outlived its spawner"
    # Later commands are forked by the worker itself.
    result, out = await _run(["echo", "forked here"], tmp_path, spawner)
    assert result.exit_code == 0 and out == b"forked here\n"


async def test_a_new_spawner_starts_after_one_died(
    tmp_path: Path, spawner: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _run(["true"], tmp_path, spawner)
    first = _spawner_pid(spawner)
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: spawner._dead)
    result, out = await _run(["sh", "-c", "echo $PPID"], tmp_path, spawner)
    assert result.exit_code == 0 and int(out) == os.getpid()  # within RESTART_AFTER: forked here
    monkeypatch.setattr(spawner_module, "RESTART_AFTER", 0.0)
    result, out = await _run(["sh", "-c", "echo $PPID"], tmp_path, spawner)
    second = _spawner_pid(spawner)
    assert result.exit_code == 0 and int(out) == second != first


async def test_an_environment_too_big_for_one_message_is_forked_here(tmp_path: Path, spawner: Spawner) -> None:
    await _run(["true"], tmp_path, spawner)  # the spawner is up
    # Many variables below the kernel's 128 KiB per string, more than one message in all.
    chunks = spawner_process.MAX_MESSAGE // (64 * 1024) + 1
    big = {**ENV, **{f"BIG{i}": "x" * (64 * 1024) for i in range(chunks)}}
    result, out = await _run(["sh", "-c", "echo ${#BIG0} $PPID"], tmp_path, spawner, env=big)
    assert result.exit_code == 0, out
    length, parent = out.split()
    assert int(length) == 64 * 1024
    assert int(parent) == os.getpid()


async def test_with_nothing_to_do_before_exec_the_command_is_forked_here(tmp_path: Path, spawner: Spawner) -> None:
    result, out = await _run(["sh", "-c", "echo $PPID"], tmp_path, spawner, as_self=False)
    assert result.exit_code == 0 and int(out) == os.getpid()
    assert spawner._proc is None, "the spawner process was started for nothing"


def test_the_spawner_exits_when_the_worker_goes_away(tmp_path: Path) -> None:
    """A worker killed with -9 just closes its end of the socket: the spawner exits and leaves the commands it
    started to the worker's recovery (journal and cgroup), as a killed worker's own children are left."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", spawner_process.__file__, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    read_fd, write_fd = os.pipe()
    request = {"id": 1, "argv": ["sleep", "300"], "cwd": str(tmp_path), "env": ENV, "user": os.getuid(), "cgroups": 0}
    ours.sendmsg([json.dumps(request).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_fd]))])
    os.close(write_fd)
    ours.settimeout(60)
    reply = json.loads(ours.recv(65536))
    command = int(reply["pid"])
    try:
        ours.close()  # the worker is gone
        assert proc.wait(60) == 0
        assert alive(command), "the spawner must not kill what it started"
    finally:
        os.kill(command, signal.SIGKILL)
        os.close(read_fd)


async def test_a_datagram_the_socket_refuses_is_forked_here_and_the_spawner_lives_on(
    tmp_path: Path, spawner: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the socket buffer (~208 KiB by default) the kernel refuses the datagram (EMSGSIZE): that request is
    forked here; the spawner and the commands it runs are not given up for it."""
    await _run(["true"], tmp_path, spawner)
    first = _spawner_pid(spawner)
    monkeypatch.setattr(spawner_process, "MAX_MESSAGE", 1 << 30)  # let the request reach the socket
    big = {**ENV, **{f"BIG{i}": "x" * (64 * 1024) for i in range(5)}}  # 320 KiB
    result, out = await _run(["sh", "-c", "echo $PPID"], tmp_path, spawner, env=big)
    assert result.exit_code == 0 and int(out) == os.getpid()
    result, out = await _run(["sh", "-c", "echo $PPID"], tmp_path, spawner)
    assert result.exit_code == 0 and int(out) == first == _spawner_pid(spawner)


async def test_close_ends_the_spawner_process(tmp_path: Path) -> None:
    spawner = Spawner()
    await _run(["true"], tmp_path, spawner)
    pid = _spawner_pid(spawner)
    assert alive(pid)
    await spawner.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.skipif(HOST is None, reason="needs root and a cgroup hierarchy at /sys/fs/cgroup")
async def test_a_command_runs_in_its_task_cgroup_and_the_worker_stays_out(
    tmp_path: Path, spawner: Spawner, started_here: collections.Counter[str]
) -> None:
    """On v1 (freezer alone) the worker passes through the task cgroup and vforks, and is back in its own
    cgroup when run_command returns; the spawner process is not even started."""
    assert HOST is not None
    group = HOST.create(f"task-spawner-test-{os.getpid()}-0", memory_limit=0)
    own = Path("/proc/self/cgroup").read_text()
    try:
        result, out = await _run(["cat", "/proc/self/cgroup"], tmp_path, spawner, cgroup=group)
        assert result.exit_code == 0
        assert f"task-spawner-test-{os.getpid()}-0" in out.decode()
        if HOST.version == 1:
            assert started_here == {"vfork+migrate": 1} and not spawner.started_via
            assert spawner._proc is None, "the spawner process was started for nothing"
        assert Path("/proc/self/cgroup").read_text() == own
        assert group.pids() == [], "the worker is not in the task's cgroup"
    finally:
        group.remove()


@pytest.mark.skipif(HOST is None or HOST.version != 1, reason="needs root and cgroup v1 hierarchies")
async def test_a_kill_waits_for_a_passage_and_a_passage_never_waits_for_a_kill(
    tmp_path: Path, spawner: Spawner, started_here: collections.Counter[str]
) -> None:
    """A freeze with the worker inside the cgroup would stop the worker with its task: a kill waits for the
    worker's way out, and a command started while a kill freezes some cgroup goes to the spawner instead."""
    assert HOST is not None
    group = HOST.create(f"task-{os.urandom(16).hex()}", memory_limit=0)
    try:
        pids: list[int] = []
        running = asyncio.create_task(_run(["sleep", "300"], tmp_path, spawner, started=pids, cgroup=group))
        await wait_for(lambda: pids)
        assert started_here == {"vfork+migrate": 1}
        assert cgroups._PASSAGE.acquire(blocking=False)  # as a passage (or a kill) holds it
        try:
            killing = asyncio.create_task(asyncio.to_thread(group.kill))
            # While it is held, a second command is not started by a passage but by the spawner process.
            result, out = await _run(["cat", "/proc/self/cgroup"], tmp_path, spawner, cgroup=group)
            assert result.exit_code == 0 and group.name in out.decode()
            assert spawner.started_via == {"clone3+join": 1} and started_here == {"vfork+migrate": 1}
            await asyncio.sleep(0.2)
            assert not killing.done() and alive(pids[0]), "the kill did not wait"
            assert (group.dirs[0] / "freezer.state").read_text().strip() == "THAWED"
        finally:
            cgroups._PASSAGE.release()
        assert await asyncio.wait_for(killing, 60) >= 1
        result, _ = await asyncio.wait_for(running, 60)
        assert result.signalled == signal.SIGKILL
    finally:
        group.remove()


@pytest.mark.skipif(HOST is None or HOST.version != 1, reason="needs root and cgroup v1 hierarchies")
async def test_slow_passages_are_given_up_for_the_spawner(
    tmp_path: Path, spawner: Spawner, started_here: collections.Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host where a cgroup migration waits for an RCU grace period the worker stops passing through
    task cgroups after a few slow passages, and the spawner starts commands by clone3 with a join."""
    assert HOST is not None
    monkeypatch.setattr(cgroups, "MIGRATION_SLOW", -1.0)  # every passage counts as slow
    group = HOST.create(f"task-{os.urandom(16).hex()}", memory_limit=0)
    try:
        for _ in range(cgroups.SLOW_MIGRATIONS + 1):
            result, out = await _run(["cat", "/proc/self/cgroup"], tmp_path, spawner, cgroup=group)
            assert result.exit_code == 0 and group.name in out.decode()
    finally:
        group.remove()
    assert started_here == {"vfork+migrate": cgroups.SLOW_MIGRATIONS}
    assert spawner.started_via == {"clone3+join": 1}


def _fake_freezer(tmp_path: Path, home: str, root: str) -> cgroups.TaskCgroup:
    """A task cgroup in a fake v1 freezer tree: joining writes a regular file (nothing moves), this
    process's own cgroup (``/worker``, set in the cache of :func:`cgroups._own_cgroup`) and the root
    accept writes or refuse them as ``home`` and ``root`` say.  Call ``cgroups._forget_home()`` after."""
    mount = tmp_path / "freezer"
    task = mount / cgroups.BASE / "task-fake"
    task.mkdir(parents=True)
    (task / "cgroup.procs").write_text("")
    home_dir = mount / "worker"
    home_dir.mkdir()
    cgroups._own_cgroups[os.getpid()] = {"freezer": "/worker"}
    for directory, target in ((home_dir, home), (mount, root)):
        procs = directory / "cgroup.procs"
        procs.unlink(missing_ok=True)
        if target == "refuse":
            procs.symlink_to("/dev/full")  # every write: ENOSPC
        else:
            procs.write_text("")
    host = cgroups.CgroupHost(1, tmp_path, {"freezer": mount}, tmp_path / "owners")
    return cgroups.TaskCgroup(host, "task-fake", [task])


def test_the_way_home_is_opened_once_per_process(tmp_path: Path) -> None:
    """Every passage goes back through the same kept descriptor; one that failed is forgotten with the rest."""
    group = _fake_freezer(tmp_path, home="accept", root="accept")
    fds = group.open_procs()
    try:
        first = group.home_procs()
        for _ in range(3):
            with group.passage(fds) as inside:
                assert inside
        assert group.home_procs() == first and len(first) == 1
        os.fstat(first[0])  # still open: not closed by a passage
        # A regular file stands for cgroup.procs: the one descriptor wrote all three ways home.
        assert (group.host.mounts["freezer"] / "worker" / "cgroup.procs").read_text() == "000"
    finally:
        for fd in fds:
            os.close(fd)
        cgroups._forget_home()
    with pytest.raises(OSError):
        os.fstat(first[0])


def test_a_worker_that_cannot_go_home_goes_to_the_freezer_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = _fake_freezer(tmp_path, home="refuse", root="accept")
    fds = group.open_procs()
    try:
        with group.passage(fds) as inside:
            assert inside
    finally:
        for fd in fds:
            os.close(fd)
        cgroups._forget_home()
    assert (group.dirs[0] / "cgroup.procs").read_text() == "0", "it went in"
    assert (group.host.mounts["freezer"] / "cgroup.procs").read_text() == "0", "it went to the root"
    assert "could not go back to its own freezer cgroup" in caplog.text


def test_a_worker_that_cannot_leave_a_task_cgroup_exits(tmp_path: Path) -> None:
    """Stuck inside, the worker's end would come with the task's (a freeze, then a kill): it exits at once,
    with a line saying why, and its journal lets the next worker process recover its runs."""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from pathlib import Path
from tests.core.test_spawner import _fake_freezer
group = _fake_freezer(Path({str(tmp_path)!r}), home="refuse", root="refuse")
fds = group.open_procs()
with group.passage(fds) as inside:
    assert inside
print("still here")
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == cgroups.EXIT_STUCK_IN_TASK_CGROUP, done.stderr
    assert "still here" not in done.stdout
    assert "the worker cannot leave task cgroup task-fake" in done.stderr


async def test_a_cgroup_join_that_fails_fails_the_command_as_a_fork_here_does(tmp_path: Path, spawner: Spawner) -> None:
    """The write into ``cgroup.procs`` failing in the child (here: /dev/full) is the same failure either way,
    and the command never runs."""
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "cgroup.procs").symlink_to("/dev/full")
    host = cgroups.CgroupHost(1, tmp_path, {"freezer": tmp_path}, tmp_path / "owners")
    group = cgroups.TaskCgroup(host, "group", [tmp_path / "group"])
    argv = ["sh", "-c", "echo ran > ran.txt"]
    local, _ = await _run(argv, tmp_path, None, cgroup=group)
    remote, _ = await _run(argv, tmp_path, spawner, cgroup=group)
    assert local.system_error == "sh: could not join the task's cgroup before exec"
    assert (remote.exit_code, remote.system_error) == (local.exit_code, local.system_error)
    assert not (tmp_path / "ran.txt").exists()


# -- cgroup v2: clone3(CLONE_INTO_CGROUP), no migration ------------------------------------------------------
def _v2_root() -> Path | None:
    """A cgroup v2 hierarchy this test may write to: the unified root, or the hybrid layout's unified mount."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2" and (Path(fields[1]) / "cgroup.procs").is_file():
            return Path(fields[1])
    return None


V2_ROOT = _v2_root()
needs_v2 = pytest.mark.skipif(V2_ROOT is None, reason="needs root and a cgroup v2 hierarchy (unified or hybrid)")


@pytest.fixture
def v2_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[cgroups.TaskCgroup]:
    assert V2_ROOT is not None
    monkeypatch.setattr(cgroups, "BASE", f"megalodon-spawner-{os.getpid()}")
    host = cgroups.CgroupHost(2, V2_ROOT, {"unified": V2_ROOT}, tmp_path / "owners")
    group = host.create(f"task-{os.urandom(16).hex()}")
    try:
        yield group
    finally:
        group.remove()
        with contextlib.suppress(OSError):
            (V2_ROOT / cgroups.BASE).rmdir()


@pytest.fixture(params=["v1-freezer", "v1-memory", "v2"])
def clone_group(request: pytest.FixtureRequest) -> Iterator[tuple[cgroups.TaskCgroup, str]]:
    """A task cgroup and how a command without a task identity starts in it: v1 freezer alone, the worker
    passes through and vforks; v1 with a memory limit, the spawner's clone3 child joins; v2, the spawner's
    clone3 straight into it (``CLONE_INTO_CGROUP``).  With an identity to take, v1 is always a clone3 child
    that joins."""
    if request.param.startswith("v1"):
        if HOST is None or HOST.version != 1:
            pytest.skip("needs root and cgroup v1 hierarchies at /sys/fs/cgroup")
        memory = request.param == "v1-memory"
        if memory and not HOST.has_memory:
            pytest.skip("needs the v1 memory controller")
        group = HOST.create(f"task-{os.urandom(16).hex()}", memory_limit=(1 << 30) if memory else 0)
        try:
            yield group, "clone3+join" if memory else "vfork+migrate"
        finally:
            group.remove()
        return
    if V2_ROOT is None:
        pytest.skip("needs root and a cgroup v2 hierarchy (unified or hybrid)")
    yield request.getfixturevalue("v2_group"), "clone3"


def _vias(spawner: Spawner) -> collections.Counter[str]:
    """How commands were started, here (:data:`process_module.STARTED_HERE`) and by the spawner."""
    return process_module.STARTED_HERE + spawner.started_via


def _cgroup_of(output: bytes) -> str:
    return next(line.split(":", 2)[2] for line in output.decode().splitlines() if line.startswith("0::"))


@needs_v2
async def test_v2_commands_start_in_their_cgroup_without_migrating(
    tmp_path: Path, spawner: Spawner, v2_group: cgroups.TaskCgroup
) -> None:
    result, out = await _run(["cat", "/proc/self/cgroup"], tmp_path, spawner, cgroup=v2_group)
    assert result.exit_code == 0
    assert _cgroup_of(out) == f"/{cgroups.BASE}/{v2_group.name}"
    assert spawner.started_via == {"clone3": 1}
    # The same as a fork here that joins the cgroup before exec.
    local, local_out = await _run(["cat", "/proc/self/cgroup"], tmp_path, None, cgroup=v2_group)
    assert local.exit_code == 0 and _cgroup_of(local_out) == _cgroup_of(out)


async def test_clone3_child_matches_a_fork_here(
    tmp_path: Path, spawner: Spawner, clone_group: tuple[cgroups.TaskCgroup, str]
) -> None:
    """Session, directory, stdin, environment, descriptors, exit codes, signals: the child of clone3 does what
    subprocess.Popen's child does."""
    v2_group, via = clone_group
    script = (
        'echo "sid=$(ps -o sid= -p $$ | tr -d " ")" "pid=$$"; pwd; env | sort; '
        'ls /proc/self/fd | sort -n | tr "\\n" " "; cat; exit 9'
    )
    with no_passage():
        local, local_out = await _run(["sh", "-c", script], tmp_path, None, cgroup=v2_group)
    remote, remote_out = await _run(["sh", "-c", script], tmp_path, spawner, cgroup=v2_group)
    assert _vias(spawner)[via] == 1
    assert (remote.exit_code, remote.system_error) == (local.exit_code, local.system_error) == (9, None)

    def normalised(out: bytes) -> list[str]:
        first, *rest = out.decode().splitlines()
        sid, pid = (f.split("=")[1] for f in first.split())
        assert sid == pid, "the command leads its own session"
        return rest

    assert normalised(remote_out) == normalised(local_out)
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    (tmp_path / "no-interpreter").write_bytes(b"\x00\x01binary")
    (tmp_path / "no-interpreter").chmod(0o755)
    for argv, expected in (
        (["no-such-program-megalodon"], "no-such-program-megalodon: No such file or directory"),
        (["./not-executable"], "./not-executable: Permission denied"),
        (["./no-interpreter"], "./no-interpreter: Exec format error"),
    ):
        with no_passage():
            local, _ = await _run(argv, tmp_path, None, cgroup=v2_group)
        remote, _ = await _run(argv, tmp_path, spawner, cgroup=v2_group)
        assert remote.system_error == local.system_error == expected
        assert remote.exit_code == local.exit_code == -2
    with no_passage():
        local, _ = await _run(["true"], tmp_path / "gone", None, cgroup=v2_group)
    remote, _ = await _run(["true"], tmp_path / "gone", spawner, cgroup=v2_group)
    assert remote.system_error == local.system_error == "true: No such file or directory"
    result, _ = await _run(["sh", "-c", "kill -TERM $$; sleep 5"], tmp_path, spawner, cgroup=v2_group)
    assert (result.exit_code, result.signalled) == (-1, signal.SIGTERM)
    result, out = await _run(["sh", "-c", "yes | head -c 3"], tmp_path, spawner, cgroup=v2_group)
    assert result.exit_code == 0 and out == b"y\ny", "SIGPIPE has its default disposition"


async def test_clone3_child_takes_the_task_identity(
    tmp_path: Path, spawner: Spawner, clone_group: tuple[cgroups.TaskCgroup, str]
) -> None:
    v2_group, via = clone_group
    via = "clone3+join" if via == "vfork+migrate" else via  # a setuid rules vfork out
    tmp_path.chmod(0o755)
    out = bytearray()
    result = await run_command(
        ["sh", "-c", "echo $(id -u) $(id -g) $(id -G)"],
        cwd=tmp_path,
        env=ENV,
        output=out.extend,
        abort=asyncio.Event(),
        cgroup=v2_group,
        spawner=spawner,
        user=65534,
        group=65534,
        extra_groups=[65534],
    )
    assert result.exit_code == 0 and _vias(spawner)[via] == 1, out.decode()
    assert out.decode().split() == ["65534", "65534", "65534"]


async def test_abort_kills_a_command_started_by_clone3(
    tmp_path: Path, spawner: Spawner, clone_group: tuple[cgroups.TaskCgroup, str]
) -> None:
    v2_group, via = clone_group
    abort = asyncio.Event()
    pids: list[int] = []
    call = asyncio.create_task(_run(["sleep", "300"], tmp_path, spawner, abort=abort, started=pids, cgroup=v2_group))
    await wait_for(lambda: pids)  # the command started
    assert _vias(spawner)[via] == 1
    abort.set()
    result, _ = await asyncio.wait_for(call, 60)
    assert result.aborted and result.signalled == signal.SIGKILL
    assert await wait_gone(pids[0])
