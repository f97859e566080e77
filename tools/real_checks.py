"""Run ``megalodon run`` against the REAL Taskcluster services and print PASS/FAIL/SKIP per scenario.

Not part of CI (CI runs against the project's double, ``megalodon_core.double``).  With the real auth, queue,
object and worker-manager services on loopback (``../shared/tools/real-taskcluster/``)::

    . /tmp/real-tc/env && .venv/bin/python tools/real_checks.py [-k NAME ...] [--slow] [--keep]

Each scenario gets its own static worker pool ``megalodon-checks/<tag>-<scenario>`` in the real worker-manager:
``createWorkerPool`` + ``createWorker`` + ``registerWorker`` issue the worker's temporary credentials exactly
as for a production static worker, and one ``megalodon run`` process per scenario uses them.  The role
``worker-pool:megalodon-checks/*`` gives those workers ``auth:expand-scopes``, as a deployment must for
feature scopes held through roles (generic-worker and docker-worker call ``auth.expandScopes`` too).
Tasks are created with the root credentials and their results read back through the real queue (and S3 /
object service), with the taskcluster client's own download helpers.

Exit status: 0 when no scenario failed, 1 otherwise.  ``--keep`` keeps each scenario's directory (worker
config, worker log, tasks dir) under ``/tmp/megalodon-real-checks/<tag>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import struct
import sys
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import slugid
import taskcluster
import taskcluster.aio
import taskcluster.aio.download
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parent.parent
MEGALODON = str(REPO / ".venv" / "bin" / "megalodon")
PROVISIONER = "megalodon-checks"
BUSYBOX = "megalodon-test/busybox:latest"
SHELL_ARTIFACT = "private/generic-worker/shell.html"


class CheckFailed(AssertionError):
    """A scenario's expectation did not hold."""


