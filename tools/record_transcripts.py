"""Record the auth and queue exchanges the double must reproduce, against the REAL Taskcluster services.

Not part of CI: run it by hand against a deployment (``../shared/tools/real-taskcluster/``)::

    . /tmp/real-tc/env && .venv/bin/python tools/record_transcripts.py [--out tests/core/double/transcripts]

It writes one JSON file per interaction family in the format of
``../shared/reference/taskcluster-api/README.md`` (``{title, notes, steps}``; access tokens redacted, host
``<rootUrl>``), which ``tests/core/double/test_transcripts.py`` replays against the double.  Every
name it creates carries a fresh tag, so running it again never collides with an earlier recording.

Why these exchanges: the worker expands a task's ``assume:`` scopes through ``auth.expandScopes`` (feature
scopes, docker capabilities, runTaskAsCurrentUser), reads ``auth.currentScopes``, creates
``reference``/``link`` artifacts (live log, interactive shell) and reports a cancelled run.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import slugid
import taskcluster
import taskcluster.utils

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "tests" / "core" / "double" / "transcripts"
REDACT_KEYS = {"accessToken", "secret", "staticSecret"}


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in REDACT_KEYS and isinstance(v, str) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def hawk_auth(headers: dict[str, str]) -> dict[str, Any] | None:
    header = headers.get("Authorization")
    if not header:
        return None
    found = re.search(r'id="([^"]*)"', header)
    auth: dict[str, Any] = {"scheme": "hawk", "clientId": found.group(1) if found else "?"}
    ext = re.search(r'ext="([^"]*)"', header)
    if ext:
        decoded = json.loads(base64.b64decode(ext.group(1) + "==").decode())
        if "certificate" in decoded:
            auth["temporaryCredentials"] = True
            # Not in the shared format: the replay mints equivalent credentials from these scopes.
            cert = decoded["certificate"]
            auth["certificateScopes"] = (json.loads(cert) if isinstance(cert, str) else cert)["scopes"]
        if "authorizedScopes" in decoded:
            auth["authorizedScopes"] = decoded["authorizedScopes"]
    return auth


class Recorder:
    """Wraps the sync client's single-request function; each call becomes one transcript step."""

    def __init__(self, root_url: str) -> None:
        self.root_url = root_url.rstrip("/")
        self.steps: list[dict[str, Any]] = []
        self.note: str | None = None
        self._original: Callable[..., requests.Response] = taskcluster.utils.makeSingleHttpRequest

    def comment(self, text: str) -> None:
        self.steps.append({"call": "comment", "notes": text})

    def annotate(self, text: str) -> None:
        """The next recorded step gets ``notes``."""
        self.note = text

    def _request(
        self, method: str, url: str, payload: Any, headers: dict[str, str], session: Any = None
    ) -> requests.Response:
        headers = dict(headers)
        method_name = headers.pop("X-Megalodon-Method", "?")
        started = time.monotonic()
        response = self._original(method, url, payload, headers, session)
        elapsed = time.monotonic() - started
        split = urllib.parse.urlsplit(url)
        path = split.path + (f"?{split.query}" if split.query else "")
        service = path.split("/")[2]
        body: Any = None
        if payload:
            body = json.loads(payload)
        try:
            response_body: Any = response.json() if response.content else None
        except ValueError:
            response_body = response.text
        step: dict[str, Any] = {
            "call": f"{'workerManager' if service == 'worker-manager' else service}.{method_name}",
            "method": method.upper(),
            "host": "<rootUrl>",
            "path": path,
            "auth": hawk_auth(headers),
            "request_body": redact(body),
            "status": response.status_code,
            "response_headers": {
                k.lower(): v
                for k, v in response.headers.items()
                if k.lower() in ("content-type", "location") or k.lower().startswith("x-taskcluster-")
            },
            "response_body": redact(response_body),
            "elapsed_s": round(elapsed, 3),
            "client": "requests (sync taskcluster client)",
        }
        if self.note:
            step["notes"] = self.note
            self.note = None
        self.steps.append(step)
        return response

    @contextmanager
    def installed(self) -> Iterator[None]:
        taskcluster.utils.makeSingleHttpRequest = self._request
        try:
            yield
        finally:
            taskcluster.utils.makeSingleHttpRequest = self._original

    def write(self, out: Path, name: str, title: str, notes: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        doc = {"title": title, "notes": notes, "steps": self.steps}
        (out / name).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out / name} ({len(self.steps)} steps)")


