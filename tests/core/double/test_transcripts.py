"""Replay the recorded Taskcluster HTTP exchanges against the double.

Each transcript step is re-sent (Hawk-signed exactly like the taskcluster
client signs) with the double's own taskIds, credentials, uploadIds, storage
URLs and timestamps substituted, and the double must answer with the same
status code and the same response *shape* (keys and JSON types, plus the
``code`` of error bodies).

Not replayed:
* ``worker-manager-static.json``: worker-manager is not part of the double.
* ``comment`` steps are observations, not requests; the ones that mark waiting
  for a resolver become waits/polls here (see ``WAITS``).
* Time-dependent transcripts run on doubles configured with short timeouts
  (claim expiry 1 s instead of 20 min, deadline 2 s after creation with a 0.5 s
  deadline delay instead of 30 s + 60 s, claimWork long poll 0.5 s instead of
  20 s); certificate expiry is reproduced by minting certificates whose
  ``start``/``expiry`` already lie 4-6 min in the past or future.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mohawk
import pytest
import taskcluster.aio
import yarl

from megalodon_core.double import TaskclusterDouble
from megalodon_core.double.server import PUBLIC_ARTIFACTS
from megalodon_core.double.timeutil import iso, parse_iso, slug_id


def locate_shared() -> Path:
    """``$MEGALODON_SHARED``, else a ``shared/reference`` beside the test file or any ancestor."""
    env = os.environ.get("MEGALODON_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [parent / "shared" for parent in Path(__file__).resolve().parents]
    for cand in candidates:
        for ref in (cand / "reference", cand):
            if (ref / "taskcluster-api" / "transcripts").is_dir():
                return ref
    raise RuntimeError(
        "Cannot find shared/reference/taskcluster-api: set MEGALODON_SHARED or put shared/ beside the clone. "
        "Looked in: " + ", ".join(str(c) for c in candidates)
    )


TRANSCRIPTS = locate_shared() / "taskcluster-api" / "transcripts"
#: The repository's own recordings (``tools/record_transcripts.py`` against the real services): roles,
#: expandScopes, currentScopes, reference/link artifacts and reports after a cancel.
LOCAL_TRANSCRIPTS = Path(__file__).resolve().parent / "transcripts"
ROOT = "static/taskcluster/root"
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TASK_IN_PATH = re.compile(r"/task/([A-Za-z0-9_-]{22})(?=/|$|\?)")
ARTIFACTS_TASK = "LH_NlLkzRBO2EAykY5izcA"
TEMPCREDS_TASK = "PWudtP_hREWvkf0FjKJBpg"
DEADLINE_AFTER = dt.timedelta(seconds=2)

SKIPPED = {"worker-manager-static.json": "worker-manager is not emulated by the double"}

# Transcripts that share state (one task carries every artifact) are replayed in
# recording order against one double; "@complete" resolves that task between files.
GROUPS: dict[str, list[str]] = {
    "artifacts": [
        "artifact-object.json",
        "artifact-other-storage-types.json",
        "artifact-create-twice.json",
        "artifact-names-and-expiry.json",
        "task-credentials.json",
        "@complete",
        "artifact-read.json",
        "artifact-download-helper.json",
    ],
}
for _path in sorted([*TRANSCRIPTS.glob("*.json"), *LOCAL_TRANSCRIPTS.glob("*.json")]):
    if _path.name not in SKIPPED and not any(_path.name in files for files in GROUPS.values()):
        GROUPS[_path.stem] = [_path.name]

DOUBLE_CONFIG: dict[str, dict[str, Any]] = {
    "claim-expired": {"claim_timeout": 1.0},
    "deadline-exceeded": {"deadline_delay": 0.5},
    # The real deployment of the local recordings grants the anonymous role public artifacts.
    "auth-current-scopes": {"anonymous_scopes": PUBLIC_ARTIFACTS},
}


def load(name: str) -> dict[str, Any]:
    local = LOCAL_TRANSCRIPTS / name
    data: dict[str, Any] = json.loads((local if local.exists() else TRANSCRIPTS / name).read_text())
    return data


def pattern_bytes(summary: dict[str, Any]) -> bytes:
    """Rebuild the recorder's binary test data, byte i = (a + b i) mod m, checked against its sha256."""
    head = base64.b64decode(summary["_first_32_bytes_base64"])
    start, step = head[0], (head[1] - head[0]) % 256
    for modulus in range(256, 128, -1):
        data = bytes((start + step * i) % modulus for i in range(summary["_length"]))
        if hashlib.sha256(data).hexdigest() == summary["_sha256"]:
            return data
    raise AssertionError("could not reconstruct the recorded binary body")