class Skipped(Exception):
    """A scenario that cannot run here, with the reason."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


async def until(predicate: Callable[[], Awaitable[Any]], what: str, bound: float = 120.0) -> Any:
    """Poll ``predicate`` (generous bound) until it returns something truthy."""
    give_up = time.monotonic() + bound
    while True:
        got = await predicate()
        if got:
            return got
        if time.monotonic() > give_up:
            raise CheckFailed(f"{what}: not seen within {bound:.0f} s")
        await asyncio.sleep(0.25)


@dataclass
class Deployment:
    root_url: str
    root: dict[str, str]
    tag: str
    base: Path
    session: aiohttp.ClientSession

    def options(self, credentials: dict[str, str] | None = None) -> dict[str, Any]:
        return {"rootUrl": self.root_url, "credentials": credentials or self.root}

    @property
    def queue(self) -> Any:
        return taskcluster.aio.Queue(self.options(), session=self.session)

    @property
    def auth(self) -> Any:
        return taskcluster.aio.Auth(self.options(), session=self.session)

    @property
    def worker_manager(self) -> Any:
        return taskcluster.aio.WorkerManager(self.options(), session=self.session)


@dataclass
class Worker:
    """One ``megalodon run`` process on a static worker of its own pool."""

    dep: Deployment
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    #: Outside ``<tag>-*`` the pool's role does not give the worker ``auth:expand-scopes``.
    expand_role: bool = True

    @property
    def worker_type(self) -> str:
        return f"{self.dep.tag}{'-' if self.expand_role else 'n'}{self.name}"

    @property
    def queue_id(self) -> str:
        return f"{PROVISIONER}/{self.worker_type}"

    @property
    def dir(self) -> Path:
        return self.dep.base / self.name

    async def register(self, **config: Any) -> None:
        wm = self.dep.worker_manager
        now = dt.datetime.now(dt.UTC)
        await wm.createWorkerPool(
            self.queue_id,
            {
                "providerId": "static",
                "description": f"megalodon real check {self.name}",
                "owner": "megalodon-checks@example.com",
                "emailOnError": False,
                "config": {"lifecycle": {"reregistrationTimeout": 3600}, "workerConfig": {}},
            },
        )
        static_secret = secrets.token_urlsafe(33)[:44]
        await wm.createWorker(
            self.queue_id,
            "checks",
            self.name,
            {"providerInfo": {"staticSecret": static_secret}, "expires": iso(now + dt.timedelta(days=1))},
        )
        # registerWorker takes no credentials: the static secret is the proof
        anonymous = taskcluster.aio.WorkerManager({"rootUrl": self.dep.root_url}, session=self.dep.session)
        reg = await anonymous.registerWorker(
            {
                "workerPoolId": self.queue_id,
                "providerId": "static",
                "workerGroup": "checks",
                "workerId": self.name,
                "workerIdentityProof": {"staticSecret": static_secret},
            }
        )
        creds = reg["credentials"]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = {
            "rootURL": self.dep.root_url,
            "clientId": creds["clientId"],
            "accessToken": creds["accessToken"],
            "certificate": creds["certificate"],
            "provisionerId": PROVISIONER,
            "workerType": self.worker_type,
            "workerGroup": "checks",
            "workerId": self.name,
            "tasksDir": str(self.dir / "tasks"),
            "stateDir": str(self.dir / "state"),
            "cachesDir": str(self.dir / "caches"),
            "downloadsDir": str(self.dir / "downloads"),
            "requiredDiskSpaceMegabytes": 16,
            "numberOfTasksToRun": 1,
            "maxTaskRunTime": 600,
            "cleanUpTaskDirs": False,
            **config,
        }
        # Created 0600: it holds the worker's credentials, never readable by others even for a moment.
        fd = os.open(self.dir / "worker.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self.config, indent=1))

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCLUSTER_")}
        with (self.dir / "worker.log").open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                MEGALODON, "run", "--config", str(self.dir / "worker.json"), cwd=self.dir, stdout=log, stderr=log,
                env=env,
            )  # fmt: skip

    def log(self) -> str:
        return (self.dir / "worker.log").read_text(errors="replace")

    async def wait(self, bound: float = 180.0) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), bound)
        except TimeoutError:
            raise CheckFailed(f"worker {self.name} still running after {bound:.0f} s") from None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def create(self, payload: dict[str, Any], scopes: list[str] | None = None, **task: Any) -> str:
        now = dt.datetime.now(dt.UTC)
        task_id: str = slugid.nice()
        await self.dep.queue.createTask(
            task_id,
            {
                "taskQueueId": self.queue_id,
                "schedulerId": "megalodon-checks",
                "projectId": "none",
                "created": iso(now),
                "deadline": iso(now + dt.timedelta(hours=1)),
                "expires": iso(now + dt.timedelta(days=1)),
                "retries": 1,
                "scopes": scopes or [],
                "payload": payload,
                "metadata": {
                    "name": f"real check {self.name}",
                    "description": "tools/real_checks.py",
                    "owner": "megalodon-checks@example.com",
                    "source": "https://github.com/example/megalodon",
                },
                **task,
            },
        )
        return task_id

    async def run(self) -> None:
        """Wait for the worker (numberOfTasksToRun) to exit 0."""
        code = await self.wait()
        expect(code == 0, f"worker exited {code}; log tail:\n{self.log()[-3000:]}")

    async def status(self, task_id: str) -> dict[str, Any]:
        return dict((await self.dep.queue.status(task_id))["status"])

    async def resolved(self, task_id: str, run_id: int = 0, bound: float = 180.0) -> dict[str, Any]:
        async def check() -> Any:
            runs = (await self.status(task_id))["runs"]
            if len(runs) > run_id and runs[run_id]["state"] not in ("pending", "running"):
                return runs[run_id]
            return None

        run: dict[str, Any] = await until(check, f"run {run_id} of {task_id} resolved", bound)
        return run

    async def artifact(self, task_id: str, name: str, run_id: int = 0) -> bytes:
        """Content through the taskcluster client's download helper (s3, object, link all resolved)."""
        data, _ = await taskcluster.aio.download.downloadArtifactToBuf(
            taskId=task_id, runId=str(run_id), name=name, queueService=self.dep.queue
        )
        return bytes(data)

    async def log_text(self, task_id: str, run_id: int = 0) -> str:
        data = await self.artifact(task_id, "public/logs/live_backing.log", run_id)
        with contextlib.suppress(OSError):
            data = gzip.decompress(data)
        return data.decode(errors="replace")

    async def wait_artifact(self, task_id: str, name: str, bound: float = 120.0) -> dict[str, Any]:
        async def check() -> Any:
            try:
                return await self.dep.queue.artifact(task_id, "0", name)
            except taskcluster.exceptions.TaskclusterRestFailure as exc:
                if exc.status_code == 404:
                    return None
                raise

        found: dict[str, Any] = await until(check, f"artifact {name} of {task_id}", bound)
        return found

    async def running(self, task_id: str) -> None:
        async def check() -> bool:
            run = (await self.status(task_id))["runs"][0]
            expect(run["state"] in ("pending", "running"), f"{task_id} resolved {run} before it was seen running")
            return bool(run["state"] == "running")

        await until(check, f"{task_id} running")


