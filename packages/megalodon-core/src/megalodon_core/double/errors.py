"""Taskcluster-shaped error responses.

Every Taskcluster service answers errors with ``{code, message, requestInfo}``
and appends a fixed-format trailer to ``message``; the Python client surfaces
``message`` verbatim, so tests that print or match it see the real wording.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .timeutil import iso, now

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

STATUS_BY_CODE: dict[str, int] = {
    "MalformedPayload": 400,
    "InvalidRequestArguments": 400,
    "InputValidationError": 400,
    "InputError": 400,
    "AuthenticationFailed": 401,
    "InsufficientScopes": 403,
    "ResourceNotFound": 404,
    "NoMatchingMethod": 406,
    "RequestConflict": 409,
    "ResourceExpired": 410,
    "InputTooLarge": 413,
    "InternalServerError": 500,
}


class TaskclusterError(Exception):
    """Raised by handlers; the dispatcher turns it into the standard error body."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 500)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON response with the exact content-type the real services send."""
    text = json.dumps(body, separators=(",", ":"))
    resp = web.Response(text=text, status=status, headers=headers)
    resp.content_type = "application/json"
    resp.charset = "utf-8"
    return resp


def error_response(
    err: TaskclusterError,
    method: str,
    params: dict[str, str],
    payload: Any,
) -> web.Response:
    """Build the response a real service gives for ``err`` raised in ``method``."""
    when = iso(now())
    trailer = (
        f"\n\n---\n\n* method:     {method}\n* errorCode:  {err.code}\n* statusCode: {err.status}\n* time:       {when}"
    )
    body = {
        "code": err.code,
        "message": err.message + trailer,
        "requestInfo": {
            "method": method,
            "params": params,
            "payload": payload if payload is not None else {},
            "time": when,
        },
    }
    return json_response(body, status=err.status)
