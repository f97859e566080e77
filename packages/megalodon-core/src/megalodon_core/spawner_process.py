"""The spawner process: forks task commands on the worker's behalf, because it is small.

Run as ``python -I -S spawner_process.py`` (standard library only, no site-packages, so it stays a ~10 MB
process).  A command must join its task's cgroup before it execs, which rules out ``vfork``; a full
``fork`` copies the page tables of the forking process, and the worker's are large: forking a command costs
the worker about 3 ms of CPU (copy, then copy-on-write faults) against well under 1 ms here (issue 13).  The
spawner also keeps the cgroup migration (which may sleep for an RCU grace period) off the worker's event loop.

On cgroup v2 the command does not migrate at all: ``clone3(CLONE_INTO_CGROUP)`` starts it in its task cgroup,
and the child does what ``subprocess.Popen``'s child does (session, directory, descriptors, identity, signals,
the same ``PATH`` search and errors) before it execs.  On cgroup v1 the same ``clone3`` child first writes
itself into each ``cgroup.procs`` it was given: ``Popen`` with a ``preexec_fn`` costs 2.7 ms of CPU per
command here against 1.7 ms for this child, as it re-initialises the interpreter after the fork (threads,
locks, import state) and runs the pre-exec step through the full Python call machinery.  Kernels without
``clone3`` (< 5.3, or < 5.7 for v2's flag) get ``subprocess.Popen`` with a pre-exec step that joins.

Protocol on the inherited ``SOCK_SEQPACKET`` socket whose number is the first argument (one JSON object per
message):

- worker -> spawner: ``{"id", "argv", "cwd", "env", "user", "group", "extra_groups", "cgroups": n,
  "cgroup_dir": 0|1}`` with the command's output descriptor, ``n`` open ``cgroup.procs`` descriptors and, on
  cgroup v2, the cgroup directory's descriptor attached (``SCM_RIGHTS``);
- spawner -> worker: ``{"id", "pid", "via"}`` (``clone3``, ``clone3+join`` or ``fork``), or
  ``{"id", "error": {"kind": ...}}`` when the command could not start (the worker raises the same exception
  ``subprocess.Popen`` raised here);
- spawner -> worker: ``{"exit": pid, "status", "utime", "stime"}`` when a command ends (it is reaped here).

The spawner exits when the worker's end of the socket closes (the worker exited, however it died).  The
commands it started are left alone then: the worker's recovery finds them through its journal and cgroups,
exactly as for commands the worker itself forked.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

#: clone3(2) (the same number on every architecture of the generic syscall table) and its flag to start the
#: child in a cgroup v2 directory given by descriptor (Linux 5.7+).
SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid",
            "set_tid_size", "cgroup",
        )
    ]  # fmt: skip


#: PyDLL: the call keeps the GIL, so the child returns from clone3 holding it, as after os.fork.
_LIBC = ctypes.PyDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
#: Whether clone3 into a cgroup works here; False after the kernel refused it once (then Popen + migration).
_CLONE_INTO_CGROUP = [True]
#: Whether plain clone3 works here (Linux 5.3+); False after the kernel refused it once (then Popen).
_CLONE3 = [True]
#: What the child reports when writing itself into a ``cgroup.procs`` failed (errno follows).
_JOIN_FAILED = b"J"

_MAXFD = max(os.sysconf("SC_OPEN_MAX"), 1 << 16)

#: The largest request the worker sends (its argv and environment); bigger ones it forks itself.  Below
#: the default socket buffer (``net.core.wmem_default``, 208 KiB), beyond which a datagram is refused
#: (EMSGSIZE) however it is split.
MAX_MESSAGE = 128 * 1024
#: Descriptors per request: the output pipe and one ``cgroup.procs`` per hierarchy (a handful).
MAX_FDS = 32


def cgroup_joiner(fds: list[int]) -> Callable[[], None]:
    """A ``preexec_fn`` moving the forked child into a cgroup: writing 0 to an open ``cgroup.procs`` moves the
    writer.  Only ``os.write`` on descriptors opened before the fork: safe in the child of a threaded process.
    Here (standard library only) so that this process and the worker's own forks share it."""

    def join() -> None:
        for fd in fds:
            os.write(fd, b"0")

    return join


def _exec_candidates(argv: list[str], env: dict[str, str]) -> list[bytes]:
    """The paths ``subprocess.Popen`` tries, in its order: the program itself when it names a directory,
    else each directory of the command's own ``PATH``."""
    program = os.fsencode(argv[0])
    if os.path.dirname(program):
        return [program]
    return [os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env)]