def sh(script: str, **payload: Any) -> dict[str, Any]:
    return {"command": [["/bin/sh", "-c", script]], "maxRunTime": 120, **payload}


async def completed(worker: Worker, task_id: str) -> str:
    run = await worker.resolved(task_id)
    log: str = await worker.log_text(task_id)
    expect(run["state"] == "completed", f"{run['state']}/{run.get('reasonResolved')}; task log:\n{log[-3000:]}")
    return log


# -- scenarios --------------------------------------------------------------------------------------------


async def native_artifacts(worker: Worker, storage: str) -> str:
    await worker.register(createObjectArtifacts=storage == "object")
    script = "echo ARTIFACT-ONE > one.txt; mkdir -p d/sub; echo TWO > d/sub/two.txt; echo marker-$((6*7))"
    artifacts = [
        {"type": "file", "path": "one.txt", "name": "public/one.txt"},
        {"type": "directory", "path": "d", "name": "public/d"},
        {"type": "file", "path": "missing.txt", "name": "public/missing.txt"},
    ]
    task_id = await worker.create(sh(script, artifacts=artifacts))
    await worker.start()
    await worker.run()
    run = await worker.resolved(task_id)
    log = await worker.log_text(task_id)
    # generic-worker: a missing file artifact fails the task (and becomes an error artifact)
    expect(run["state"] == "failed", f"expected failed for the missing artifact, got {run['state']}")
    expect("marker-42" in log, "command output missing from the backing log")
    expect(await worker.artifact(task_id, "public/one.txt") == b"ARTIFACT-ONE\n", "public/one.txt content")
    expect(await worker.artifact(task_id, "public/d/sub/two.txt") == b"TWO\n", "directory artifact content")
    listed = {a["name"]: a for a in (await worker.dep.queue.listArtifacts(task_id, "0"))["artifacts"]}
    expect(listed["public/one.txt"]["storageType"] == storage, f"storage {listed['public/one.txt']['storageType']}")
    expect(listed["public/missing.txt"]["storageType"] == "error", "missing artifact is not an error artifact")
    expect(listed["public/logs/live.log"]["storageType"] == "link", "live.log is not a link after the task")
    return f"{len(listed)} artifacts, {storage} storage, missing one is an error artifact"