def storage_key(url: str) -> str:
    """Recorded storage URLs are keyed by path (host placeholder and presigned query dropped)."""
    return urllib.parse.urlsplit(url.replace("<s3Endpoint>", "http://s3")).path


@dataclass
class Replayer:
    double: TaskclusterDouble
    session: aiohttp.ClientSession
    shift: dt.timedelta = dt.timedelta(0)
    ids: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    creds: dict[str, dict[str, str]] = field(default_factory=dict)
    urls: dict[tuple[str, str], str] = field(default_factory=dict)
    step_creds: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    body_hooks: dict[str, Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    minted: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- substitution -----------------------------------------------------------------------

    def task_id(self, recorded: str) -> str:
        if recorded not in self.ids:
            self.ids[recorded] = slug_id()
        return self.ids[recorded]

    def sub_str(self, text: str) -> str:
        if text in self.values:
            return self.values[text]
        if ISO_RE.match(text):
            return iso(parse_iso(text) + self.shift)
        if text.startswith("<s3Endpoint>"):
            # An input URL pointing at stored data (a reference artifact): the unsigned public URL.
            key = storage_key(text)
            known = self.urls.get(("GET", key)) or self.urls.get(("PUT", key))
            assert known is not None, f"unknown storage URL {text}"
            return known.split("?", 1)[0]
        for old, new in self.ids.items():
            text = text.replace(old, new)
        return text

    def sub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.sub_str(value)
        if isinstance(value, list):
            return [self.sub(v) for v in value]
        if isinstance(value, dict):
            return {k: self.sub(v) for k, v in value.items()}
        return value

    def sub_path(self, path: str) -> str:
        for m in TASK_IN_PATH.finditer(path):
            self.task_id(m.group(1))
        base, _, query = path.partition("?")
        for old, new in self.ids.items():
            base = base.replace(old, new)
        if query:
            pairs = [(k, self.values.get(v, v)) for k, v in urllib.parse.parse_qsl(query)]
            base += "?" + urllib.parse.urlencode(pairs)
        return base

    def harvest(self, recorded: Any, actual: Any, verb: str = "GET") -> None:
        """Learn recorded->actual mappings (credentials, uploadIds, tokens, storage URLs)."""
        if isinstance(recorded, dict) and isinstance(actual, dict):
            for key, rec in recorded.items():
                act = actual.get(key)
                if key == "credentials" and isinstance(rec, dict) and isinstance(act, dict):
                    self.creds[rec["clientId"]] = act
                elif key in ("uploadId", "continuationToken") and isinstance(rec, str) and isinstance(act, str):
                    self.values[rec] = act
                elif key in ("putUrl", "url") and isinstance(rec, str) and isinstance(act, str):
                    if rec.startswith("<s3Endpoint>"):
                        self.urls[("PUT" if key == "putUrl" else verb, storage_key(rec))] = act
                else:
                    self.harvest(rec, act, "PUT" if key == "putUrl" else verb)
        elif isinstance(recorded, list) and isinstance(actual, list):
            for rec, act in zip(recorded, actual, strict=False):
                self.harvest(rec, act, verb)

    # -- requests ---------------------------------------------------------------------------

    def credentials(self, name: str, index: int, step: dict[str, Any]) -> dict[str, str] | None:
        auth = step.get("auth")
        if auth is None:
            return None
        if (name, index) in self.step_creds:
            return self.step_creds[(name, index)]
        client_id = auth["clientId"]
        if client_id not in self.creds and "certificateScopes" in auth:
            # Temporary credentials the recorder minted itself (clientId = the issuer's): mint equivalent ones.
            key = json.dumps(auth["certificateScopes"])
            if key not in self.minted:
                now = dt.datetime.now(dt.UTC)
                hour = dt.timedelta(hours=1)
                self.minted[key] = self.double.temporary_credentials(auth["certificateScopes"], now - hour, now + hour)
            return self.minted[key]
        if client_id == ROOT:
            return self.double.root_credentials
        if client_id in self.creds:
            creds = dict(self.creds[client_id])
            body = step.get("response_body")
            if step["status"] == 401 and isinstance(body, dict) and "Bad mac" in body.get("message", ""):
                creds["accessToken"] = "wrong-" + creds["accessToken"]
            return creds
        if client_id.startswith("static/"):
            return {"clientId": client_id, "accessToken": "no-such-client-token"}
        raise AssertionError(f"no credentials known for recorded clientId {client_id}")

    async def api_call(self, name: str, index: int, step: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        path = self.sub_path(step["path"])
        body = step["request_body"]
        if body is not None:
            body = self.sub(body)
            hook = self.body_hooks.get(step["call"])
            if hook is not None:
                hook(body)
        url = self.double.root_url + path
        payload = json.dumps(body) if body is not None else ""
        headers = {"Content-Type": "application/json"} if payload else {}
        creds = self.credentials(name, index, step)
        if creds is not None:
            ext = {}
            if "certificate" in creds:
                ext["certificate"] = json.loads(creds["certificate"])
            if "authorizedScopes" in step["auth"]:
                ext["authorizedScopes"] = step["auth"]["authorizedScopes"]
            sender = mohawk.Sender(
                {"id": creds["clientId"], "key": creds["accessToken"], "algorithm": "sha256"},
                url,
                step["method"],
                content=payload,
                content_type="application/json" if payload else "",
                ext=base64.urlsafe_b64encode(json.dumps(ext).encode()).decode() if ext else "",
            )
            headers["Authorization"] = sender.request_header
        async with self.session.request(
            step["method"],
            yarl.URL(url, encoded=True),
            data=payload or None,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=["Content-Type"],
        ) as resp:
            text = await resp.text()
            got_headers = {k.lower(): v for k, v in resp.headers.items()}
            return resp.status, json.loads(text) if text else None, got_headers

    async def storage_call(self, step: dict[str, Any]) -> tuple[int, bytes]:
        key = (step["method"], storage_key(step["path"]))
        assert key in self.urls, f"no storage URL learned for {key}"
        data: bytes | None = None
        body = step.get("request_body")
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, dict):
            data = pattern_bytes(body)
        headers = {}
        for name, value in (step.get("request_headers") or {}).items():
            if name != "content-length":
                headers[name] = value
        async with self.session.request(
            step["method"], yarl.URL(self.urls[key], encoded=True), data=data, headers=headers
        ) as resp:
            return resp.status, await resp.read()


def assert_same_shape(recorded: Any, actual: Any, where: str) -> None:
    if isinstance(recorded, dict):
        assert isinstance(actual, dict), f"{where}: expected object, got {actual!r}"
        if "code" in recorded and "requestInfo" in recorded:
            assert actual.get("code") == recorded["code"], f"{where}: {actual.get('message')}"
            assert set(actual) == set(recorded), where
            assert set(actual["requestInfo"]) == set(recorded["requestInfo"]), where
            return
        assert set(actual) == set(recorded), f"{where}: keys {sorted(actual)} != {sorted(recorded)}"
        for key, value in recorded.items():
            assert_same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(actual, list), f"{where}: expected list, got {actual!r}"
        assert len(actual) == len(recorded), f"{where}: {len(actual)} items != {len(recorded)}"
        for i, (rec, act) in enumerate(zip(recorded, actual, strict=True)):
            assert_same_shape(rec, act, f"{where}[{i}]")
    elif isinstance(recorded, bool) or recorded is None:
        assert actual is recorded or type(actual) is type(recorded), f"{where}: {actual!r} vs {recorded!r}"
    elif isinstance(recorded, int | float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{where}: {actual!r}"
    else:
        assert isinstance(actual, type(recorded)), f"{where}: {actual!r} vs {recorded!r}"


async def poll(predicate: Callable[[], bool], within: float = 10.0) -> None:
    give_up = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < give_up, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- per-transcript set-up and waits ----------------------------------------------------------


async def create_from_status(r: Replayer, recorded_id: str, status: dict[str, Any]) -> None:
    """Create (over HTTP, as root) a task that a transcript uses without recording its createTask."""
    deadline = parse_iso(status["deadline"]) + r.shift
    body = {
        "taskQueueId": status["taskQueueId"],
        "schedulerId": status["schedulerId"],
        "projectId": status["projectId"],
        "created": iso(deadline - dt.timedelta(hours=1)),
        "deadline": iso(deadline),
        "expires": iso(parse_iso(status["expires"]) + r.shift),
        "payload": {},
        "metadata": {"name": "setup", "description": "d", "owner": "o@example.com", "source": "https://x.org"},
    }
    root = {"rootUrl": r.double.root_url, "credentials": r.double.root_credentials, "maxRetries": 0}
    await taskcluster.aio.Queue(root).createTask(r.task_id(recorded_id), body)


async def setup_group(group: str, r: Replayer) -> None:
    if group == "temporary-credentials-expiry":
        status = load("temporary-credentials-expiry.json")["steps"][0]["response_body"]["status"]
        r.shift = dt.datetime.now(dt.UTC) - (parse_iso(status["deadline"]) - dt.timedelta(hours=1))
        await create_from_status(r, TEMPCREDS_TASK, status)
        new_id = r.task_id(TEMPCREDS_TASK)
        now = dt.datetime.now(dt.UTC)
        scopes = [f"queue:status:{new_id}"]
        minute = dt.timedelta(minutes=1)
        name = "temporary-credentials-expiry.json"
        r.step_creds[(name, 0)] = r.double.temporary_credentials(scopes, now - 10 * minute, now - 4 * minute)
        r.step_creds[(name, 1)] = r.double.temporary_credentials(scopes, now - 10 * minute, now - 6 * minute)
        r.step_creds[(name, 2)] = r.double.temporary_credentials(scopes, now + 6 * minute, now + 10 * minute)
        r.step_creds[(name, 3)] = r.double.temporary_credentials(scopes, now - minute, now + 10 * minute)
    else:
        r.shift = dt.datetime.now(dt.UTC) - recording_start(group)
    if group == "deadline-exceeded":

        def squeeze_deadline(body: dict[str, Any]) -> None:
            body["deadline"] = iso(parse_iso(body["created"]) + DEADLINE_AFTER)

        r.body_hooks["queue.createTask"] = squeeze_deadline


def recording_start(group: str) -> dt.datetime:
    """Server wall-clock time of the group's first recorded request (from response timestamps)."""
    found: list[dt.datetime] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                if key in ("scheduled", "time") and isinstance(sub, str) and ISO_RE.match(sub):
                    found.append(parse_iso(sub))
                else:
                    walk(sub)
        elif isinstance(value, list):
            for sub in value:
                walk(sub)

    for name in GROUPS[group]:
        if not name.startswith("@"):
            for step in load(name)["steps"]:
                walk(step.get("response_body"))
    return min(found)


def run_state(r: Replayer, recorded_id: str, run_id: int = 0) -> str:
    status = r.double.task_state(r.ids[recorded_id])
    return str(status["runs"][run_id]["state"]) if len(status["runs"]) > run_id else status["state"]


async def wait_for_step(name: str, index: int, r: Replayer) -> None:
    """Act out a ``comment`` step that stands for waiting on a resolver."""
    if name == "create-task-and-status.json" and index == 14:
        await poll(lambda: r.double.task_state(r.ids["N8rMqvIdQvKXJZikaHDeZw"])["state"] != "unscheduled")
    elif name == "claim-expired.json" and index == 3:
        await poll(lambda: run_state(r, "IGJZObcpSdWIl6rPQ8osxg") == "exception")
    elif name == "deadline-exceeded.json" and index == 6:
        deadlines = [parse_iso(r.double.task_state(t)["deadline"]) for t in r.ids.values() if t in r.double.queue.tasks]
        await asyncio.sleep(max(0.0, (max(deadlines) - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
    elif name == "deadline-exceeded.json" and index == 11:
        await poll(lambda: run_state(r, "Jo5zvLtmSQe0gpBzml7_Kg") == "exception")
        await poll(lambda: r.double.task_state(r.ids["HN3YAMLnREKRGQHGXB9qmQ"])["state"] == "exception")


async def complete_artifacts_task(r: Replayer) -> None:
    task_id = r.ids[ARTIFACTS_TASK]
    creds = next(c for cid, c in r.creds.items() if cid.startswith(f"task-client/{ARTIFACTS_TASK}/0/"))
    queue = taskcluster.aio.Queue({"rootUrl": r.double.root_url, "credentials": creds, "maxRetries": 0})
    await queue.reportCompleted(task_id, "0")


# Steps recorded out of order because they ran concurrently: key runs *after* value has started.
CONCURRENT = {("claim-work-empty.json", 2): 3}


async def replay_step(name: str, index: int, step: dict[str, Any], r: Replayer) -> None:
    where = f"{name} step {index} ({step['call']})"
    if step["call"].startswith("s3."):
        status, data = await r.storage_call(step)
        assert status == step["status"], f"{where}: {status} {data[:300]!r}"
        body = step["response_body"]
        if status == 200 and isinstance(body, str):
            assert data == body.encode(), where
        elif status == 200 and isinstance(body, dict):
            assert len(data) == body["_length"], where
            assert hashlib.sha256(data).hexdigest() == body["_sha256"], where
        return
    status, body, headers = await r.api_call(name, index, step)
    assert status == step["status"], f"{where}: got {status} {json.dumps(body)[:600]}"
    assert_same_shape(step["response_body"], body, where)
    if step["call"] in ("queue.claimWork", "queue.reclaimTask") and status == 200:
        # Task credentials carry exactly these scopes (task.scopes literally: assume: is not expanded).
        recorded_claims = step["response_body"].get("tasks", [step["response_body"]])
        actual_claims = body.get("tasks", [body])
        for rec, act in zip(recorded_claims, actual_claims, strict=True):
            rec_scopes = json.loads(rec["credentials"]["certificate"])["scopes"]
            assert json.loads(act["credentials"]["certificate"])["scopes"] == r.sub(rec_scopes), where
    if step["call"].startswith("auth.") and status == 200:
        # Scope sets are exact: the expansion and its normal form are what a worker decides on.
        for key in ("scopes", "expandedScopes"):
            if key in step["response_body"]:
                assert body[key] == r.sub(step["response_body"][key]), f"{where}: {key}"
    recorded_headers = step.get("response_headers") or {}
    for header in ("location", "x-taskcluster-artifact-storage-type"):
        if header in recorded_headers:
            assert header in headers, f"{where}: missing {header}"
    if "x-taskcluster-artifact-storage-type" in recorded_headers:
        assert headers["x-taskcluster-artifact-storage-type"] == recorded_headers["x-taskcluster-artifact-storage-type"]
    r.harvest(step["response_body"], body)
    location = recorded_headers.get("location", "")
    if location.startswith("<s3Endpoint>"):
        r.urls[("GET", storage_key(location))] = headers["location"]


async def replay_file(name: str, r: Replayer) -> None:
    steps = load(name)["steps"]
    deferred: dict[int, asyncio.Task[None]] = {}
    started: set[int] = set()
    for index, step in enumerate(steps):
        if index in started:
            await deferred.pop(index)
            continue
        if step["call"] == "comment":
            await wait_for_step(name, index, r)
            continue
        later = CONCURRENT.get((name, index))
        if later is not None:
            t0 = time.monotonic()
            deferred[later] = asyncio.create_task(replay_step(name, later, steps[later], r))
            started.add(later)
            await asyncio.sleep(0.2)
            await replay_step(name, index, step, r)
            await deferred[later]
            deferred[later] = asyncio.create_task(asyncio.sleep(0))
            assert time.monotonic() - t0 < r.double.queue.config.claim_work_wait, "long poll did not return early"
            continue
        await replay_step(name, index, step, r)


def test_every_transcript_is_covered() -> None:
    names = {p.name for p in [*TRANSCRIPTS.glob("*.json"), *LOCAL_TRANSCRIPTS.glob("*.json")]}
    covered = {f for files in GROUPS.values() for f in files} | set(SKIPPED)
    assert names <= covered
    assert len(names) >= 20


@pytest.mark.parametrize("group", sorted(GROUPS))
async def test_replay(group: str) -> None:
    config: dict[str, Any] = {"claim_work_wait": 0.5, "resolver_interval": 0.05, **DOUBLE_CONFIG.get(group, {})}
    async with TaskclusterDouble(**config) as double, aiohttp.ClientSession() as session:
        r = Replayer(double, session)
        await setup_group(group, r)
        for name in GROUPS[group]:
            if name == "@complete":
                await complete_artifacts_task(r)
            else:
                await replay_file(name, r)
