"""The spawner process: forks task commands on the worker's behalf, because it is small.

Run as ``python -I -S spawner_process.py`` (standard library only, no site-packages, so it stays a ~10 MB
process).  A command must join its task's cgroup between fork and exec, which rules out ``vfork``; a full
``fork`` copies the page tables of the forking process, and the worker's are large: forking a command costs
the worker about 3 ms of CPU (copy, then copy-on-write faults) against well under 1 ms here (issue 13).  The
spawner also keeps the cgroup migration (which may sleep for an RCU grace period) off the worker's event loop.

Protocol on the ``SOCK_SEQPACKET`` socket inherited as fd 3 (one JSON object per message):

- worker -> spawner: ``{"id", "argv", "cwd", "env", "user", "group", "extra_groups", "cgroups": n}`` with the
  command's output descriptor and ``n`` open ``cgroup.procs`` descriptors attached (``SCM_RIGHTS``);
- spawner -> worker: ``{"id", "pid"}``, or ``{"id", "error": {"kind": "os"|"subprocess", ...}}`` when the
  command could not start (the worker raises the same exception ``subprocess.Popen`` raised here);
- spawner -> worker: ``{"exit": pid, "status", "utime", "stime"}`` when a command ends (it is reaped here).

The spawner exits when the worker's end of the socket closes (the worker exited, however it died).  The
commands it started are left alone then: the worker's recovery finds them through its journal and cgroups,
exactly as for commands the worker itself forked.
"""

from __future__ import annotations

import array
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from typing import Any

#: The largest request the worker sends (its argv and environment); bigger ones it forks itself.
MAX_MESSAGE = 256 * 1024
#: Descriptors per request: the output pipe and one ``cgroup.procs`` per hierarchy (a handful).
MAX_FDS = 32


def _joiner(fds: list[int]) -> Any:
    """The pre-exec step: join the task's cgroup (writing 0 moves the writer, i.e. the forked child)."""

    def join() -> None:
        for fd in fds:
            os.write(fd, b"0")

    return join


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode())


def _spawn(
    sock: socket.socket, children: dict[int, subprocess.Popen[bytes]], request: dict[str, Any], fds: list[int]
) -> None:
    output, cgroup_fds = fds[0], fds[1 : 1 + int(request.get("cgroups", 0))]
    try:
        proc = subprocess.Popen(
            request["argv"],
            cwd=request["cwd"],
            env=request["env"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            close_fds=True,
            user=request.get("user"),
            group=request.get("group"),
            extra_groups=request.get("extra_groups"),
            preexec_fn=_joiner(cgroup_fds) if cgroup_fds else None,  # noqa: PLW1509 - os.write only
        )
    except OSError as exc:
        error = {"kind": "os", "errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
        _send(sock, {"id": request["id"], "error": error})
    except (subprocess.SubprocessError, ValueError, TypeError) as exc:
        _send(sock, {"id": request["id"], "error": {"kind": "subprocess", "message": str(exc)}})
    else:
        children[proc.pid] = proc  # kept referenced: a dropped Popen would be waited for by subprocess itself
        _send(sock, {"id": request["id"], "pid": proc.pid})
    finally:
        for fd in fds:
            os.close(fd)


def _reap(sock: socket.socket, children: dict[int, subprocess.Popen[bytes]]) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        proc = children.pop(pid, None)
        if proc is not None:
            proc.returncode = os.waitstatus_to_exitcode(status)
        _send(sock, {"exit": pid, "status": status, "utime": usage.ru_utime, "stime": usage.ru_stime})


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(data), list(fds)


def serve(sock: socket.socket) -> None:
    """Serve spawn requests until the worker goes away."""
    children: dict[int, subprocess.Popen[bytes]] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    # Caught, not ignored: an ignored disposition would be inherited by the commands across exec.  The worker
    # decides when commands end; a Ctrl-C on its terminal or a TERM to its group must not take this process.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                received = _receive(sock)
                if received is None:
                    return
                _spawn(sock, children, *received)
            else:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
        _reap(sock, children)


def main() -> int:
    fd = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sock = socket.socket(fileno=fd)
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