async def docker_task(worker: Worker) -> str:
    await worker.register()
    payload = {
        "image": BUSYBOX,
        "command": ["/bin/sh", "-c", "echo in-container-$((6*7)); echo DOCKER > /out.txt"],
        "maxRunTime": 120,
        "artifacts": {"public/out.txt": {"type": "file", "path": "/out.txt"}},
    }
    task_id = await worker.create(payload)
    await worker.start()
    await worker.run()
    log = await completed(worker, task_id)
    expect("in-container-42" in log, "container output missing")
    expect(await worker.artifact(task_id, "public/out.txt") == b"DOCKER\n", "docker artifact content")
    return "container ran, artifact uploaded"


async def docker_cache(worker: Worker) -> str:
    """A docker cache reused by the next task; the purge-cache poll meets a deployment without that service."""
    await worker.register(numberOfTasksToRun=2)
    name = f"checks-{worker.dep.tag}"

    def payload(script: str) -> dict[str, Any]:
        return {"image": BUSYBOX, "command": ["/bin/sh", "-c", script], "maxRunTime": 120, "cache": {name: "/c"}}

    scopes = [f"docker-worker:cache:{name}"]
    first = await worker.create(payload("echo kept-$((6*7)) > /c/file"), scopes=scopes)
    second = await worker.create(payload("cat /c/file"), scopes=scopes)
    await worker.start()
    await worker.run()
    await completed(worker, first)
    expect("kept-42" in await completed(worker, second), "the second task did not find the cache's content")
    polled = "purge-cache requests" in worker.log()
    return "cache reused" + ("; purge-cache absent here: polled, warned, tasks unaffected" if polled else "")


async def capacity_two(worker: Worker) -> str:
    await worker.register(capacity=2, numberOfTasksToRun=2)
    meeting = worker.dir / "meeting"
    meeting.mkdir(parents=True)
    # each task announces itself and waits until the other one is there: only concurrent runs complete
    script = (
        f"touch {meeting}/$TASK_ID; n=0; while [ $(ls {meeting} | wc -l) -lt 2 ]; do "
        "n=$((n+1)); [ $n -gt 600 ] && exit 3; sleep 0.1; done; echo both-running"
    )
    ids = [await worker.create(sh(script)) for _ in range(2)]
    await worker.start()
    await worker.run()
    for task_id in ids:
        expect("both-running" in await completed(worker, task_id), "task did not see its neighbour")
    return "two tasks ran at the same time"


async def live_log_20mb(worker: Worker) -> str:
    await worker.register()
    size = 20 * 1024 * 1024
    # 20 MiB of lines, then a pause so the stream is read while the task still runs
    script = f"head -c {size * 3 // 4} /dev/zero | base64 -w 1023; sleep 2; echo live-log-end"
    task_id = await worker.create(sh(script))
    await worker.start()
    ref = await worker.wait_artifact(task_id, "public/logs/live.log")
    streamed = hashlib.sha256()
    count = 0
    if ref.get("storageType") == "reference":
        async with worker.dep.session.get(ref["url"], timeout=aiohttp.ClientTimeout(total=300)) as resp:
            expect(resp.status == 200, f"live log answered {resp.status}")
            async for chunk in resp.content.iter_any():
                streamed.update(chunk)
                count += len(chunk)
    await worker.run()
    log = await completed(worker, task_id)
    expect("live-log-end" in log, "end of the log missing from the backing log")
    expect(len(log) > size, f"backing log only {len(log)} bytes")
    expect(ref.get("storageType") == "reference", "live.log was never a reference while running")
    backing = log.encode()
    expect(count == len(backing), f"streamed {count} bytes, backing log has {len(backing)}")
    expect(streamed.hexdigest() == hashlib.sha256(backing).hexdigest(), "live stream differs from the backing log")
    return f"{count / 1048576:.1f} MiB streamed live, identical to the backing log"


PROXY_SCRIPT = """
import json, os, sys, urllib.request, urllib.error
base = os.environ["TASKCLUSTER_PROXY_URL"]
def get(path):
    try:
        with urllib.request.urlopen(base + path) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
status, body = get("/api/queue/v1/task/" + os.environ["TASK_ID"])
print("own-task", status, body.get("taskQueueId"))
status, body = get("/api/queue/v1/task/" + os.environ["TASK_ID"] + "/status")
print("status-call", status, body.get("code"))
"""