def _child(request: dict[str, Any], output: int, err_w: int, join: list[int]) -> None:
    """In the child of clone3: join the cgroup (v1: write to each ``cgroup.procs`` in ``join``; v2: already in
    it), then what Popen's child does, then exec.  Never returns."""
    code = 0
    try:
        for fd in join:
            try:
                os.write(fd, b"0")
            except OSError as exc:
                with contextlib.suppress(BaseException):
                    os.write(err_w, _JOIN_FAILED + str(exc.errno or errno.EINVAL).encode())
                os._exit(255)
        os.setsid()
        os.chdir(request["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        if request.get("extra_groups") is not None:
            os.setgroups(request["extra_groups"])
        if request.get("group") is not None:
            os.setregid(request["group"], request["group"])
        if request.get("user") is not None:
            os.setreuid(request["user"], request["user"])
        os.closerange(3, err_w)
        os.closerange(err_w + 1, _MAXFD)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # what Popen's restore_signals resets
            signal.signal(signum, signal.SIG_DFL)
        argv, env = request["argv"], request["env"]
        saved = 0
        for path in _exec_candidates(argv, env):
            try:
                os.execve(path, argv, env)
            except OSError as exc:
                code = exc.errno or errno.EINVAL
                if code not in (errno.ENOENT, errno.ENOTDIR) and not saved:
                    saved = code
        code = saved or code
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    except BaseException:
        code = errno.EINVAL
    finally:
        with contextlib.suppress(BaseException):
            os.write(err_w, str(code or errno.EINVAL).encode())
        os._exit(255)


def _clone(cgroup_fd: int | None, join: list[int], request: dict[str, Any], output: int) -> int | None:
    """Start the command by clone3: directly in the cgroup v2 directory ``cgroup_fd`` (no migration, so no
    wait for an RCU grace period: a write to ``cgroup.procs`` sleeps ~10 ms on hosts without
    ``favordynmods``), or, on v1, in a child that writes itself into each of ``join`` before it execs.  None
    when the kernel has no such clone3 (the caller uses Popen with a pre-exec step instead)."""
    for key, value in request["env"].items():  # what Popen refuses before it forks, with its messages
        if "=" in key or not key:
            raise ValueError("illegal environment variable name")
        if "\0" in key or "\0" in value:
            raise ValueError("embedded null byte")
    if any("\0" in arg for arg in request["argv"]) or "\0" in request["cwd"]:
        raise ValueError("embedded null byte")
    err_r, err_w = os.pipe()  # close-on-exec: an exec closes it, an error is written to it
    try:
        if cgroup_fd is not None:
            args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
        else:
            args = _CloneArgs(flags=0, exit_signal=signal.SIGCHLD)
        pid = _LIBC.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
        if pid == 0:
            _child(request, output, err_w, join)
        if pid < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOSYS, errno.E2BIG, errno.EINVAL, errno.EOPNOTSUPP):
                (_CLONE_INTO_CGROUP if cgroup_fd is not None else _CLONE3)[0] = False
                return None
            raise OSError(code, os.strerror(code))
        os.close(err_w)
        err_w = -1
        report = b""
        while chunk := os.read(err_r, 64):
            report += chunk
        if report:
            os.waitpid(pid, 0)  # the child exits at once: reap it here, it never ran the command
            if report.startswith(_JOIN_FAILED):
                # What Popen raises when its pre-exec step (the same join) fails, so both paths fail alike.
                raise subprocess.SubprocessError("Exception occurred in preexec_fn.")
            code = int(report) if report.isdigit() else errno.EINVAL
            raise OSError(code, os.strerror(code), request["argv"][0])
        return int(pid)
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)


def _popen(request: dict[str, Any], output: int, **identity: Any) -> subprocess.Popen[bytes]:
    """The worker's own ``subprocess.Popen`` call for a command, with ``identity`` (user, groups, pre-exec)."""
    return subprocess.Popen(
        request["argv"],
        cwd=request["cwd"],
        env=request["env"],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        start_new_session=True,
        close_fds=True,
        **identity,
    )


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode())


class _Started:
    """A child started by clone3, kept like a Popen object until it is reaped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def _spawn(sock: socket.socket, children: dict[int, Any], request: dict[str, Any], fds: list[int]) -> None:
    count = int(request.get("cgroups", 0))
    output, cgroup_fds = fds[0], fds[1 : 1 + count]
    has_dir = bool(request.get("cgroup_dir")) and len(fds) > 1 + count
    cgroup_dir = fds[1 + count] if has_dir else None
    try:
        pid = None
        if cgroup_dir is not None and _CLONE_INTO_CGROUP[0]:
            pid, via = _clone(cgroup_dir, [], request, output), "clone3"
        if pid is None and cgroup_fds and _CLONE3[0]:
            pid, via = _clone(None, cgroup_fds, request, output), "clone3+join"
        if pid is not None:
            children.setdefault(pid, _Started(pid))
        else:
            proc = _popen(
                request,
                output,
                user=request.get("user"),
                group=request.get("group"),
                extra_groups=request.get("extra_groups"),
                preexec_fn=cgroup_joiner(cgroup_fds) if cgroup_fds else None,  # os.write only
            )
            pid = proc.pid
            children[pid] = proc  # kept referenced: a dropped Popen would be waited for by subprocess itself
            via = "fork"
    except OSError as exc:
        error = {"kind": "os", "errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
        _send(sock, {"id": request["id"], "error": error})
    except (subprocess.SubprocessError, ValueError, TypeError) as exc:
        _send(sock, {"id": request["id"], "error": {"kind": "subprocess", "message": str(exc)}})
    else:
        _send(sock, {"id": request["id"], "pid": pid, "via": via})
    finally:
        for fd in fds:
            os.close(fd)


def _reap(sock: socket.socket, children: dict[int, Any]) -> None:
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
    children: dict[int, Any] = {}
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