def named_client(cls: Any, options: dict[str, Any]) -> Any:
    """A sync client whose every request carries its API method's name (for the transcript's ``call``)."""
    client = cls({**options, "maxRetries": 0})
    original = client._makeHttpRequest

    def wrapped(method: str, route: str, payload: Any) -> Any:
        frame = sys._getframe(2)  # _makeHttpRequest <- _makeApiCall <- the API method
        name = frame.f_code.co_name
        original_single: Callable[..., requests.Response] = taskcluster.utils.makeSingleHttpRequest

        def tagged(m: str, u: str, p: Any, h: dict[str, str], s: Any = None) -> requests.Response:
            return original_single(m, u, p, {**h, "X-Megalodon-Method": name}, s)

        taskcluster.utils.makeSingleHttpRequest = tagged
        try:
            return original(method, route, payload)
        finally:
            taskcluster.utils.makeSingleHttpRequest = original_single

    client._makeHttpRequest = wrapped
    return client


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call, keeping a refusal as a recorded step instead of an exception."""
    try:
        return fn(*args)
    except taskcluster.exceptions.TaskclusterRestFailure as exc:
        return exc


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def task_body(queue_id: str, scopes: list[str]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "taskQueueId": queue_id,
        "schedulerId": "reference-scheduler",
        "projectId": "reference-project",
        "created": iso(now),
        "deadline": iso(now + dt.timedelta(hours=1)),
        "expires": iso(now + dt.timedelta(days=1)),
        "retries": 5,
        "scopes": scopes,
        "payload": {"command": ["echo", "hello"], "maxRunTime": 600},
        "metadata": {
            "name": "megalodon transcript",
            "description": "recorded by tools/record_transcripts.py",
            "owner": "reference@example.com",
            "source": "https://example.com/reference",
        },
    }


# -- the recordings -------------------------------------------------------------------------------


def record_roles(root_opts: dict[str, Any], tag: str, out: Path) -> None:
    rec = Recorder(root_opts["rootUrl"])
    auth = named_client(taskcluster.Auth, root_opts)
    p = f"megalodon-ref/{tag}"
    with rec.installed():
        rec.annotate("A plain role whose scopes assume a second role (created later: roles may name missing roles).")
        auth.createRole(f"{p}/ci", {"description": "ci", "scopes": ["generic-worker:cache:ci", f"assume:{p}/base"]})
        rec.annotate("The role ci assumes: its expandedScopes now include ci's via the chain.")
        auth.createRole(f"{p}/base", {"description": "base", "scopes": ["docker-worker:capability:privileged"]})
        rec.annotate("A `*`-suffix role with a <..> parameter.")
        auth.createRole(
            f"{p}/repo:*",
            {"description": "repo", "scopes": ["generic-worker:cache:<..>", "queue:route:index.<..>.*", "repo-wide"]},
        )
        rec.annotate("Identical createRole again: 200, unchanged (idempotent).")
        auth.createRole(f"{p}/base", {"description": "base", "scopes": ["docker-worker:capability:privileged"]})
        rec.annotate("createRole of an existing roleId with other scopes: 409 RequestConflict.")
        call(auth.createRole, f"{p}/base", {"description": "base", "scopes": ["other:scope"]})
        rec.annotate("Only the description differs: also 409.")
        call(
            auth.createRole, f"{p}/base", {"description": "changed", "scopes": ["docker-worker:capability:privileged"]}
        )
        auth.role(f"{p}/ci")
        rec.annotate("A missing role: 404 ResourceNotFound.")
        call(auth.role, f"{p}/missing")
        rec.annotate("Recursive expansion through the assume: chain.")
        auth.expandScopes({"scopes": [f"assume:{p}/ci"]})
        rec.annotate("A `*`-suffix role: the parameter replaces <..>.")
        auth.expandScopes({"scopes": [f"assume:{p}/repo:github.com/org/x"]})
        rec.annotate("A `*` scope covering several roles.")
        auth.expandScopes({"scopes": [f"assume:{p}/*"]})
        rec.annotate("A `*` scope short of a `*` role's prefix: the parameter is `*`.")
        auth.expandScopes({"scopes": [f"assume:{p}/re*"]})
        rec.annotate("Normalisation: covered scopes dropped, `*` scopes sorted before what they cover.")
        auth.expandScopes({"scopes": ["b:1", "a:x", "a:*", "c", "a:", f"assume:{p}/missing"]})
        rec.annotate("A duplicate scope: 400 InputValidationError (the scopeset schema says uniqueItems).")
        call(auth.expandScopes, {"scopes": ["b:1", "b:1"]})
        rec.annotate("An empty scopeset.")
        auth.expandScopes({"scopes": []})
        rec.annotate("Not a scopeset: 400 InputValidationError.")
        call(auth.expandScopes, {"scope": ["a"]})
        rec.annotate("A scope with a character outside the scope pattern (newline): 400.")
        call(auth.expandScopes, {"scopes": ["a\nb"]})
        rec.annotate("createRole with a scope ending in `**`: 400.")
        call(auth.createRole, f"{p}/stars", {"description": "", "scopes": ["a:**"]})
        rec.annotate("A role cycle through a parameterised `*` role: 400 InputError.")
        call(auth.createRole, f"{p}/cyc*", {"description": "", "scopes": [f"assume:{p}/cyc<..>x"]})
        rec.annotate("deleteRole: 204, empty body.")
        auth.deleteRole(f"{p}/base")
        rec.annotate("deleteRole of a missing role: still 204.")
        auth.deleteRole(f"{p}/base")
        rec.annotate("After deleting base, ci no longer expands to base's scopes.")
        auth.expandScopes({"scopes": [f"assume:{p}/ci"]})
        for role in (f"{p}/ci", f"{p}/repo:*"):
            auth.deleteRole(role)
    rec.write(
        out,
        "auth-roles.json",
        "Roles: createRole / role / deleteRole and expandScopes (plain, chained, `*`-suffix, parameterised)",
        f"Root credentials. Role ids under {p}/. Shows response shapes (roleId, scopes, expandedScopes, description, "
        "created, lastModified), idempotency of createRole, the 409/404/400 codes and the expansion rules.",
    )


def record_current_scopes(root_opts: dict[str, Any], tag: str, out: Path) -> None:
    rec = Recorder(root_opts["rootUrl"])
    p = f"megalodon-ref/{tag}"
    root_auth = named_client(taskcluster.Auth, root_opts)
    now = dt.datetime.now(dt.UTC)
    start, expiry = now - dt.timedelta(minutes=1), now + dt.timedelta(hours=1)
    with rec.installed():
        root_auth.createRole(f"{p}/cur", {"description": "", "scopes": ["auth:current-scopes", "queue:x:y"]})
        root_auth.currentScopes()
        temp = taskcluster.createTemporaryCredentials(
            root_opts["credentials"]["clientId"],
            root_opts["credentials"]["accessToken"],
            start,
            expiry,
            [f"assume:{p}/cur"],
        )
        temp_auth = named_client(taskcluster.Auth, {"rootUrl": root_opts["rootUrl"], "credentials": temp})
        rec.annotate("Temporary credentials holding one assume: scope: currentScopes is the expansion.")
        temp_auth.currentScopes()
        rec.annotate("The same credentials lack auth:expand-scopes: expandScopes is 403 (it needs that scope).")
        call(temp_auth.expandScopes, {"scopes": [f"assume:{p}/cur"]})
        bare = taskcluster.createTemporaryCredentials(
            root_opts["credentials"]["clientId"], root_opts["credentials"]["accessToken"], start, expiry, ["x:y"]
        )
        rec.annotate("Without auth:current-scopes: 403.")
        call(named_client(taskcluster.Auth, {"rootUrl": root_opts["rootUrl"], "credentials": bare}).currentScopes)
        expander = taskcluster.createTemporaryCredentials(
            root_opts["credentials"]["clientId"],
            root_opts["credentials"]["accessToken"],
            start,
            expiry,
            ["auth:expand-scopes"],
        )
        rec.annotate("auth:expand-scopes alone: any scopeset can be expanded, not only the caller's own.")
        named_client(taskcluster.Auth, {"rootUrl": root_opts["rootUrl"], "credentials": expander}).expandScopes(
            {"scopes": [f"assume:{p}/cur"]}
        )
        rec.annotate("authorizedScopes restrict what the request holds (the taskcluster-proxy signs this way).")
        named_client(
            taskcluster.Auth,
            {"rootUrl": root_opts["rootUrl"], "credentials": temp, "authorizedScopes": ["auth:current-scopes"]},
        ).currentScopes()
        root_auth.deleteRole(f"{p}/cur")
    rec.write(
        out,
        "auth-current-scopes.json",
        "currentScopes and expandScopes with temporary credentials, roles and authorizedScopes",
        "currentScopes needs auth:current-scopes and answers the caller's scopes with roles expanded; expandScopes "
        "needs auth:expand-scopes.",
    )


def record_task_roles(root_opts: dict[str, Any], tag: str, out: Path) -> None:
    rec = Recorder(root_opts["rootUrl"])
    p = f"megalodon-ref/{tag}"
    root_auth = named_client(taskcluster.Auth, root_opts)
    queue = named_client(taskcluster.Queue, root_opts)
    queue_id = f"reference/roles-{tag}"
    task_id = slugid.nice()
    with rec.installed():
        root_auth.createRole(f"{p}/task", {"description": "", "scopes": ["generic-worker:cache:build"]})
        queue.createTask(task_id, task_body(queue_id, [f"assume:{p}/task"]))
        rec.annotate("The task credentials' certificate carries task.scopes literally (assume: not expanded).")
        claim = queue.claimWork(queue_id, {"workerGroup": "ref-group", "workerId": "ref-worker", "tasks": 1})
        creds = claim["tasks"][0]["credentials"]
        task_auth = named_client(taskcluster.Auth, {"rootUrl": root_opts["rootUrl"], "credentials": creds})
        task_queue = named_client(taskcluster.Queue, {"rootUrl": root_opts["rootUrl"], "credentials": creds})
        rec.annotate("Task credentials cannot expandScopes (auth:expand-scopes is the worker's, not the task's).")
        call(task_auth.expandScopes, {"scopes": [f"assume:{p}/task"]})
        expires = iso(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
        rec.annotate("A reference artifact to a wss:// URL (what an interactive shell's socket looks like).")
        call(
            task_queue.createArtifact,
            task_id,
            "0",
            "private/generic-worker/shell.html",
            {"storageType": "reference", "url": "wss://127.0.0.1:53654/shell/abc", "expires": expires,
             "contentType": "text/html"},
        )  # fmt: skip
        rec.annotate("A reference artifact to an http URL (the live log).")
        task_queue.createArtifact(
            task_id,
            "0",
            "public/logs/live.log",
            {"storageType": "reference", "url": "http://127.0.0.1:60023/log/secret", "expires": expires,
             "contentType": "text/plain; charset=utf-8"},
        )  # fmt: skip
        rec.annotate("A link from the live log to another artifact name (the backing log).")
        task_queue.createArtifact(
            task_id,
            "0",
            "public/logs/live.log",
            {"storageType": "link", "artifact": "public/logs/live_backing.log", "expires": expires,
             "contentType": "text/plain; charset=utf-8"},
        )  # fmt: skip
        rec.annotate("cancelTask while running; the worker's reportCompleted then gets 409.")
        queue.cancelTask(task_id)
        rec.annotate("reportCompleted after cancel: 409 RequestConflict; the message names the run's state.")
        call(task_queue.reportCompleted, task_id, "0")
        rec.annotate("reportFailed after cancel: 409 too.")
        call(task_queue.reportFailed, task_id, "0")
        rec.annotate("The artifacts: reference and link as the queue lists them.")
        queue.listArtifacts(task_id, "0")
        dup_id = slugid.nice()
        rec.annotate("task.scopes with a duplicate: accepted and stored verbatim (expandScopes would refuse it).")
        queue.createTask(dup_id, task_body(f"{queue_id}-dup", [f"assume:{p}/task", f"assume:{p}/task"]))
        queue.task(dup_id)
        queue.cancelTask(dup_id)
        root_auth.deleteRole(f"{p}/task")
    rec.write(
        out,
        "task-roles-and-references.json",
        "A task holding scopes through a role; reference/link artifacts; reports after cancelTask",
        "Task credentials carry assume: scopes literally and cannot call expandScopes; reference URLs may be "
        "ws(s)/http; a link may replace a reference; reportCompleted/reportFailed after cancelTask give 409.",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    try:
        root_opts = {
            "rootUrl": os.environ["ROOT_URL"],
            "credentials": {"clientId": os.environ["CLIENT_ID"], "accessToken": os.environ["ACCESS_TOKEN"]},
        }
    except KeyError as missing:
        print(f"environment variable {missing} is not set: source /tmp/real-tc/env first", file=sys.stderr)
        return 2
    tag = slugid.nice()[:8].replace("-", "x").replace("_", "y").lower()
    record_roles(root_opts, tag, args.out)
    record_current_scopes(root_opts, tag, args.out)
    record_task_roles(root_opts, tag, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