async def taskcluster_proxy(worker: Worker) -> str:
    await worker.register(taskclusterProxyPort=0)
    payload = sh(
        f"python3 -c '{PROXY_SCRIPT}'", features={"taskclusterProxy": True}, env={"PYTHONDONTWRITEBYTECODE": "1"}
    )
    task_id = await worker.create(payload, scopes=["queue:get-task:*"])
    await worker.start()
    await worker.run()
    log = await completed(worker, task_id)
    expect(f"own-task 200 {worker.queue_id}" in log, f"proxy call to queue.task failed:\n{log[-2000:]}")
    # the proxy signs with the task's scopes only: queue.status needs queue:status:<taskId>, which it lacks
    expect("status-call 403 InsufficientScopes" in log, f"a call beyond task.scopes was not refused:\n{log[-2000:]}")
    return "queue.task through the proxy 200; a call beyond task.scopes 403"


async def chain_of_trust(worker: Worker) -> str:
    key_path = worker.dep.base / "cot.key"
    seed = os.urandom(32)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, base64.b64encode(seed))
    os.close(fd)
    await worker.register(ed25519SigningKeyLocation=str(key_path))
    # generic-worker's insecure engine has no chainOfTrust feature (its schema refuses it): a docker task
    payload = {
        "image": BUSYBOX,
        "command": ["/bin/sh", "-c", "echo signed > /out.txt"],
        "maxRunTime": 120,
        "artifacts": {"public/out.txt": {"type": "file", "path": "/out.txt"}},
        "features": {"chainOfTrust": True},
    }
    task_id = await worker.create(payload)
    await worker.start()
    await worker.run()
    await completed(worker, task_id)
    document = await worker.artifact(task_id, "public/chain-of-trust.json")
    signature = await worker.artifact(task_id, "public/chain-of-trust.json.sig")
    Ed25519PrivateKey.from_private_bytes(seed).public_key().verify(signature, document)
    cot = json.loads(document)
    expect(cot["taskId"] == task_id and cot["runId"] == 0, "document names another run")
    digest = hashlib.sha256(await worker.artifact(task_id, "public/out.txt")).hexdigest()
    expect(cot["artifacts"]["public/out.txt"]["sha256"] == digest, "artifact hash in the document is wrong")
    return "ed25519 signature verifies; artifact sha256 matches"


async def interactive(worker: Worker, docker: bool = False) -> str:
    # docker-worker keeps an interactive container alive 180 s after start and 900 s after the last session:
    # shortened here so the task ends soon after its command
    keep_alive = {"interactiveMinTimeSeconds": 1, "interactiveExpirationAfterSessionSeconds": 1}
    await worker.register(enableInteractive=True, interactivePort=0, **({"dockerConfig": keep_alive} if docker else {}))
    finish = "/finish" if docker else "finish"
    script = f"n=0; while [ ! -e {finish} ]; do n=$((n+1)); [ $n -gt 1200 ] && exit 3; sleep 0.1; done; echo saw-finish"
    if docker:
        # docker-worker's artifact name; the container keeps running while its shell is open
        artifact = "private/docker-worker/shell.html"
        payload = {"image": BUSYBOX, "command": ["/bin/sh", "-c", script], "maxRunTime": 120}
        payload["features"] = {"interactive": True}
    else:
        artifact = SHELL_ARTIFACT
        payload = sh(script, features={"interactive": True}, env={"HOME": "/nonexistent/megalodon-check-home"})
    task_id = await worker.create(payload)
    await worker.start()
    ref = await worker.wait_artifact(task_id, artifact)
    expect(ref.get("storageType") == "reference", f"{artifact} is {ref.get('storageType')}")
    socket_url = urllib.parse.parse_qs(urllib.parse.urlsplit(ref["url"]).query)["socketUrl"][0]
    output = bytearray()
    async with worker.dep.session.ws_connect(socket_url) as ws:
        await ws.send_bytes(b"\x02" + struct.pack("<HH", 24, 80))
        # the marker is printed after the touch: closing the socket ends the shell, so wait for it
        await ws.send_bytes(b"\x01" + f"echo A$((6*7))B; touch {finish}; echo T$((1+1))DONE\r".encode())
        give_up = time.monotonic() + 60
        while b"T2DONE" not in output:
            expect(time.monotonic() < give_up, f"shell output never showed T2DONE: {bytes(output)[-500:]!r}")
            msg = await ws.receive(timeout=60)
            expect(msg.type == aiohttp.WSMsgType.BINARY, f"session ended ({msg.type}) early: {bytes(output)!r}")
            output += msg.data
    expect(b"A42B" in output, f"the shell did not run the command: {bytes(output)[-500:]!r}")
    await worker.run()
    expect("saw-finish" in await completed(worker, task_id), "the shell's command did not reach the task")
    return f"{artifact} reference created; websocket shell ran a command in the task"


