"""Owner markers: which worker process made a host object (a task account, a task cgroup), and is it alive.

A worker sweeps at start what crashed workers left on the host, but several workers may share a host (two
``megalodon run`` with their own state directories, parallel test runs).  An object is a live worker's when
its marker names a running process *and* that process's start time, so a recycled pid is not mistaken for
the owner.  One implementation for every kind of object that carries a marker.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["marker_alive", "owner_marker", "process_start_time"]

_MARKER = re.compile(r"megalodon pid (\d+) started (\d*)")


def process_start_time(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat`` (``""`` for no such process): with the pid, it names one process
    for the machine's uptime."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return data.rsplit(")", 1)[1].split()[19]


#: This process's own marker, by pid (a forked child has another): it is written for every task cgroup.
_own: dict[int, str] = {}


def owner_marker(pid: int | None = None) -> str:
    """The marker of process ``pid`` (default: this one): ``megalodon pid <pid> started <start time>``."""
    if pid is None:
        me = os.getpid()
        if me not in _own:
            _own[me] = f"megalodon pid {me} started {process_start_time(me)}"
        return _own[me]
    return f"megalodon pid {pid} started {process_start_time(pid)}"


def marker_alive(text: str) -> bool:
    """Whether ``text`` (a marker, possibly followed by ``,``-separated fields) names a running process."""
    match = _MARKER.fullmatch(text.split(",", maxsplit=1)[0].strip())
    if match is None:
        return False
    pid, started = int(match[1]), match[2]
    return bool(started) and process_start_time(pid) == started
