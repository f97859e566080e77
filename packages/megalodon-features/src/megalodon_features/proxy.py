"""taskcluster-proxy: an in-process HTTP proxy that signs a task's API calls with the task's credentials.

generic-worker and docker-worker run the ``taskcluster-proxy`` binary (or container) per task and PUT fresh
credentials to it after each reclaim.  Here each task gets its own aiohttp server inside the worker, so a
reclaim simply swaps the credentials the next request is signed with (:meth:`TaskRun.on_credentials`).

What tasks see is taskcluster-proxy's interface:

- ``<proxy>/<service>/<version>/<path>`` and ``<proxy>/api/<service>/<version>/<path>`` are forwarded to
  ``<rootURL>/api/<service>/<version>/<path>`` (query string kept, raw path not re-encoded), signed with Hawk
  using the task's current temporary credentials and ``authorizedScopes`` = the task's scopes plus
  ``queue:create-artifact:<taskId>/<runId>``, so a task can do exactly what its scopes allow and no more;
- redirects are passed back, not followed; connection errors and 5xx answers are retried with backoff;
- ``POST <proxy>/bewit`` with a URL as body answers 303 with the URL signed for one hour (a bewit);
- response headers ``X-Taskcluster-Endpoint``, ``X-Taskcluster-Proxy-Temp-ClientId`` (or ``-Perm-ClientId``),
  ``X-Taskcluster-Proxy-Temp-Scopes`` and ``X-Taskcluster-Authorized-Scopes`` as the Go proxy sets them.

Secrets read through the proxy (``GET .../secrets/v1/secret/<name>``) are masked in the task log: every string
of at least 6 characters in the response's ``secret`` is registered with the task log *before* the response
reaches the task, so the task cannot print a value the log does not yet hide.

Where the proxy listens is the executor's answer, ``run.data.proxy`` (a
:class:`~megalodon_core.rundata.ProxyPlacement` set in its ``prepare``); the feature never asks which executor
it is.  An executor that sets none gets malformed-payload from the pipeline for tasks requesting the proxy.

- a shared address (``exact_port`` False; native: 127.0.0.1, or docker's default bridge gateway for
  ``taskclusterProxyInterface: docker-bridge``): port ``taskclusterProxyPort`` or, when another task of this
  worker (or another process) holds it, the next free port above it.  generic-worker hands each task slot
  its own port from the same base; a worker-wide set of ports in use plus a bind retry gives the same "base
  port first, never a clash" result without knowing slots.  Port 0 means an ephemeral port picked by the kernel.
- an address of the run's own (``exact_port`` True; docker: the gateway of the task container's own network,
  port 80, which the container resolves as ``taskcluster``): exactly that port, and ``TASKCLUSTER_PROXY_URL``
  is the placement's ``url`` (``http://taskcluster``, as on docker-worker).

Who may connect is the placement's too, because the proxy signs for whoever reaches it: with
``allowed_uids`` (multiuser: the task user) a loopback connection is answered only when the kernel's socket
tables say the connecting socket belongs to one of those uids (generic-worker's ``--allowed-user``); with
``allowed_sources`` (docker: the task's own network) only connections from that network, never from its
gateway (the host), are answered (:mod:`megalodon_features.peer`).  Anyone else gets 403 and nothing is signed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import logging
import re
import socket
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import mohawk
import mohawk.base
import mohawk.bewit
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from megalodon_core.contracts import Feature, TaskFeature
from megalodon_core.errors import InternalError

from .peer import peer_uid, source_allowed

if TYPE_CHECKING:
    from megalodon_core.errors import ExecutionErrors
    from megalodon_core.rundata import ProxyPlacement, RunDataField
    from megalodon_core.task import TaskRun
    from megalodon_core.worker_context import WorkerContext

log = logging.getLogger(__name__)

PROXY_VERSION = "megalodon"
#: Ports tried above ``taskclusterProxyPort`` before giving up (generic-worker allows 255 task slots).
PORT_ATTEMPTS = 256
#: Request bodies above this are refused (Taskcluster API bodies are small JSON documents).
MAX_BODY = 16 << 20
#: Secret responses are parsed in memory to find values to mask; larger ones are refused rather than leaked.
MAX_SECRET_BODY = 16 << 20
UPSTREAM_ATTEMPTS = 5
BEWIT_LIFETIME = 3600
CHUNK = 64 << 10
MIN_SECRET_LENGTH = 6
DOCKER_PROXY_PORT = 80

_HOSTNAME = re.compile(
    r"^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])$"
)
_API_PATH = re.compile(r"^/api/(?P<service>[^/]*)/(?P<version>[^/]*)/(?P<path>.*)$")
#: Not forwarded in either direction: they describe one hop, not the request.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


class ProxyError(Exception):
    """A request the proxy answers itself, with ``status`` and a plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def route(raw_path: str, root_url: str) -> tuple[str, str, str, str]:
    """Map a proxy request path (with query) to ``(target URL, service, version, path)``, as
    taskcluster-proxy's ``APIHandler``/``ConvertPath``; raise :class:`ProxyError` (404) otherwise."""
    path, sep, query = raw_path.partition("?")
    suffix = f"?{query}" if sep else ""
    root = root_url.rstrip("/")
    if path.startswith("/api"):
        m = _API_PATH.match(path)
        if m is None:
            raise ProxyError(404, "invalid /api path")
        service, version, rest = m["service"], m["version"], m["path"]
    else:
        service, _, tail = path.lstrip("/").partition("/")
        if not _HOSTNAME.match(service):
            raise ProxyError(404, f"Unkown taskcluster service: {service} is not a valid taskcluster service")
        if "." in service:
            # The Go proxy forwards "/<host>/..." to https://<host>/ with the task's signature and certificate;
            # sending task credentials to arbitrary hosts is not something megalodon does.
            raise ProxyError(
                404,
                f"Unkown taskcluster service: {service} (forwarding to hosts other than the root URL is not "
                "supported by megalodon's taskcluster-proxy)",
            )
        version, _, rest = tail.partition("/")
    return f"{root}/api/{service}/{version}/{rest}{suffix}", service, version, rest