async def role_scopes(worker: Worker) -> str:
    role = f"megalodon-checks/{worker.dep.tag}/cache-user"
    await worker.dep.auth.createRole(role, {"description": "real check", "scopes": ["generic-worker:cache:rolecache"]})
    await worker.register(numberOfTasksToRun=2)
    mounts = [{"directory": "c", "cacheName": "rolecache"}]
    good = await worker.create(sh("echo cached > c/f; cat c/f", mounts=mounts), scopes=[f"assume:{role}"])
    other = [{"directory": "c", "cacheName": "not-in-role"}]
    bad = await worker.create(sh("true", mounts=other), scopes=[f"assume:{role}"])
    await worker.start()
    await worker.run()
    await completed(worker, good)
    refused = await worker.resolved(bad)
    expect(
        (refused["state"], refused.get("reasonResolved")) == ("exception", "malformed-payload"),
        f"a cache outside the role ran: {refused}",
    )
    expect("generic-worker:cache:not-in-role" in await worker.log_text(bad), "refusal does not name the scope")
    await worker.dep.auth.deleteRole(role)
    return "cache scope held through assume: accepted; a scope outside the role refused by name"


async def role_scopes_without_expand(worker: Worker) -> str:
    """A deployment that forgot auth:expand-scopes for its workers: the task cannot be checked."""
    worker.expand_role = False
    role = f"megalodon-checks/{worker.dep.tag}/cache-user-2"
    await worker.dep.auth.createRole(role, {"description": "real check", "scopes": ["generic-worker:cache:rolecache"]})
    await worker.register()
    mounts = [{"directory": "c", "cacheName": "rolecache"}]
    task_id = await worker.create(sh("true", mounts=mounts), scopes=[f"assume:{role}"])
    await worker.start()
    await worker.run()
    run = await worker.resolved(task_id)
    await worker.dep.auth.deleteRole(role)
    log = await worker.log_text(task_id)
    # generic-worker: "presumably we couldn't expand assume:* scopes due to auth service unavailability"
    expect(
        (run["state"], run.get("reasonResolved")) == ("exception", "resource-unavailable"),
        f"expected exception/resource-unavailable, got {run}",
    )
    expect("auth:expand-scopes" in log, f"the task log does not name the missing scope:\n{log[-1500:]}")
    return "exception/resource-unavailable, the task log names auth:expand-scopes"


