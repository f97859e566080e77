"""``run_command`` cancelled (not aborted): neither its pipe nor its process outlives the call."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from megalodon_core.process import run_command


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def _open_files() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return names


async def _start_then_cancel(tmp_path: Path) -> int:
    """A long command started by run_command, then the call cancelled; the command's pid."""
    pids: list[int] = []
    call = asyncio.create_task(
        run_command(
            ["sleep", "300"],
            cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            output=lambda data: None,
            abort=asyncio.Event(),
            started=pids.append,
        )
    )
    for _ in range(200):
        if pids:
            break
        await asyncio.sleep(0.05)
    assert pids, "the command never started"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    return pids[0]


async def test_cancelled_command_is_killed_and_its_pipe_closed(tmp_path: Path) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    pid = await _start_then_cancel(tmp_path)
    for _ in range(200):
        if not _alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not _alive(pid), "a cancelled command kept running"
    with contextlib.suppress(Exception):
        await asyncio.sleep(0)  # let the closed transport release its descriptor
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    assert not {fd for fd in leaked if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")}, "pipe left open"


async def test_a_cancelled_command_is_reaped_and_its_pidfd_closed(tmp_path: Path) -> None:
    """Nobody awaits the child's end once the call is cancelled: the pidfd callback still reaps it (no
    zombie) and closes its descriptor."""
    pid = await _start_then_cancel(tmp_path)
    for _ in range(400):
        if not Path(f"/proc/{pid}").exists():
            break
        await asyncio.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the killed command was left a zombie"
    assert "anon_inode:[pidfd]" not in _open_files(), "its pidfd was left open"


async def test_a_child_reaped_elsewhere_fails_the_wait_instead_of_hanging() -> None:
    import subprocess

    from megalodon_core.process import exit_of

    proc = subprocess.Popen(["true"])  # noqa: ASYNC220 - started and reaped by hand, before the loop looks
    ended = exit_of(proc.pid)
    os.waitpid(proc.pid, 0)  # noqa: ASYNC222 - someone else reaps it first
    proc.returncode = 0
    with pytest.raises(ChildProcessError):
        await asyncio.wait_for(ended, 60)
