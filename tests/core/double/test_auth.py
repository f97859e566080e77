"""Hawk, certificates and scope expressions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble
from megalodon_core.double.scopes import expand, remove_given, satisfies

MIN = dt.timedelta(minutes=1)


def auth_client(double: TaskclusterDouble, creds: dict[str, str], **opts: Any) -> Any:
    return taskcluster.aio.Auth({"rootUrl": double.root_url, "credentials": creds, "maxRetries": 0, **opts})


async def status_code(coro: Any) -> int:
    try:
        await coro
    except (taskcluster.exceptions.TaskclusterRestFailure, taskcluster.exceptions.TaskclusterAuthFailure) as err:
        return int(err.status_code)
    return 200


async def test_root_and_clients(double: TaskclusterDouble) -> None:
    assert (await auth_client(double, double.root_credentials).currentScopes())["scopes"] == ["*"]
    creds = double.add_client("project/me", "secret-token", ["auth:current-scopes", "x:y"])
    # every client also holds assume:anonymous, as the real service answers (transcripts/auth-current-scopes.json)
    assert (await auth_client(double, creds).currentScopes())["scopes"] == [
        "assume:anonymous",
        "auth:current-scopes",
        "x:y",
    ]
    wrong = {**creds, "accessToken": "nope"}
    with pytest.raises(taskcluster.exceptions.TaskclusterAuthFailure, match="Bad mac"):
        await auth_client(double, wrong).currentScopes()
    unknown = {"clientId": "nobody", "accessToken": "x"}
    with pytest.raises(taskcluster.exceptions.TaskclusterAuthFailure, match="not found"):
        await auth_client(double, unknown).currentScopes()
    assert await status_code(auth_client(double, {}).currentScopes()) == 403


@pytest.mark.parametrize(
    ("start", "expiry", "expected"),
    [
        (-10 * MIN, 10 * MIN, 200),
        (-10 * MIN, -4 * MIN, 200),  # within the 5 minute grace
        (-10 * MIN, -6 * MIN, 401),  # ext.certificate.expiry < now
        (6 * MIN, 10 * MIN, 401),  # ext.certificate.start > now
    ],
)
async def test_certificate_validity_window(
    double: TaskclusterDouble, start: dt.timedelta, expiry: dt.timedelta, expected: int
) -> None:
    # Relative to the moment the test runs, not to import time: a long suite must not shift the window.
    now = dt.datetime.now(dt.UTC)
    creds = double.temporary_credentials(["auth:current-scopes"], now + start, now + expiry)
    assert await status_code(auth_client(double, creds).currentScopes()) == expected


async def test_client_minted_certificates(double: TaskclusterDouble) -> None:
    """Certificates made by the real client library (named and unnamed) verify."""
    root = double.root_credentials
    now = dt.datetime.now(dt.UTC)
    start, expiry = now - MIN, now + 10 * MIN
    unnamed = taskcluster.createTemporaryCredentials(
        root["clientId"], root["accessToken"], start, expiry, ["auth:current-scopes"]
    )
    assert (await auth_client(double, unnamed).currentScopes())["scopes"] == ["assume:anonymous", "auth:current-scopes"]
    named = taskcluster.createTemporaryCredentials(
        root["clientId"], root["accessToken"], start, expiry, ["auth:current-scopes", "a:b"], name="my/name"
    )
    assert (await auth_client(double, named).currentScopes())["scopes"] == [
        "a:b",
        "assume:anonymous",
        "auth:current-scopes",
    ]
    cert = named["certificate"]
    cert = cert.decode() if isinstance(cert, bytes) else cert
    forged = {**named, "certificate": cert.replace('"a:b"', '"*"')}
    assert await status_code(auth_client(double, forged).currentScopes()) == 401
    narrowed = auth_client(double, root, authorizedScopes=["auth:current-scopes"])
    # assume:anonymous is added back after the restriction, as the real service does
    assert (await narrowed.currentScopes())["scopes"] == ["assume:anonymous", "auth:current-scopes"]


async def test_insufficient_scopes_wording(double: TaskclusterDouble) -> None:
    creds = double.add_client("project/limited", "tok", ["queue:get-task:abc*"])
    queue = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": creds, "maxRetries": 0})
    task_id = taskcluster.slugId()
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await queue.status(task_id)
    assert err.value.status_code == 403  # 403 before 404: the scope only needs URL parameters
    assert err.value.body["code"] == "InsufficientScopes"
    assert f"missing the following scopes:\n\n```\nqueue:status:{task_id}\n```" in err.value.body["message"]


def test_scope_expressions() -> None:
    assert satisfies(["queue:*"], "queue:claim-work:a/b")
    assert not satisfies(["queue:claim-work:a/b*"], "queue:claim-work:a/c")
    expr = expand(
        {"AllOf": [{"each": "s:<x>", "for": "x", "in": "xs"}, {"AnyOf": ["p:<a>", "q:<a>"]}]},
        {"xs": ["1", "2"], "a": "A"},
    )
    assert expr == {"AllOf": ["s:1", "s:2", {"AnyOf": ["p:A", "q:A"]}]}
    assert satisfies(["s:*", "q:A"], expr)
    assert remove_given(["s:1"], expr) == {"AllOf": ["s:2", {"AnyOf": ["p:A", "q:A"]}]}
    assert remove_given(["s:*"], {"AllOf": ["s:1", "t"]}) == "t"