async def cancel_then_report(worker: Worker) -> str:
    """Cancelled between reclaims: the worker finishes, reportCompleted answers 409, the worker moves on."""
    await worker.register()
    task_id = await worker.create(sh("echo started; sleep 8; echo done"))
    await worker.start()
    await worker.running(task_id)
    await worker.dep.queue.cancelTask(task_id)
    await worker.run()
    run = (await worker.status(task_id))["runs"][0]
    expect((run["state"], run.get("reasonResolved")) == ("exception", "canceled"), f"run is {run}")
    log = worker.log()
    expect("run was cancelled" in log, f"worker log does not say the run was cancelled:\n{log[-2000:]}")
    expect("Traceback" not in log, "a traceback in the worker log")
    return "409 on reportCompleted logged as 'run was cancelled', worker exited 0"


async def cancel_at_reclaim(worker: Worker) -> str:
    """Cancelled and noticed at the next reclaim (claimTimeout 1200 s: the first reclaim is ~17 min later)."""
    await worker.register(maxTaskRunTime=3600)
    task_id = await worker.create(sh("echo started; sleep 1500", maxRunTime=1800))
    await worker.start()
    await worker.running(task_id)
    await worker.dep.queue.cancelTask(task_id)
    started = time.monotonic()
    code = await worker.wait(bound=1500)
    expect(code == 0, f"worker exited {code}")
    log = worker.log()
    expect("reclaimTask answered 409" in log, f"no reclaim 409 in the worker log:\n{log[-2000:]}")
    return f"task killed {time.monotonic() - started:.0f} s after the cancel (at the reclaim)"


async def sigterm(worker: Worker) -> str:
    await worker.register()
    task_id = await worker.create(sh("echo started; sleep 300"))
    await worker.start()
    await worker.running(task_id)
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    code = await worker.wait(bound=60)
    expect(code == 72, f"worker exited {code} after SIGTERM, not 72")
    status = await worker.status(task_id)
    run = status["runs"][0]
    expect((run["state"], run.get("reasonResolved")) == ("exception", "worker-shutdown"), f"run 0 is {run}")
    expect(len(status["runs"]) == 2 and status["runs"][1]["reasonCreated"] == "retry", "no retry run scheduled")
    await worker.dep.queue.cancelTask(task_id)
    return "exit 72, run resolved exception/worker-shutdown, queue scheduled the retry"


async def sigterm_long_poll(worker: Worker) -> str:
    """SIGTERM while an idle capacity-2 worker waits in claimWork (the real long poll lasts 20 s)."""
    await worker.register(capacity=2)
    await worker.start()

    async def polling() -> bool:
        return "started:" in worker.log()

    await until(polling, "worker started")
    await asyncio.sleep(2)  # well inside its first long poll
    assert worker.proc is not None
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = await worker.wait(bound=60)
    took = time.monotonic() - sent
    expect(code == 72, f"worker exited {code} after SIGTERM, not 72")
    # the long poll would have lasted ~18 s more: an exit well before that means it was abandoned
    expect(took < 10, f"exit took {took:.1f} s: the claimWork long poll was waited out")
    return f"exit 72 {took:.2f} s after SIGTERM, mid long poll"


async def drain(worker: Worker) -> str:
    git = await asyncio.create_subprocess_exec(
        "git", "-C", str(REPO), "log", "--oneline", "-i", "--grep", "drain", stdout=asyncio.subprocess.PIPE
    )
    landed, _ = await git.communicate()
    if not landed.strip():
        raise Skipped("drain (SIGUSR1) has not landed (git log names no drain commit)")
    await worker.register(numberOfTasksToRun=5)
    first = await worker.create(sh("echo started; sleep 5; echo finished"))
    await worker.start()
    await worker.running(first)
    second = await worker.create(sh("echo should-not-run"))
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGUSR1)
    code = await worker.wait(bound=120)
    expect(code == 0, f"worker exited {code} after SIGUSR1")
    await completed(worker, first)
    expect((await worker.status(second))["state"] == "pending", "a task was claimed while draining")
    await worker.dep.queue.cancelTask(second)
    return "running task completed, nothing new claimed, exit 0"


async def run_task_flows(worker: Worker) -> str:
    raise Skipped("megalodon run-task runs its own embedded double by design: double-only")


