"""Live log: the task log streamed over HTTP while the task runs, by the worker itself.

generic-worker spawns a ``livelog`` binary per task and tees the log into it through a local PUT; docker-worker
runs a livelog container.  Here one aiohttp server per worker serves every running task, each under an
unguessable secret path (``GET /log/<secret>``), so there is no extra process, no PUT hop and no port per task.

Artifact sequence (as generic-worker): once the task has run for :data:`REFERENCE_DELAY` (one second), the
live log name (``logs.live`` for native tasks, ``log`` for docker tasks) becomes a ``reference`` artifact to
``<base>/log/<secret>``; when the task's log is closed the core uploads the backing log and re-creates the name
as a ``link`` to it.  A task that ends within the delay gets only the link (generic-worker creates the
reference at once; see ``docs/compatibility.md``).

Memory stays bounded whatever the log size: readers read the backing file from disk with ``os.pread`` (in a
thread).  The only bytes kept in memory are a tail of the most recent log bytes, because the task log writes
through a 1 MiB user-space buffer and bytes still in that buffer are not in the file yet; the tail always holds
at least :data:`TAIL_KEEP` bytes (more than the buffer), so every byte is either on disk or in the tail.

File descriptors: while its task runs, a stream holds one descriptor of the backing log (opened right after
the executor's ``prepare``, so it is the file the worker writes whatever the task later does to the names);
each reader reads through a duplicate of it.  Once the log is closed the stream holds none: a finished
stream kept for late readers reopens the file on request, and serves it only if it is still the very same
file (device and inode); when it is gone (``cleanUpTaskDirs``) the reader is redirected to the backing log
artifact, as the live log artifact itself now is.  So a busy worker holds descriptors for its running tasks
and connected readers only, never for the finished tasks of the last minute.

Best effort, like generic-worker: a server that cannot start, or a reference artifact that cannot be created,
only costs a warning in the task log; the task runs on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import ipaddress
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from aiohttp import web

from megalodon_core.contracts import Feature, TaskFeature
from megalodon_core.errors import ExecutionError
from megalodon_core.tasklog import LOG_CONTENT_TYPE
from megalodon_core.timefmt import utcnow

from .worker_server import WorkerServer

if TYPE_CHECKING:
    from megalodon_core.errors import ExecutionErrors
    from megalodon_core.task import TaskRun
    from megalodon_core.worker_context import WorkerContext

log = logging.getLogger(__name__)

#: Bytes of the most recent log output always kept in memory: more than the task log's write buffer holds
#: (64 KiB) or a pipe read brings (1 MiB), so what readers miss in memory is in the file.
TAIL_KEEP = 2 << 20
#: Writes smaller than this are gathered into one chunk of the tail (a task printing a byte at a time must
#: not make a million-entry tail); bigger ones are kept as they came, never copied.
TAIL_GATHER = 64 << 10
#: Bytes sent to a reader per write.
CHUNK = 64 << 10
#: How long a finished task's stream is still served (full log, then EOF) to readers that hold its URL.
FINISHED_RETENTION = 60.0
#: generic-worker: the reference artifact outlives the task's maxRunTime by this much.
REFERENCE_GRACE = dt.timedelta(seconds=900)
#: The reference artifact is created once the task has run this long: a task that ends sooner gets only
#: the final link to the backing log, one queue call less per short task (docs/compatibility.md).
REFERENCE_DELAY = 1.0

#: Config key (megalodon): the address the live log server listens on ("" = see :func:`bind_address`).
BIND_ADDRESS_KEY = "livelogBindAddress"
CONFIG_FIELDS: dict[str, tuple[Any, Any]] = {BIND_ADDRESS_KEY: (str, "")}


def bind_address(config: Any) -> str:
    """Where the server listens: the configured address, else every interface when the worker has a public
    IP (on clouds that IP is often NAT'd and not on any interface), else loopback only."""
    configured = str(config.extra(BIND_ADDRESS_KEY, "") or "")
    if configured:
        return configured
    return "0.0.0.0" if config.publicIP else "127.0.0.1"


def listen_port(config: Any) -> int:
    """``livelogExposePort`` when set; else ``livelogPortBase`` when the config file sets it (generic-worker's
    live log ports start there, and an operator's firewall is opened for them); else 0, any free port."""
    expose = int(config.livelogExposePort)
    if expose:
        return expose
    if "livelogPortBase" in getattr(config, "model_fields_set", ()):
        return int(config.livelogPortBase)
    return 0


def public_host(config: Any, bound: str) -> str:
    """The host readers use in the URL: ``publicIP`` as generic-worker, else the bound address if specific."""
    host = config.publicIP or ""
    if not host:
        host = bound if bound not in ("0.0.0.0", "::", "") else "127.0.0.1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


class LiveStream:
    """One task's log as readers see it: bytes ``[0, end)``, from the backing file or the in-memory tail.

    The task log's sink appends every byte it emits (after secret masking) to the tail; readers wait on
    :attr:`changed` when they have caught up.  :meth:`finish` is called once the task log is closed: the file
    is then complete, the tail is dropped, and readers that catch up get EOF.
    """

    def __init__(
        self,
        secret: str,
        fd: int,
        start: int,
        loop: asyncio.AbstractEventLoop,
        *,
        path: Path | None = None,
        artifact_url: str | None = None,
    ) -> None:
        """``fd``: the backing log, open for reading.  With ``path``, :meth:`finish` releases ``fd`` and
        late readers reopen ``path`` (the same file only); ``artifact_url`` is where a reader is sent when
        the file is gone.  Without ``path`` the descriptor is kept until :meth:`close`."""
        self.secret = secret
        self._fd: int | None = fd
        self.path = path
        self.artifact_url = artifact_url
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self._loop = loop
        self._lock = threading.Lock()
        #: The tail, as the writes came (gathered when small): chunks ``[_tail_start, end)``.  Chunks, not
        #: one buffer: keeping a contiguous tail moved two MiB of it for every two MiB the task printed.
        self._tail: collections.deque[bytes | bytearray] = collections.deque()
        self._tail_len = 0
        self._tail_start = start
        self.end = start
        self.finished = False
        self._changed = asyncio.Event()
        self.readers = 0

    # -- writer side (the task log's sink) --------------------------------------------------------------
    def append(self, data: bytes) -> None:
        """TaskLog sink: keep the newest bytes and wake readers (safe from any thread)."""
        with self._lock:
            if self.finished:
                return
            tail = self._tail
            if len(data) < TAIL_GATHER and tail and isinstance(tail[-1], bytearray) and len(tail[-1]) < TAIL_GATHER:
                tail[-1] += data
            elif len(data) < TAIL_GATHER:
                tail.append(bytearray(data))
            else:
                tail.append(data if type(data) is bytes else bytes(data))
            self._tail_len += len(data)
            self.end += len(data)
            # Whole chunks go, oldest first, as long as TAIL_KEEP bytes stay.
            while self._tail_len - len(tail[0]) >= TAIL_KEEP:
                dropped = len(tail.popleft())
                self._tail_len -= dropped
                self._tail_start += dropped
        if _on_loop(self._loop):
            self._notify()
        else:
            self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def finish(self, end: int | None = None) -> None:
        """The log is closed: everything is in the file now; readers get the rest, then EOF.

        A stream that knows its path releases its descriptor here (readers hold their own duplicates)."""
        with self._lock:
            self.finished = True
            if end is not None:
                self.end = max(self.end, end)
            self._tail.clear()
            self._tail_len = 0
            self._tail_start = self.end
        if self.path is not None:
            self._release()
        self._notify()

    def close(self) -> None:
        """Release the file (readers still running get EOF at their next read)."""
        self.finish()
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's loop, where readers wait."""
        return self._loop

    @property
    def holds_fd(self) -> bool:
        """Whether the stream itself holds a descriptor of the log (readers' own are not counted)."""
        return self._fd is not None

    def open_reader(self) -> int | None:
        """A descriptor of the log for one reader, closed by the caller; None when the file is gone.

        While the stream holds its descriptor, a duplicate of it (no path lookup: the file the worker
        writes, whatever the task did to the names).  Afterwards the path is reopened without following a
        final symlink, and accepted only if it is the same file (device and inode) — never another file put
        in its place.  Blocking (it may touch the disk): call it in a thread.
        """
        fd = self._fd
        if fd is not None:
            with contextlib.suppress(OSError):
                return os.dup(fd)
        if self.path is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if (st.st_dev, st.st_ino) != self._identity:
            os.close(fd)
            return None
        return fd

    # -- reader side -------------------------------------------------------------------------------------
    def _from_tail(self, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``pos`` (in the tail), from the one chunk holding ``pos`` (lock held)."""
        start = self._tail_start
        for chunk in self._tail:
            if pos < start + len(chunk):
                offset = pos - start
                return bytes(chunk[offset : offset + size])
            start += len(chunk)
        return b""

    async def read(self, pos: int, size: int = CHUNK, *, fd: int | None = None) -> bytes:
        """Up to ``size`` bytes at ``pos``, waiting for them while the log is open; ``b""`` means EOF.

        ``fd``: the reader's own descriptor (:meth:`open_reader`); by default the stream's."""
        while True:
            changed = self._changed
            with self._lock:
                end, finished = self.end, self.finished
                if self._tail_start <= pos < end:
                    return self._from_tail(pos, size)
                tail_start = self._tail_start
            if fd is None:
                fd = self._fd
            if pos < end and fd is not None:
                want = min(size, tail_start - pos)
                try:
                    data = await asyncio.to_thread(os.pread, fd, want, pos)
                except OSError:
                    return b""  # the stream was closed under us
                if data:
                    return data
                # Not on disk yet (cannot happen while the tail is larger than the write buffer): wait.
                if finished:
                    return b""
            elif finished or fd is None:
                return b""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class LiveLogServer(WorkerServer):
    """The worker's single live log HTTP server: ``GET /log/<secret>`` for every registered stream."""

    label: ClassVar[str] = "live log server"
    log: ClassVar[logging.Logger] = log

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.streams: dict[str, LiveStream] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("GET", "/log/{secret}", self._get)
        router.add_route("OPTIONS", "/log/{secret}", self._options)

    async def stop(self) -> None:
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()
        await super().stop()

    def register(self, stream: LiveStream) -> None:
        self.streams[stream.secret] = stream

    def unregister(self, stream: LiveStream) -> None:
        if self.streams.get(stream.secret) is stream:
            del self.streams[stream.secret]
        stream.close()

    @staticmethod
    def _cors(headers: dict[str, str]) -> dict[str, str]:
        # The Taskcluster UI reads live logs from the browser: livelog allows every origin, and so do we.
        headers["Access-Control-Allow-Origin"] = "*"
        headers["Access-Control-Expose-Headers"] = "Transfer-Encoding"
        return headers

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204, headers=self._cors({"Access-Control-Allow-Methods": "GET", "Access-Control-Max-Age": "600"})
        )

    async def _get(self, request: web.Request) -> web.StreamResponse:
        stream = self.streams.get(request.match_info["secret"])
        if stream is None:
            return web.Response(
                status=404,
                text="No live log here: the task has finished (read its log artifact) or the URL is wrong.\n",
                headers=self._cors({}),
            )
        fd = await asyncio.to_thread(stream.open_reader)
        if fd is None and stream.finished:
            if stream.artifact_url is None:
                return web.Response(status=404, text="The task has finished: read its log artifact.\n")
            # The task directory is gone: the backing log artifact has the whole log (the live log
            # artifact is a link to it by now).
            raise web.HTTPSeeOther(stream.artifact_url, headers=self._cors({}))
        response = web.StreamResponse(headers=self._cors({"Content-Type": LOG_CONTENT_TYPE}))
        response.enable_chunked_encoding()
        stream.readers += 1
        try:
            await response.prepare(request)
            pos = 0
            while data := await stream.read(pos, fd=fd):
                await response.write(data)
                pos += len(data)
            await response.write_eof()
        except ConnectionError:
            pass  # the reader went away: nothing to tell anyone
        finally:
            stream.readers -= 1
            if fd is not None:
                os.close(fd)
        return response


class LiveLogFeature(Feature):
    """Worker-lifetime half: owns the HTTP server (started in :meth:`initialise`, retried lazily)."""

    name: ClassVar[str] = "liveLog"

    def __init__(self, worker: WorkerContext) -> None:
        super().__init__(worker)
        config = worker.config
        self.server = LiveLogServer(bind_address(config), listen_port(config))
        self._background: set[asyncio.Task[None]] = set()
        #: Finished streams still served, oldest first, with when each is dropped; one timer for them all
        #: (a busy worker finishes a stream every few milliseconds: a timer or task each would fill the loop's
        #: heap with thousands).
        self._retiring: collections.deque[tuple[float, LiveStream]] = collections.deque()
        self._retire_timer: asyncio.TimerHandle | None = None
        #: (server host and port, the base URL made from them): see :meth:`base_url`.
        self._base_url: tuple[tuple[str, int], str] | None = None

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableLiveLog)

    def is_requested(self, run: TaskRun) -> bool:
        """Requested by the executor (optional: generic-worker's ``liveLog``, docker-worker's ``localLiveLog``)
        and the payload names a live log artifact."""
        return run.data.request(self.name) is not None and run.data.logs.live is not None

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return LiveLogTask(self, run)

    async def initialise(self) -> None:
        if self.is_enabled() and not await self.server.ensure_started():
            log.warning("live log server could not start (tasks will retry): %s", self.start_error)

    @property
    def start_error(self) -> str | None:
        """Why the server could not start (None while it listens)."""
        return self.server.start_error

    def base_url(self) -> str:
        """``http://<public host>:<port>``, made again only when the server's address changed (every task's
        stream URL starts with it, and :func:`public_host` parses an address)."""
        bound = (self.server.host, self.server.port)
        if self._base_url is None or self._base_url[0] != bound:
            self._base_url = (bound, f"http://{public_host(self.worker.config, bound[0])}:{bound[1]}")
        return self._base_url[1]

    def listening(self) -> str | None:
        """The server's address for the start-up summary (bound address and port, and the URL host)."""
        if not self.server.running:
            return None
        return f"{self.server.host}:{self.server.port} (URLs {self.base_url()})"

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background until it ends or the worker shuts down."""
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def retire(self, stream: LiveStream, loop: asyncio.AbstractEventLoop) -> None:
        """``stream`` is finished: serve it (full log, then EOF) for :data:`FINISHED_RETENTION` more seconds
        (on ``loop``, the worker's)."""
        self._retiring.append((loop.time() + FINISHED_RETENTION, stream))
        if self._retire_timer is None:
            self._retire_timer = loop.call_at(self._retiring[0][0], self._drop_retired)

    def _drop_retired(self) -> None:
        loop = asyncio.get_running_loop()
        self._retire_timer = None
        while self._retiring and self._retiring[0][0] <= loop.time():
            self.server.unregister(self._retiring.popleft()[1])
        if self._retiring:
            self._retire_timer = loop.call_at(self._retiring[0][0], self._drop_retired)

    async def shutdown(self) -> None:
        if self._retire_timer is not None:
            self._retire_timer.cancel()
            self._retire_timer = None
        while self._retiring:
            self.server.unregister(self._retiring.popleft()[1])
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        await self.server.stop()


def live_log_name(run: TaskRun) -> str | None:
    """The live log artifact name the payload asks for, or None when the task turned the live log off."""
    return run.data.logs.live


class LiveLogTask(TaskFeature):
    """One task's stream: registered at start, finished when the task log closes, dropped a minute later."""

    def __init__(self, feature: LiveLogFeature, run: TaskRun) -> None:
        self.feature = feature
        self.run = run
        self.stream: LiveStream | None = None
        self.url: str | None = None
        #: Waiting out :data:`REFERENCE_DELAY` (a timer, not a sleeping task: most tasks end before it fires).
        self._delay: asyncio.TimerHandle | None = None
        #: Creating the reference artifact, once the delay is over.
        self._reference: asyncio.Task[None] | None = None

    def _reference_expiry(self) -> dt.datetime:
        run = self.run
        if run.data.style == "docker-worker":
            return run.expires  # docker-worker: the reference expires with the task
        expiry = utcnow() + dt.timedelta(seconds=run.data.max_run_time) + REFERENCE_GRACE
        # The queue refuses artifacts outliving their task, and the link replacing it must not expire earlier.
        return min(expiry, run.expires)

    def _backing_url(self) -> str | None:
        """The queue's URL of the backing log artifact, where late readers go once the file is gone."""
        run = self.run
        backing = run.data.logs.backing
        if not backing:
            return None
        root = str(run.worker.config.rootURL).rstrip("/")
        return f"{root}/api/queue/v1/task/{run.task_id}/runs/{run.run_id}/artifacts/{quote(backing, safe='/')}"

    async def start(self) -> None:
        run = self.run
        name = live_log_name(run)
        if name is None:
            return
        if not await self.feature.server.ensure_started():
            run.log.warn(f"Could not start live log: {self.feature.start_error}")
            return
        # generic-worker copies the log so far into livelog, then tees: flush so the file holds it all.
        run.log.flush()
        try:
            fd = os.open(run.log.path, os.O_RDONLY)  # a local file the worker just wrote: no thread hop
        except OSError as exc:
            run.log.warn(f"Could not start live log: cannot read the task log: {exc}")
            return
        stream = LiveStream(
            secrets.token_urlsafe(32),
            fd,
            run.log.bytes_written,
            asyncio.get_running_loop(),
            path=run.log.path,
            artifact_url=self._backing_url(),
        )
        self.stream = stream
        self.feature.server.register(stream)
        run.log.add_sink(stream.append)
        self.url = f"{self.feature.base_url()}/log/{stream.secret}"
        self._delay = asyncio.get_running_loop().call_later(REFERENCE_DELAY, self._begin_reference, name, self.url)

    def _begin_reference(self, name: str, url: str) -> None:
        """:data:`REFERENCE_DELAY` of run time is over: from here on stop() waits for the reference (the
        final link must come after it)."""
        self._delay = None
        self._reference = asyncio.create_task(self._publish_reference(name, url))

    async def _publish_reference(self, name: str, url: str) -> None:
        """The live log name becomes a reference to the stream."""
        run = self.run
        try:
            await run.publisher().reference(
                run.task_id, run.run_id, name, url, LOG_CONTENT_TYPE, self._reference_expiry()
            )
        except ExecutionError as exc:
            run.log.warn(f"Could not publish live log artifact {name}: {exc.message}")

    async def stop(self, errors: ExecutionErrors) -> None:
        delay, self._delay = self._delay, None
        if delay is not None:
            delay.cancel()  # still waiting out the delay: no request was sent
        reference, self._reference = self._reference, None
        if reference is not None:
            await reference
        if self.stream is not None:
            # The core writes its last lines (first error) after the features stop: keep streaming until the
            # task log is closed, then serve the finished log for a while.
            self.run.log.when_closed(functools.partial(self._finished, self.stream))

    def _finished(self, stream: LiveStream) -> None:
        """The task log is closed: every byte is in the file."""
        self.run.log.remove_sink(stream.append)
        stream.finish(self.run.log.bytes_written)
        if _on_loop(stream.loop):
            self.feature.retire(stream, stream.loop)
        else:  # a log closed from a thread (a crashed runner's cleanup)
            stream.loop.call_soon_threadsafe(self.feature.retire, stream, stream.loop)
