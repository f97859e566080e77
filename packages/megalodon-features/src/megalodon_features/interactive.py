"""Interactive: a websocket shell into a running task, as generic-worker and docker-worker offer it.

What the peers do, and what this module does the same way:

- generic-worker (``interactive_feature.go``, ``interactive/``): gated by ``enableInteractive`` (off when
  absent), no scope required, a per-task secret (per task since v106: concurrent tasks no longer share one),
  websocket at ``/shell/<secret>``, ``401 Access denied`` for any other secret.  Client messages are binary:
  ``0x01`` + keystrokes, ``0x02`` + rows (u16 LE) + cols (u16 LE) for a resize; output goes back as raw binary
  messages.  The artifact ``private/generic-worker/shell.html`` is a reference to the Taskcluster UI's
  ``<rootUrl>/shell/?v=2&socketUrl=...&taskId=...&runId=...``, expiring ``maxRunTime + 15 min`` from now.
- docker-worker (``features/interactive.js``, ``docker-exec-websocket-server``): websocket at
  ``/<secret>/shell.sock?tty=true&command=...``, one-byte message codes (stdin 0, stdout 1, stderr 2,
  resize 50 with rows/cols u16 LE, resume 100, pause 101, end 102, stopped 200 + exit code, shutdown 201,
  error 202), at most 10 sessions, artifact ``private/docker-worker/shell.html`` -> ``?v=1&socketUrl=...``.

The artifact name follows the run's style (:attr:`megalodon_core.rundata.RunData.style`).  Its link is
always the UI's v2 page with the v2 socket: the Taskcluster UI no longer has a v1 (docker-worker) viewer.
Both socket paths are served for every task, with the same secret.  The shell itself comes from the executor
(:attr:`~megalodon_core.rundata.RunData.interactive`, a :class:`~megalodon_core.rundata.ShellLauncher`): a pty
running ``bash`` as the task user for native tasks, ``docker exec`` with a TTY for docker tasks.  The feature
never looks at which executor it is.

One aiohttp server per worker on ``interactivePort`` serves every running task under its own secret (the
live log's design), so capacity > 1 needs no port blocks.  The worker also serves a small terminal page at the
``http://`` form of the socket URL (no CDN, everything from this package), for pools without a Taskcluster UI.

The session ends with the task: when the feature stops, the secret is forgotten (new connections get 401),
every websocket is closed and every shell killed.  The socket URL is never written to the task log (the
log is public; the URL is a shell), like generic-worker's ``HideURL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import secrets
import struct
import urllib.parse
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import WSMsgType, web

from megalodon_core.contracts import Feature, TaskFeature
from megalodon_core.errors import ExecutionError, ExecutionErrors
from megalodon_core.timefmt import utcnow

from .livelog import public_host
from .worker_server import WorkerServer

if TYPE_CHECKING:
    from megalodon_core.rundata import RunDataField, ShellLauncher, ShellSession
    from megalodon_core.task import TaskRun
    from megalodon_core.worker_context import WorkerContext

log = logging.getLogger(__name__)

#: Artifact names (generic-worker; docker-worker's ``interactive.artifactName`` default + ``shell.html``).
GENERIC_WORKER_ARTIFACT = "private/generic-worker/shell.html"
DOCKER_WORKER_ARTIFACT = "private/docker-worker/shell.html"
#: generic-worker: the artifact outlives maxRunTime by this much.
ARTIFACT_GRACE = dt.timedelta(seconds=900)
#: docker-worker's ``maxSessions``; applied to both styles so a task's shells stay bounded.
MAX_SESSIONS = 10
#: Terminal size before the client's first resize message.
DEFAULT_ROWS, DEFAULT_COLS = 24, 80
#: Largest websocket message accepted (keystrokes and pastes).
MAX_MESSAGE = 1 << 20

# generic-worker's client -> server codes (interactive/interactivejob.go).
V2_STDIN, V2_RESIZE = 1, 2
# docker-exec-websocket-server's codes (src/messagecodes.js).
V1_STDIN, V1_STDOUT, V1_RESIZE = 0, 1, 50
V1_RESUME, V1_PAUSE, V1_END = 100, 101, 102
V1_STOPPED, V1_SHUTDOWN, V1_ERROR = 200, 201, 202

#: Ctrl-D: docker-worker's ``end`` closes stdin; on a terminal at a prompt that is end-of-file.
EOF_KEY = b"\x04"


def bind_address(config: Any) -> str:
    """Every interface when the worker has a public IP (generic-worker listens on ``:port``), else loopback."""
    return "0.0.0.0" if config.publicIP else "127.0.0.1"


def shell_page() -> bytes:
    """The terminal page shipped with this package (``static/shell.html``)."""
    return resources.files("megalodon_features").joinpath("static/shell.html").read_bytes()


class Session:
    """One websocket connected to one shell of a task."""

    def __init__(self, ws: web.WebSocketResponse, shell: ShellSession) -> None:
        self.ws = ws
        self.shell = shell

    async def close(self) -> None:
        await self.shell.close()
        with contextlib.suppress(Exception):
            await self.ws.close(code=1001, message=b"task finished")


class InteractiveTask(TaskFeature):
    """One task's interactive endpoint: a secret, its sessions, and the artifact pointing at it."""

    def __init__(self, feature: InteractiveFeature, run: TaskRun) -> None:
        self.feature = feature
        self.run = run
        self.secret = secrets.token_urlsafe(32)
        self.docker_style = run.data.style == "docker-worker"
        self.artifact_name = DOCKER_WORKER_ARTIFACT if self.docker_style else GENERIC_WORKER_ARTIFACT
        self.sessions: set[Session] = set()
        self.handlers: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.socket_url: str | None = None

    def reserved_artifacts(self) -> list[str]:
        return [self.artifact_name]

    @property
    def launcher(self) -> ShellLauncher:
        launcher = self.run.data.interactive
        if launcher is None:  # the pipeline refuses such a task (Feature.needs): never reached
            raise RuntimeError("interactive: the executor set no shell launcher")
        return launcher

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        run = self.run
        if not await self.feature.server.ensure_started():
            run.log.warn(f"[interactive] could not create interactive session: {self.feature.server.start_error}")
            return
        base = self.feature.base_url()
        # generic-worker's protocol for every task: the Taskcluster UI dropped its docker-worker (v1) viewer,
        # so a v1 link would lead nowhere; docker-worker's own path stays served for its websocket clients.
        self.socket_url = "ws" + base[len("http") :] + f"/shell/{self.secret}"
        self.feature.register(self)
        try:
            await self._publish()
        except ExecutionError as exc:
            run.log.warn(f"[interactive] could not upload interactive artifact: {exc.message}")

    def _expiry(self) -> dt.datetime:
        """generic-worker: now + maxRunTime + 15 min; docker-worker: now + maxRunTime.  Never after the task
        expires (the queue refuses such artifacts; docker-worker capped it there too)."""
        ends = utcnow() + dt.timedelta(seconds=self.run.data.max_run_time)
        if not self.docker_style:
            ends += ARTIFACT_GRACE
        return min(ends, self.run.expires)

    async def _publish(self) -> None:
        run = self.run
        assert self.socket_url is not None
        query = urllib.parse.urlencode(
            {
                "v": "2",
                "socketUrl": self.socket_url,
                "taskId": run.task_id,
                "runId": str(run.run_id),
            }
        )
        root = str(run.worker.config.rootURL).rstrip("/")
        content_type = "text/html" if self.docker_style else "text/html; charset=utf-8"
        await run.publisher().reference(
            run.task_id, run.run_id, self.artifact_name, f"{root}/shell/?{query}", content_type, self._expiry()
        )

    async def stop(self, errors: ExecutionErrors) -> None:
        """The task is over: forget the secret, close every websocket, kill every shell."""
        self.closed = True
        self.feature.unregister(self)
        for session in list(self.sessions):
            await session.close()
        for handler in list(self.handlers):
            handler.cancel()
        for handler in list(self.handlers):
            with contextlib.suppress(BaseException):
                await handler
        self.sessions.clear()

    # -- sessions ---------------------------------------------------------------------------------------
    async def serve(self, request: web.Request, docker_protocol: bool) -> web.StreamResponse:
        """Run one websocket session to its end (client gone, shell ended, or task finished)."""
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        current = asyncio.current_task()
        assert current is not None
        self.handlers.add(current)
        try:
            if len(self.handlers) > MAX_SESSIONS:  # this connection counts (sessions may still be starting)
                await self._report(ws, docker_protocol, "Too many sessions active!")
                return ws
            command = request.query.getall("command", []) if docker_protocol else []
            try:
                shell = await self.launcher.start(DEFAULT_ROWS, DEFAULT_COLS, command or None)
            except (ExecutionError, OSError) as exc:  # OSError: no pty or descriptor left on this host
                reason = exc.message if isinstance(exc, ExecutionError) else str(exc)
                log.warning("interactive shell for task %s could not start: %s", self.run.task_id, reason)
                await self._report(ws, docker_protocol, f"Error while spawning command {reason}")
                return ws
            session = Session(ws, shell)
            if self.closed:  # the task ended while the shell was starting
                await session.close()
                return ws
            self.sessions.add(session)
            try:
                await self._pump(session, docker_protocol)
            finally:
                self.sessions.discard(session)
                await session.close()
        finally:
            self.handlers.discard(current)
        return ws

    @staticmethod
    async def _report(ws: web.WebSocketResponse, docker_protocol: bool, message: str) -> None:
        data = message.encode()
        with contextlib.suppress(Exception):
            await ws.send_bytes(bytes([V1_ERROR]) + data if docker_protocol else data)
            await ws.close()

    async def _pump(self, session: Session, docker_protocol: bool) -> None:
        ws, shell = session.ws, session.shell
        flowing = asyncio.Event()
        flowing.set()

        async def output() -> None:
            if docker_protocol:
                await ws.send_bytes(bytes([V1_RESUME]))
            while data := await shell.read():
                await flowing.wait()
                await ws.send_bytes(bytes([V1_STDOUT]) + data if docker_protocol else data)
            if docker_protocol:
                code = await shell.exit_status()
                await ws.send_bytes(bytes([V1_STOPPED, (code if code is not None else 255) & 0xFF]))

        async def keystrokes() -> None:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY or not msg.data:
                    continue
                data: bytes = msg.data
                if docker_protocol:
                    await self._v1_message(shell, data, flowing)
                elif data[0] == V2_STDIN:
                    await shell.write(data[1:])
                elif data[0] == V2_RESIZE and len(data) >= 5:
                    rows, cols = struct.unpack_from("<HH", data, 1)
                    await shell.resize(rows, cols)
                # generic-worker logs and ignores short resizes and unknown codes.

        tasks = [asyncio.create_task(output()), asyncio.create_task(keystrokes())]
        try:
            # Either side ending ends the session: the client went away, or the shell exited.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    @staticmethod
    async def _v1_message(shell: ShellSession, data: bytes, flowing: asyncio.Event) -> None:
        code = data[0]
        if code == V1_STDIN:
            await shell.write(data[1:])
        elif code == V1_RESIZE and len(data) >= 5:
            rows, cols = struct.unpack_from("<HH", data, 1)
            await shell.resize(rows, cols)
        elif code == V1_PAUSE:
            flowing.clear()
        elif code == V1_RESUME:
            flowing.set()
        elif code == V1_END:
            await shell.write(EOF_KEY)