SCENARIOS: dict[str, Callable[[Worker], Awaitable[str]]] = {
    "native-s3": lambda w: native_artifacts(w, "s3"),
    "native-object": lambda w: native_artifacts(w, "object"),
    "docker": docker_task,
    "docker-cache": docker_cache,
    "capacity-2": capacity_two,
    "livelog-20mb": live_log_20mb,
    "proxy": taskcluster_proxy,
    "chain-of-trust": chain_of_trust,
    "interactive": interactive,
    "interactive-docker": lambda w: interactive(w, docker=True),
    "role-scopes": role_scopes,
    "role-scopes-no-expand": role_scopes_without_expand,
    "cancel": cancel_then_report,
    "sigterm": sigterm,
    "sigterm-long-poll": sigterm_long_poll,
    "drain": drain,
    "run-task": run_task_flows,
}
SLOW = {"cancel-reclaim": cancel_at_reclaim}


async def one(dep: Deployment, name: str, scenario: Callable[[Worker], Awaitable[str]]) -> tuple[str, str, str]:
    worker = Worker(dep, name)
    started = time.monotonic()
    try:
        detail = await scenario(worker)
        outcome = "PASS"
    except Skipped as exc:
        outcome, detail = "SKIP", str(exc)
    except CheckFailed as exc:
        outcome, detail = "FAIL", str(exc)
    except Exception as exc:
        outcome, detail = "FAIL", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    finally:
        await worker.stop()
    return outcome, name, f"({time.monotonic() - started:.1f} s) {detail}"


async def main_async(args: argparse.Namespace) -> int:
    try:
        root_url = os.environ["ROOT_URL"]
        root = {"clientId": os.environ["CLIENT_ID"], "accessToken": os.environ["ACCESS_TOKEN"]}
    except KeyError as missing:
        print(f"environment variable {missing} is not set: source /tmp/real-tc/env first", file=sys.stderr)
        return 2
    tag = slugid.nice()[:6].lower().replace("_", "x").replace("-", "y")
    tag = "c" + re.sub(r"[^a-z0-9]", "x", tag)
    base = Path("/tmp/megalodon-real-checks") / tag
    base.mkdir(parents=True)
    chosen = {**SCENARIOS, **(SLOW if args.slow else {})}
    if args.k:
        chosen = {n: s for n, s in {**SCENARIOS, **SLOW}.items() if any(k in n for k in args.k)}
    print(f"real Taskcluster at {root_url}; tag {tag}; scenarios: {', '.join(chosen)}", flush=True)
    async with aiohttp.ClientSession() as session:
        dep = Deployment(root_url, root, tag, base, session)
        await dep.auth.createRole(
            f"worker-pool:{PROVISIONER}/{tag}-*",
            {"description": "megalodon real checks: workers may expand task scopes", "scopes": ["auth:expand-scopes"]},
        )
        failed = 0
        sem = asyncio.Semaphore(args.parallel)

        async def limited(name: str, scenario: Callable[[Worker], Awaitable[str]]) -> None:
            nonlocal failed
            async with sem:
                outcome, _, detail = await one(dep, name, scenario)
            failed += outcome == "FAIL"
            print(f"{outcome} {name} {detail}", flush=True)

        try:
            await asyncio.gather(*(limited(n, s) for n, s in chosen.items()))
        finally:
            await dep.auth.deleteRole(f"worker-pool:{PROVISIONER}/{tag}-*")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{len(chosen) - failed}/{len(chosen)} scenarios did not fail", flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-k", action="append", help="run only scenarios whose name contains this (repeatable)")
    parser.add_argument("--slow", action="store_true", help="also cancel-reclaim (~17 min: the real claimTimeout)")
    parser.add_argument("--keep", action="store_true", help="keep /tmp/megalodon-real-checks/<tag>")
    parser.add_argument("--parallel", type=int, default=2, help="scenarios at a time (default 2: a 2-core machine)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
