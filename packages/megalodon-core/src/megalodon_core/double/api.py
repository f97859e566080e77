"""Routing and the per-request pipeline shared by every emulated service.

The pipeline follows taskcluster-lib-api's order so that error precedence
matches production: URL parameter patterns, authentication, scope checks that
need only URL parameters ("403 before 404"), body schema, then the handler
(which performs any scope check needing task or body data itself).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .auth import ANONYMOUS, Authenticator, Identity
from .errors import TaskclusterError, error_response, json_response
from .faults import CallCounter, FaultSet
from .schemas import SLUGID, validate
from .scopes import expand, insufficient_message, satisfies, template_params

Handler = Callable[["Call"], Awaitable[Any]]

#: URL parameter patterns (regex, and the JS-literal form quoted in error messages).
PARAM_PATTERNS: dict[str, tuple[str, str]] = {
    "taskId": (SLUGID, f"/{SLUGID}/"),
    "taskGroupId": (SLUGID, f"/{SLUGID}/"),
    "runId": (r"^[1-9]*[0-9]+$", "/^[1-9]*[0-9]+$/"),
    "name": ("^[\x20-\x7e]+$", r"/^[\x20-\x7e]+$/"),
    "taskQueueId": (
        "^[a-zA-Z0-9-_]{1,38}/[a-z]([-a-z0-9]{0,36}[a-z0-9])?$",
        "/^[a-zA-Z0-9-_]{1,38}\\/[a-z]([-a-z0-9]{0,36}[a-z0-9])?$/",
    ),
}

#: Route parameters allowed to swallow raw ``/`` (clients normally send them as ``%2F``).
GREEDY_PARAMS = {"name", "indexPath", "namespace"}

FAULT_CODES = {
    400: "InputError",
    401: "AuthenticationFailed",
    403: "InsufficientScopes",
    404: "ResourceNotFound",
    409: "RequestConflict",
    410: "ResourceExpired",
}


@dataclass
class Endpoint:
    service: str
    name: str
    method: str
    route: str
    handler: Handler
    scopes: Any = None
    schema: dict[str, Any] | None = None
    schema_file: str | None = None
    regex: re.Pattern[str] = field(init=False)
    url_only_scopes: bool = field(init=False)

    def __post_init__(self) -> None:
        parts = []
        names = re.findall(r"<([a-zA-Z0-9_]+)>", self.route)
        for piece in re.split(r"(<[a-zA-Z0-9_]+>)", self.route):
            if piece.startswith("<"):
                pname = piece[1:-1]
                body = ".+" if pname in GREEDY_PARAMS and pname == names[-1] else "[^/]+"
                parts.append(f"(?P<{pname}>{body})")
            else:
                parts.append(re.escape(piece))
        self.regex = re.compile("".join(parts))
        self.url_only_scopes = self.scopes is not None and template_params(self.scopes) <= set(names)


@dataclass
class Call:
    """One authenticated API request as seen by a handler."""

    endpoint: Endpoint
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    identity: Identity
    request: web.Request

    def authorize(self, **extra: Any) -> None:
        """Check the endpoint's scope template, filled with URL params plus ``extra``."""
        if self.endpoint.scopes is None:
            return
        expr = expand(self.endpoint.scopes, {**self.params, **extra})
        if not satisfies(self.identity.scopes, expr):
            raise TaskclusterError(
                "InsufficientScopes",
                insufficient_message(self.identity.client_id, self.identity.scopes, expr),
            )


class Api:
    """Owns the route table and runs the request pipeline."""

    def __init__(self, auth: Authenticator, faults: FaultSet, calls: CallCounter) -> None:
        self.auth = auth
        self.faults = faults
        self.calls = calls
        self.root_url = ""
        self._routes: dict[tuple[str, str], list[Endpoint]] = {}

    def add(self, endpoint: Endpoint) -> None:
        self._routes.setdefault((endpoint.service, endpoint.method), []).append(endpoint)

    def match(self, service: str, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        for ep in self._routes.get((service, method), []):
            m = ep.regex.fullmatch(path)
            if m:
                return ep, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None

    async def apply_fault(self, method: str | None, request: web.Request) -> web.StreamResponse | None:
        """Count the call and act out a matching fault; a response means "answer with this"."""
        if method is not None:
            self.calls[method] += 1
        fault = self.faults.take(method, request.raw_path)
        if fault is None:
            return None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hold is not None:
            await fault.hold.wait()
        if fault.reset:
            # Abort (RST) rather than close: the client sees a reset, not a clean EOF. The
            # response returned below can no longer be written and is dropped by aiohttp.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault.status is not None:
            code = FAULT_CODES.get(fault.status, "InternalServerError")
            err = TaskclusterError(code, f"Injected fault ({fault.status})", fault.status)
            return error_response(err, method or "unknown", {}, {})
        return None

    async def handle(self, request: web.Request, service: str, path: str) -> web.StreamResponse:
        found = self.match(service, request.method, path)
        method_name = found[0].name if found else None
        faulted = await self.apply_fault(method_name, request)
        if faulted is not None:
            return faulted
        if found is None:
            err = TaskclusterError("ResourceNotFound", f"No such API endpoint: {request.method} {path}")
            return error_response(err, "unknown", {}, {})
        endpoint, params = found
        raw = await request.read()
        payload: Any = None
        try:
            if raw:
                try:
                    payload = json.loads(raw)
                except ValueError as exc:
                    raise TaskclusterError("MalformedPayload", "Failed to parse JSON payload") from exc
            return await self._run(endpoint, params, payload, raw, request)
        except TaskclusterError as err:
            return error_response(err, endpoint.name, params, payload)

    async def _run(
        self, ep: Endpoint, params: dict[str, str], payload: Any, raw: bytes, request: web.Request
    ) -> web.StreamResponse:
        bad = []
        for pname, value in params.items():
            if pname in PARAM_PATTERNS and not re.search(PARAM_PATTERNS[pname][0], value):
                bad.append(
                    f"URL parameter '{pname}' given as '{value}' must match regular expression: "
                    f"'{PARAM_PATTERNS[pname][1]}'"
                )
        if bad:
            raise TaskclusterError("InvalidRequestArguments", "Invalid URL patterns:\n" + "\n".join(bad))
        identity = ANONYMOUS
        if ep.scopes is not None:
            url = f"{request.scheme}://{request.host}{request.raw_path}"
            identity = self.auth.authenticate(
                request.headers.get("Authorization"),
                url,
                request.method,
                raw,
                request.headers.get("Content-Type", ""),
            )
        call = Call(ep, params, dict(request.query), payload, identity, request)
        if ep.url_only_scopes:
            call.authorize()
        if ep.schema is not None:
            schema_url = f"{self.root_url}/schemas/{ep.service}/{ep.schema_file}"
            validate(ep.schema, schema_url, payload if payload is not None else {})
        result = await ep.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        return json_response(result)