def hawk_ext(credentials: dict[str, str], authorized_scopes: list[str]) -> str:
    """The Hawk ``ext`` the taskcluster clients send: certificate (temporary credentials) and scopes."""
    ext: dict[str, Any] = {"authorizedScopes": authorized_scopes}
    cert = credentials.get("certificate")
    if cert:
        ext["certificate"] = json.loads(cert)
    raw = base64.b64encode(json.dumps(ext, separators=(",", ":")).encode()).decode()
    return raw.replace("+", "-").replace("/", "_")


def secret_strings(value: Any) -> Iterator[str]:
    """Every string in a secret's JSON value (recursively), as the task may print it."""
    if isinstance(value, str):
        yield value
        escaped = json.dumps(value)[1:-1]
        if escaped != value:
            yield escaped  # the form a task printing the raw response shows
    elif isinstance(value, dict):
        for item in value.values():
            yield from secret_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from secret_strings(item)


def _decode_body(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported content encoding {encoding!r}")


def _freebind_socket(host: str, port: int) -> socket.socket:
    """A listening IPv4 socket on ``host:port`` that may be bound before ``host`` is a local address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TaskclusterProxy:
    """One task's proxy server; ``credentials`` may be swapped at any time (the next request uses them)."""

    def __init__(
        self,
        root_url: str,
        credentials: dict[str, str],
        authorized_scopes: list[str],
        session: aiohttp.ClientSession,
        on_secret: Any = None,
    ) -> None:
        self.root_url = root_url
        self.credentials = dict(credentials)
        self.authorized_scopes = list(authorized_scopes)
        self.session = session
        self.on_secret = on_secret
        self.host = ""
        self.port = 0
        self.retry_delay = 0.1
        #: Who may use this proxy (the run's ProxyPlacement): the uids owning a connecting loopback socket,
        #: and the networks a connection may come from.  None / empty: not restricted that way.
        self.allowed_uids: frozenset[int] | None = None
        self.allowed_sources: tuple[str, ...] = ()
        self._runner: web.ServerRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def listen(self, host: str, port: int) -> None:
        runner = web.ServerRunner(web.Server(self._handle), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                # podman (netavark) creates a network's bridge, and so its gateway address, only when the
                # first container joins it: bind the address before it exists (IP_FREEBIND); connections
                # arrive once the task container has brought the bridge up.
                await web.SockSite(runner, _freebind_socket(host, port)).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def listening(self) -> bool:
        return self._runner is not None

    # -- signing ------------------------------------------------------------------------------------------
    def _hawk_credentials(self) -> dict[str, str]:
        return {"id": self.credentials["clientId"], "key": self.credentials["accessToken"], "algorithm": "sha256"}

    def sign(self, url: str, method: str, body: bytes, content_type: str) -> str:
        """An ``Authorization`` header for one request (fresh nonce and timestamp each call)."""
        sender = mohawk.Sender(
            credentials=self._hawk_credentials(),
            ext=hawk_ext(self.credentials, self.authorized_scopes),
            url=url,
            method=method,
            content=body,
            content_type=content_type,
        )
        return str(sender.request_header)

    def bewit_url(self, url: str, lifetime: int = BEWIT_LIFETIME) -> str:
        """``url`` with a ``bewit`` query parameter, as the taskcluster clients' ``buildSignedUrl``."""
        resource = mohawk.base.Resource(
            credentials=self._hawk_credentials(),
            method="GET",
            ext=hawk_ext(self.credentials, self.authorized_scopes),
            url=url,
            timestamp=int(time.time()) + lifetime,
            nonce="",
        )
        bewit = str(mohawk.bewit.get_bewit(resource)).rstrip("=")
        return str(URL(url, encoded=True).update_query({"bewit": bewit}))

    def identity_headers(self) -> dict[str, str]:
        headers = {"X-Taskcluster-Proxy-Version": PROXY_VERSION}
        cert = self.credentials.get("certificate")
        if cert:
            headers["X-Taskcluster-Proxy-Temp-ClientId"] = self.credentials["clientId"]
            with contextlib.suppress(ValueError, TypeError, KeyError):
                headers["X-Taskcluster-Proxy-Temp-Scopes"] = json.dumps(json.loads(cert)["scopes"])
        else:
            headers["X-Taskcluster-Proxy-Perm-ClientId"] = self.credentials["clientId"]
        headers["X-Taskcluster-Authorized-Scopes"] = json.dumps(self.authorized_scopes)
        return headers

    # -- serving ------------------------------------------------------------------------------------------
    async def _refusal(self, request: web.BaseRequest) -> str | None:
        """Why this connection may not use the proxy, or None: it signs with the task's credentials, so only
        the task's own OS user (multiuser) or container (docker) may (generic-worker's ``--allowed-user``)."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        local = request.transport.get_extra_info("sockname") if request.transport else None
        if not peer or not local:
            return "the connection's addresses are unknown"
        in_network = bool(self.allowed_sources) and source_allowed(str(peer[0]), self.allowed_sources, self.host)
        if self.allowed_uids is None:
            return None if in_network else f"connections from {peer[0]} are not allowed"
        uid = await asyncio.to_thread(peer_uid, (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1])))
        if uid is None:
            # Not in this network namespace's tables: a container's socket (generic-worker's --allowed-network
            # fallback), admitted only from the allowed networks.
            return None if in_network else "only the task's own user may use its taskcluster-proxy"
        if uid == 0 or uid in self.allowed_uids:  # root: the worker itself, as generic-worker's verifier
            return None
        return "only the task's own user may use its taskcluster-proxy"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.allowed_uids is not None or self.allowed_sources:
            refused = await self._refusal(request)
            if refused is not None:
                log.warning("taskcluster-proxy on %s:%s refused a connection: %s", self.host, self.port, refused)
                return web.Response(status=403, text=f"Forbidden: {refused}\n")
        headers = self.identity_headers()
        try:
            path = request.raw_path
            if path.startswith("/bewit"):
                return await self._bewit(request, headers)
            if path.startswith("/credentials"):
                raise ProxyError(
                    403,
                    "megalodon refreshes the proxy's credentials itself after each reclaim; "
                    "/credentials is not available to tasks",
                )
            target, service, _version, rest = route(path, self.root_url)
            headers["X-Taskcluster-Endpoint"] = target
            is_secret = request.method == "GET" and service == "secrets" and rest.startswith("secret/")
            return await self._forward(request, target, headers, is_secret)
        except ProxyError as exc:
            return web.Response(status=exc.status, text=exc.message, headers=headers)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        body = bytearray()
        while chunk := await request.content.read(CHUNK):
            body += chunk
            if len(body) > MAX_BODY:
                raise ProxyError(413, f"Request body larger than {MAX_BODY} bytes")
        return bytes(body)

    async def _bewit(self, request: web.BaseRequest, headers: dict[str, str]) -> web.StreamResponse:
        url = (await self._read_body(request)).decode(errors="replace").strip()
        parsed = URL(url, encoded=True)
        root = URL(self.root_url)
        if not parsed.is_absolute() or (parsed.scheme, parsed.host, parsed.port) != (root.scheme, root.host, root.port):
            raise ProxyError(400, f"Error creating bewit url: {url!r} is not a URL under {self.root_url}")
        signed = self.bewit_url(url)
        headers["Location"] = signed
        return web.Response(status=303, text=signed, headers=headers)

    async def _forward(
        self, request: web.BaseRequest, target: str, headers: dict[str, str], is_secret: bool
    ) -> web.StreamResponse:
        body = await self._read_body(request)
        upstream_headers: CIMultiDict[str] = CIMultiDict()
        for key, value in request.headers.items():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "authorization":
                upstream_headers.add(key, value)
        if "Content-Type" not in upstream_headers and body:
            upstream_headers["Content-Type"] = "application/json"  # as taskcluster-proxy (#3521)
        if is_secret:
            upstream_headers["Accept-Encoding"] = "identity"  # the body must be readable to mask it
        content_type = upstream_headers.get("Content-Type", "")
        url = URL(target, encoded=True)
        log.debug("proxying %s %s -> %s", request.method, request.raw_path, target)
        for attempt in range(1, UPSTREAM_ATTEMPTS + 1):
            upstream_headers["Authorization"] = self.sign(target, request.method, body, content_type)
            try:
                upstream = await self.session.request(
                    request.method,
                    url,
                    data=body if body else None,
                    headers=upstream_headers,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == UPSTREAM_ATTEMPTS:
                    raise ProxyError(500, f"Failed during proxy request: {exc}") from exc
            else:
                if upstream.status < 500 or attempt == UPSTREAM_ATTEMPTS:
                    try:
                        return await self._respond(request, upstream, headers, is_secret)
                    finally:
                        upstream.release()
                upstream.release()
            await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _respond(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, headers: dict[str, str], is_secret: bool
    ) -> web.StreamResponse:
        out: CIMultiDict[str] = CIMultiDict()
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_BY_HOP:
                out.add(key, value)
        out.update(headers)
        if is_secret and upstream.status == 200:
            data = await self._secret_body(upstream)
            return web.Response(status=upstream.status, body=data, headers=out)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        elif request.method != "HEAD" and upstream.status not in (204, 304):
            response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _secret_body(self, upstream: aiohttp.ClientResponse) -> bytes:
        """Read a secret response whole and register its values with the task log before passing it on."""
        body = bytearray()
        async for chunk in upstream.content.iter_chunked(CHUNK):
            body += chunk
            if len(body) > MAX_SECRET_BODY:
                raise ProxyError(502, "secret too large for taskcluster-proxy to mask it in the task log")
        try:
            decoded = _decode_body(bytes(body), upstream.headers.get("Content-Encoding", ""))
            document = json.loads(decoded)
        except ValueError as exc:
            # Never hand over a secret the log cannot hide.
            raise ProxyError(502, f"could not read the secrets service's answer to mask it: {exc}") from exc
        if isinstance(document, dict) and self.on_secret is not None:
            for value in secret_strings(document.get("secret")):
                if len(value) >= MIN_SECRET_LENGTH:
                    self.on_secret(value)
        return bytes(body)


class TaskclusterProxyFeature(Feature):
    """Worker-lifetime half: the config gate, the ports in use by running tasks and the upstream session."""

    name: ClassVar[str] = "taskclusterProxy"
    #: The executor says where the task's processes reach the proxy (``run.data.proxy``).
    needs: ClassVar[tuple[RunDataField, ...]] = ("proxy",)

    def __init__(self, worker: WorkerContext) -> None:
        super().__init__(worker)
        self.ports_in_use: set[tuple[str, int]] = set()
        self._session: aiohttp.ClientSession | None = None

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableTaskclusterProxy)

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return TaskclusterProxyTask(self, run)

    def session(self) -> aiohttp.ClientSession:
        """The upstream session: no automatic decompression, so bodies and ``Content-Encoding`` pass as sent."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300),
            )
        return self._session

    async def bind(self, proxy: TaskclusterProxy, host: str, base: int) -> None:
        """Listen on ``host`` at ``base`` or the next port free on this worker and host (0: ephemeral)."""
        if base == 0:
            await proxy.listen(host, 0)
            self.ports_in_use.add((host, proxy.port))
            return
        last: OSError | None = None
        for port in range(base, min(base + PORT_ATTEMPTS, 65536)):
            if (host, port) in self.ports_in_use:
                continue
            try:
                await proxy.listen(host, port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                last = exc
                continue
            self.ports_in_use.add((host, port))
            return
        raise last or OSError(errno.EADDRINUSE, f"no free port from {base}")

    def release(self, host: str, port: int) -> None:
        self.ports_in_use.discard((host, port))

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TaskclusterProxyTask(TaskFeature):
    """One task's proxy: started before the commands, refreshed on reclaim, closed after them."""

    def __init__(self, feature: TaskclusterProxyFeature, run: TaskRun) -> None:
        self.feature = feature
        self.run = run
        self.proxy: TaskclusterProxy | None = None
        self.stopped = False

    def authorized_scopes(self) -> list[str]:
        run = self.run
        return [*run.scopes, f"queue:create-artifact:{run.task_id}/{run.run_id}"]

    def _placement(self) -> ProxyPlacement:
        placement = self.run.data.proxy
        if placement is None:  # the pipeline checks ``needs`` before start: only a direct caller gets here
            raise InternalError("taskcluster-proxy: the executor gave no proxy placement (run.data.proxy)")
        return placement

    async def start(self) -> None:
        run = self.run
        placement = self._placement()
        host, base, url = placement.host, placement.port, placement.url
        proxy = TaskclusterProxy(
            run.worker.root_url,
            run.credentials,
            self.authorized_scopes(),
            self.feature.session(),
            on_secret=run.log.add_secret,
        )
        proxy.allowed_uids = placement.allowed_uids
        proxy.allowed_sources = placement.allowed_sources
        try:
            if placement.exact_port:  # an address of the run's own (a container network): that very port
                await proxy.listen(host, base)
            else:
                await self.feature.bind(proxy, host, base)
        except OSError as exc:
            raise InternalError(f"could not start taskcluster proxy on port {base}: {exc}") from exc
        self.proxy = proxy
        if url:
            run.data.env["TASKCLUSTER_PROXY_URL"] = url
        else:
            shown = f"[{host}]" if ":" in host else host
            run.data.env["TASKCLUSTER_PROXY_URL"] = f"http://{shown}:{proxy.port}"
        run.on_credentials(self._refresh)

    def _refresh(self, credentials: dict[str, str]) -> None:
        if self.stopped or self.proxy is None:
            return
        self.proxy.credentials = dict(credentials)
        if not self.run.log.closed:
            self.run.log.info(
                f"[taskcluster-proxy] Successfully refreshed taskcluster-proxy credentials: {credentials['clientId']}"
            )

    async def stop(self, errors: ExecutionErrors) -> None:
        self.stopped = True
        proxy, self.proxy = self.proxy, None
        if proxy is None:
            return
        try:
            await proxy.close()
        except Exception as exc:
            self.run.log.warn(f"[taskcluster-proxy] Could not terminate taskcluster proxy process: {exc}")
        finally:
            self.feature.release(proxy.host, proxy.port)