class InteractiveServer(WorkerServer):
    """The worker's interactive HTTP server: every running task's sessions, each under its secret."""

    label: ClassVar[str] = "interactive server"
    log: ClassVar[logging.Logger] = log

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.tasks: list[InteractiveTask] = []

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("GET", "/shell/{secret}", self._v2)
        router.add_route("GET", "/{secret}/shell.sock", self._v1)

    def find(self, secret: str) -> InteractiveTask | None:
        """The task holding ``secret``, compared in constant time as generic-worker does."""
        found = None
        for task in self.tasks:
            if hmac.compare_digest(task.secret.encode(), secret.encode()):
                found = task
        return found

    @staticmethod
    def _denied() -> web.Response:
        return web.Response(status=401, text="Access denied\n")

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        task = self.find(request.match_info["secret"])
        if task is None or task.closed:
            return self._denied()
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(
                body=shell_page(),
                content_type="text/html",
                charset="utf-8",
                headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
            )
        return await task.serve(request, docker_protocol=False)

    async def _v1(self, request: web.Request) -> web.StreamResponse:
        task = self.find(request.match_info["secret"])
        if task is None or task.closed:
            return self._denied()
        return await task.serve(request, docker_protocol=True)


class InteractiveFeature(Feature):
    """Worker-lifetime half: the config gate and the server.

    The server starts with the first task that requests a shell (generic-worker listens only for such
    tasks), so a worker whose tasks never ask opens no port; it then serves every later task until the
    worker stops.
    """

    name: ClassVar[str] = "interactive"
    needs: ClassVar[tuple[RunDataField, ...]] = ("interactive",)

    def __init__(self, worker: WorkerContext) -> None:
        super().__init__(worker)
        config = worker.config
        self.server = InteractiveServer(bind_address(config), int(config.interactivePort))

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableInteractive)

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return InteractiveTask(self, run)

    def base_url(self) -> str:
        return f"http://{public_host(self.worker.config, self.server.host)}:{self.server.port}"

    def register(self, task: InteractiveTask) -> None:
        self.server.tasks.append(task)

    def unregister(self, task: InteractiveTask) -> None:
        if task in self.server.tasks:
            self.server.tasks.remove(task)

    async def shutdown(self) -> None:
        for task in list(self.server.tasks):
            await task.stop(ExecutionErrors())
        await self.server.stop()
