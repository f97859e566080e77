"""docker-worker payloads through the whole worker path, against the real Docker engine.

Every test runs an unmodified :class:`~megalodon_core.worker.Worker` against the in-process Taskcluster
double over HTTP: claim, image, container, live output, artifacts, caches, resolution.  The only test-side
addition is :class:`RecordingDockerExecutor`, the production executor plus a look at the container just
before cleanup removes it (HostConfig of privileged containers, which cannot start on every kernel).

Image artifacts are served *by the double*: an upstream task is created with root credentials, claimed
with worker credentials, and the ``docker save`` tarball of the busybox test image, compressed in
process, is uploaded as its artifact with the claim's task credentials (s3 PUT or object storage).

Needs ``.ci/docker-setup.sh``; tests fail (never skip) when the engine is unreachable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import docker
import docker.errors
import pytest
import taskcluster
import taskcluster.aio

from megalodon_core import hookimpl
from megalodon_core.config import parse_config
from megalodon_core.contracts import ExecutorInfo
from megalodon_core.double import TaskclusterDouble
from megalodon_core.plugins import PluginHost
from megalodon_core.task import TaskRun
from megalodon_core.testing import PROVISIONER, Harness, Outcome, make_task
from megalodon_core.timefmt import iso, parse_iso, utcnow
from megalodon_core.upload import Publisher
from megalodon_core.worker import Worker
from megalodon_docker.executor import LABEL, LABEL_OWNER, LABEL_WORKER, DockerExecutor, DockerRun
from megalodon_docker.payload import payload_json_schema
from megalodon_docker.settings import DockerConfig

pytestmark = pytest.mark.docker

BUSYBOX = "megalodon-test/busybox:latest"
REGISTRY_BUSYBOX = "127.0.0.1:5000/megalodon-test/busybox:latest"
#: The worker identity of this session's docker workers, hence the label of every container they create.
#: Unique per session: a worker sweeps its label's containers at start, so two test processes sharing an
#: engine (CI shards, a developer's second terminal) must never share it.
WORKER_GROUP = "test-group"
WORKER_ID = f"docker-e2e-{uuid.uuid4().hex[:10]}"
WORKER_LABEL = f"{WORKER_GROUP}/{WORKER_ID}"
STAMP = r"\[taskcluster \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z\]"
REPO = Path(__file__).resolve().parents[2]


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def payload(script: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"image": BUSYBOX, "command": sh(script), "maxRunTime": 30}
    out.update(extra)
    return out


# -- the recording executor -----------------------------------------------------------------------------------
class RecordingDockerRun(DockerRun):
    """The production per-run object; records the run's image, container and the container's inspect."""

    async def run(self) -> None:
        received = RecordingDockerExecutor.live.setdefault(self.task_run.task_id, bytearray())
        self.task_run.log.add_sink(received.extend)
        await super().run()

    async def cleanup(self) -> None:
        inspect = None
        if self.container_id is not None:
            inspect = await self.executor.call(self.executor.client.api.inspect_container, self.container_id)
        RecordingDockerExecutor.records[self.task_run.task_id] = {
            "image": self.task_run.data.image,
            "container_id": self.container_id,
            "inspect": inspect,
        }
        await super().cleanup()


class RecordingDockerExecutor(DockerExecutor):
    """The production executor, whose runs record what they did before their container is removed."""

    records: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Bytes the task log received so far, by task id, as a live-log sink sees them.
    live: ClassVar[dict[str, bytearray]] = {}

    def new_run(self, run: TaskRun) -> DockerRun:
        return RecordingDockerRun(self, run)


class RecordingPlugin:
    """Registers the recording executor as ``docker`` and the ``dockerConfig`` config key."""

    __name__ = "recording-docker"

    @hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [
            ExecutorInfo(
                name="docker",
                factory=RecordingDockerExecutor,
                summary="docker executor recording containers for tests",
                payload_schema=payload_json_schema,
                accepts=lambda p: isinstance(p, dict) and "image" in p,
            )
        ]

    @hookimpl
    def megalodon_config_fields(self) -> dict[str, tuple[Any, Any]]:
        return {"dockerConfig": (DockerConfig, DockerConfig())}


def record(task_id: str) -> dict[str, Any]:
    return RecordingDockerExecutor.records[task_id]


# -- running workers ----------------------------------------------------------------------------------------
class DockerRunner:
    """Create docker tasks, run a (recording) docker worker over them, read the outcomes back."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def worker(
        self,
        worker_type: str,
        *,
        docker_config: dict[str, Any] | None = None,
        plugins: PluginHost | None = None,
        **cfg: Any,
    ) -> Worker:
        host = plugins or PluginHost(load_entry_points=False, plugins=[RecordingPlugin()])
        # requiredDiskSpaceMegabytes 0: image GC under disk pressure would untag the shared test image on a
        # small CI disk and break every later test; GC has its own unit test.
        settings = {"executor": "docker", "requiredDiskSpaceMegabytes": 0, **cfg}
        raw = self.harness.config(worker_type, **settings)
        creds = self.harness.double.worker_credentials(PROVISIONER, worker_type, WORKER_GROUP, WORKER_ID)
        raw.update(
            clientId=creds["clientId"], accessToken=creds["accessToken"], workerGroup=WORKER_GROUP, workerId=WORKER_ID
        )
        if creds.get("certificate"):
            raw["certificate"] = creds["certificate"]
        if docker_config is not None:
            raw["dockerConfig"] = docker_config
        return Worker(parse_config(raw, host.config_fields()), host)

    async def run_many(
        self,
        payloads: list[dict[str, Any]],
        *,
        tasks: list[dict[str, Any]] | None = None,
        during: Callable[[list[str]], Awaitable[None]] | None = None,
        docker_config: dict[str, Any] | None = None,
        plugins: PluginHost | None = None,
        **cfg: Any,
    ) -> list[Outcome]:
        worker_type = self.harness.worker_type()
        overrides = tasks or [{} for _ in payloads]
        ids = [await self.harness.create(p, worker_type, **o) for p, o in zip(payloads, overrides, strict=True)]
        cfg.setdefault("numberOfTasksToRun", len(ids))
        worker = self.worker(worker_type, docker_config=docker_config, plugins=plugins, **cfg)
        running = asyncio.create_task(worker.run())
        if during is not None:
            await during(ids)
        code = await asyncio.wait_for(running, 120)
        return [await self.harness.outcome(task_id, code) for task_id in ids]

    async def run(self, payload: dict[str, Any], *, task: dict[str, Any] | None = None, **kw: Any) -> Outcome:
        (out,) = await self.run_many([payload], tasks=[task or {}], **kw)
        return out


def state0(out: Outcome) -> tuple[str, str]:
    """(state, reason) of run 0 (a retried task has a pending run 1 after it)."""
    run = out.status["runs"][0]
    return run["state"], run.get("reasonResolved", "")


def artifact(harness: Harness, out: Outcome, name: str) -> tuple[bytes, dict[str, Any]]:
    return harness.double.artifact_content(out.task_id, 0, name)


@pytest.fixture
def runner(harness: Harness, docker_client: docker.DockerClient) -> DockerRunner:
    return DockerRunner(harness)


@pytest.fixture(autouse=True)
def containers_always_removed(docker_client: docker.DockerClient) -> Iterator[None]:
    """Every test ends with no container of the test worker left (crash sweep, cleanup, kill paths)."""
    yield
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL_WORKER}={WORKER_LABEL}"})
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture
def image_tags(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Tags a test made (artifact images are tagged ``<md5>:latest``), removed afterwards.

    Only names the test knows are removed: other processes may share the engine and their images.
    """
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag)
        except docker.errors.APIError:
            pass


@pytest.fixture
def anonymous_reads_public_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the double's anonymous identity the scope real deployments' ``anonymous`` role grants.

    docker-worker downloads ``public/`` image artifacts without credentials; the double's anonymous caller
    has no scopes at all, which no deployment running docker-worker tasks has.
    """
    from megalodon_core.double import auth

    monkeypatch.setattr(auth, "ANONYMOUS", auth.Identity(None, ("queue:get-artifact:public/*",)))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


async def publish_upstream(
    double: TaskclusterDouble,
    session: aiohttp.ClientSession,
    files: dict[str, tuple[Path, bool]],
) -> str:
    """An upstream task whose artifacts are ``files`` (name -> (local file, via object storage)).

    Created with root credentials, claimed with worker credentials, uploaded with the claim's task
    credentials through the core's publisher (s3 createArtifact + PUT, or the object service), completed.
    """
    root_opts = {"rootUrl": double.root_url, "credentials": double.root_credentials}
    root = taskcluster.aio.Queue(root_opts, session=session)
    worker_type = f"image-builder-{taskcluster.slugId()[:8].replace('_', 'x').replace('-', 'y').lower()}"
    task_id: str = taskcluster.slugId()
    await root.createTask(task_id, make_task({"builds": "an image"}, worker_type))
    creds = double.worker_credentials(PROVISIONER, worker_type, "builders", "builder-1")
    wq = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": creds}, session=session)
    claims = await wq.claimWork(
        f"{PROVISIONER}/{worker_type}", {"tasks": 1, "workerGroup": "builders", "workerId": "builder-1"}
    )
    (claim,) = claims["tasks"]
    task_creds = claim["credentials"]
    tq = taskcluster.aio.Queue({"rootUrl": double.root_url, "credentials": task_creds}, session=session)
    publisher = Publisher(
        lambda: tq,
        lambda c: taskcluster.aio.Object({"rootUrl": double.root_url, "credentials": c}, session=session),
        session,
    )
    expires = parse_iso(claim["task"]["expires"])
    for name, (path, object_storage) in files.items():
        await publisher.file(
            task_id,
            0,
            name,
            path,
            content_type="application/octet-stream",
            content_encoding="identity",
            expires=expires,
            object_storage=object_storage,
        )
    await tq.reportCompleted(task_id, "0")
    return task_id


# == log format, environment, container settings ==============================================================
async def test_hello_log_format_env_and_container_settings(runner: DockerRunner, busybox_id: str) -> None:
    script = (
        "echo hello; env | sort; cat /etc/hosts; echo TTY=$(tty); df -k /dev/shm | tail -1; "
        "mkdir -p /out && echo result > /out/r.txt"
    )
    out = await runner.run(
        payload(
            script,
            env={"MYVAR": "from payload", "TASK_ID": "overridden", "TASKCLUSTER_WORKER_TYPE": "overridden"},
            artifacts={"public/r.txt": {"type": "file", "path": "/out/r.txt"}},
        ),
        instanceType="m5.large",
        publicIP="203.0.113.7",
        workerLocation='{"cloud":"static"}',
    )
    assert out.state == "completed", out.log
    assert out.exit_code == 0
    pool = out.status["taskQueueId"]
    lines = out.log.splitlines()
    header = [
        f"Task ID: {out.task_id}",
        f"Worker ID: {WORKER_ID}",
        f"Worker Group: {WORKER_GROUP}",
        "Worker Node Type: m5.large",
        f"Worker Pool: {pool}",
        "Worker Version: megalodon ",
        "Public IP: 203.0.113.7",
        "Hostname: ",
    ]
    for line, expected in zip(lines, header, strict=False):
        assert re.match(rf"{STAMP} {re.escape(expected)}", line), (line, expected)
    # Live output from the pty (CRLF line ends) between docker-worker's markers, then the footer.
    assert re.search(rf"{STAMP} === Task Starting ===\nhello\r\n", out.log)
    assert re.search(
        rf"\n{STAMP} === Task Finished ===\n{STAMP} Successful task run with exit code: 0 completed in "
        r"\d+\.\d+ seconds\n$",
        out.log,
    )
    assert "[taskcluster:error]" not in out.log
    # docker-worker's forced variables win over the payload's.
    env = dict(re.findall(r"^([A-Z_]+)=(.*)\r$", out.log, re.M))
    assert env["TASK_ID"] == out.task_id
    assert env["RUN_ID"] == "0"
    assert env["TASKCLUSTER_ROOT_URL"] == runner.harness.double.root_url
    assert env["TASKCLUSTER_WORKER_TYPE"] == pool.split("/")[1]
    assert env["TASKCLUSTER_WORKER_POOL"] == pool
    assert env["TASKCLUSTER_WORKER_GROUP"] == WORKER_GROUP
    assert env["TASKCLUSTER_WORKER_LOCATION"] == '{"cloud":"static"}'
    assert env["TASKCLUSTER_INSTANCE_TYPE"] == "m5.large"
    assert env["TASKCLUSTER_PUBLIC_IP"] == "203.0.113.7"
    assert env["MYVAR"] == "from payload"
    assert re.search(r"^127\.0\.0\.1\s+localhost\.localdomain\r$", out.log, re.M)
    assert re.search(r"^TTY=/dev/pts/\d+\r$", out.log, re.M)
    shm_kib = int(re.search(r"^shm\s+(\d+)", out.log, re.M).group(1))  # type: ignore[union-attr]
    assert abs(shm_kib * 1024 - 1_800_000_000) < 4096  # tmpfs rounds up to whole pages
    # Logs: gzip backing log plus a link, as docker-worker's bulk + live logs end up.
    backing = out.artifacts["public/logs/live_backing.log"]
    assert backing["storageType"] == "s3" and backing["contentType"] == "text/plain; charset=utf-8"
    assert artifact(runner.harness, out, "public/logs/live_backing.log")[1]["contentEncoding"] == "gzip"
    assert out.artifacts["public/logs/live.log"]["storageType"] == "link"
    assert artifact(runner.harness, out, "public/r.txt")[0] == b"result\n"
    # Facts for chain of trust, and the container as created.
    rec = record(out.task_id)
    assert rec["image"].image_id == busybox_id
    host = rec["inspect"]["HostConfig"]
    assert host["ShmSize"] == 1_800_000_000
    assert host["ExtraHosts"] == ["localhost.localdomain:127.0.0.1"]
    assert host["Privileged"] is False
    assert rec["inspect"]["Config"]["Tty"] is True
    assert rec["inspect"]["Config"]["Labels"][LABEL] == f"{out.task_id}/0"


async def test_exit_codes_retry_and_silent_output(runner: DockerRunner) -> None:
    """Failure footer; onExitStatus.retry; output after a silence longer than the engine API timeout."""
    failing, retried = await runner.run_many(
        [
            payload("echo early; sleep 3; echo late-output; exit 5"),
            payload("exit 3", onExitStatus={"retry": [3]}),
        ],
        docker_config={"apiTimeoutSeconds": 1.5},
    )
    assert state0(failing) == ("failed", "failed"), failing.log
    assert "late-output" in failing.log, "the output stream was cut by the API timeout"
    assert re.search(rf"{STAMP} Unsuccessful task run with exit code: 5 completed in", failing.log)
    assert failing.log.rstrip().endswith("[taskcluster:error] Task exited with code 5")
    assert state0(retried) == ("exception", "intermittent-task"), retried.log
    assert retried.status["runs"][1]["reasonCreated"] == "task-retry"


# == order of checks ===========================================================================================
async def test_order_of_checks(runner: DockerRunner, tmp_path: Path) -> None:
    """Unknown features, then schema, then artifact expiry, then image, then scopes (docker-worker's order)."""
    later = iso(utcnow() + dt.timedelta(days=30))
    missing_image = "127.0.0.1:5000/megalodon-test/no-such-image:1"
    outs = await runner.run_many(
        [
            # unknown feature beats a schema error: failed, not malformed-payload
            {"image": BUSYBOX, "maxRunTime": "hello", "features": {"bogus": True}},
            # schema error beats the artifact expiry check
            {
                "image": BUSYBOX,
                "maxRunTime": "hello",
                "artifacts": {"public/a": {"type": "file", "path": "/a", "expires": later}},
            },
            # artifact expiry beats the image: nothing pulled
            {
                "image": missing_image,
                "maxRunTime": 10,
                "artifacts": {"public/a": {"type": "file", "path": "/a", "expires": later}},
            },
            # image beats scopes: the pull is rejected before the cache scope is looked at
            {"image": missing_image, "maxRunTime": 10, "cache": {"no-scope": "/c"}},
            # scopes: no cache directory is created
            payload("true", cache={"no-scope": "/c"}),
            # features needing a plugin this worker lacks
            payload("true", features={"taskclusterProxy": True}),
            payload("true", features={"chainOfTrust": True}),
            payload("true", features={"interactive": True}),
        ],
        docker_config={"pullAttempts": 2, "pullBaseDelaySeconds": 0.05},
    )
    unknown, schema, expiry, image, scopes, *plugin_features = outs
    assert state0(unknown) == ("failed", "failed")
    assert "unknown features: bogus" in unknown.log
    assert state0(schema) == ("exception", "malformed-payload")
    assert "`task.payload` format is invalid json schema errors:" in schema.log
    assert "maxRunTime" in schema.log and "expires" not in schema.log
    assert '"\\nSchema Validation Failed!\\nRejecting Schema: ' in schema.log  # docker-worker's JSON list
    assert state0(expiry) == ("exception", "malformed-payload")
    assert "Artifact expiration for 'public/a' must not be greater than task expiration. Artifact" in expiry.log
    assert "GMT+0000 (Coordinated Universal Time)' but task expiration is '" in expiry.log  # JS Date text
    assert "Pulling docker image" not in expiry.log
    assert state0(image) == ("exception", "malformed-payload"), image.log
    assert "(attempt 1/2)" not in image.log, "an unknown image was retried"
    assert "Pulling docker image has failed." in image.log
    assert "Insufficient scopes" not in image.log
    assert state0(scopes) == ("failed", "failed")
    assert "Docker configuration could not be created." in scopes.log
    assert "Insufficient scopes to attach cache volumes." in scopes.log
    assert "=== Task Starting ===" not in scopes.log
    assert not list((tmp_path / "caches").glob("docker-worker/no-scope/*"))
    for out, name in zip(plugin_features, ("taskclusterProxy", "chainOfTrust", "interactive"), strict=True):
        assert state0(out) == ("exception", "malformed-payload"), out.log
        assert f'feature "{name}"' in out.log
    # None of them ever got a container.
    assert all(record(o.task_id)["inspect"] is None for o in outs if o.task_id in RecordingDockerExecutor.records)


# == capabilities ==============================================================================================
async def test_capabilities_scopes_and_devices(runner: DockerRunner) -> None:
    def caps(script: str, scopes: list[str], **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return payload(script, **extra), {"scopes": scopes}

    cases = [
        caps("true", [], capabilities={"privileged": True}),
        caps("true", ["docker-worker:capability:privileged"], capabilities={"privileged": True}),
        caps("true", [], features={"allowPtrace": True}),
        caps("grep CapEff /proc/self/status", ["docker-worker:feature:allowPtrace"], features={"allowPtrace": True}),
        caps("test -c /dev/kvm && echo KVM-OK", [], capabilities={"devices": {"kvm": True}}),
        caps(
            "test -c /dev/kvm && echo KVM-OK",
            ["docker-worker:capability:device:kvm"],
            capabilities={"devices": {"kvm": True}},
        ),
        caps("true", ["docker-worker:capability:device:*"], capabilities={"devices": {"loopbackAudio": True}}),
        caps("true", ["docker-worker:capability:device:*"], capabilities={"devices": {"loopbackVideo": True}}),
        caps(
            "echo shm-ok",
            ["docker-worker:capability:device:hostSharedMemory"],
            capabilities={"devices": {"hostSharedMemory": True}},
        ),
    ]
    outs = await runner.run_many([c[0] for c in cases], tasks=[c[1] for c in cases])
    priv_noscope, priv_disabled, ptrace_noscope, ptrace, kvm_noscope, kvm, audio, video, shm = outs
    assert state0(priv_noscope) == ("failed", "failed")
    assert "Insufficient scopes to run task in privileged mode." in priv_noscope.log
    assert state0(priv_disabled) == ("failed", "failed")
    assert "Worker config dockerConfig.allowPrivileged is false." in priv_disabled.log
    assert state0(ptrace_noscope) == ("failed", "failed")
    assert "Insufficient scopes to use 'allowPtrace' feature.  Try adding docker-worker:feature:allowPtrace" in (
        ptrace_noscope.log
    )
    assert ptrace.state == "completed", ptrace.log
    cap_eff = int(re.search(r"CapEff:\s+([0-9a-f]+)", ptrace.log).group(1), 16)  # type: ignore[union-attr]
    assert cap_eff & (1 << 19), "CAP_SYS_PTRACE (bit 19) missing"
    assert record(ptrace.task_id)["inspect"]["HostConfig"]["CapAdd"] == ["SYS_PTRACE"]
    assert state0(kvm_noscope) == ("failed", "failed")
    assert "Insufficient scopes to attach device 'kvm'." in kvm_noscope.log
    assert kvm.state == "completed", kvm.log
    assert "KVM-OK" in kvm.log
    for out, name in ((audio, "loopbackAudio"), (video, "loopbackVideo")):
        assert state0(out) == ("exception", "malformed-payload"), out.log
        assert f"Device '{name}' was requested but this worker has no {name} device" in out.log
    assert shm.state == "completed", shm.log
    assert "/dev/shm:/dev/shm" in record(shm.task_id)["inspect"]["HostConfig"]["Binds"]


async def test_privileged_container_when_allowed(runner: DockerRunner) -> None:
    """With scope and config the container is created privileged.

    Some kernels (these VMs) refuse to start privileged containers; the created container's HostConfig is
    what megalodon controls, so that is asserted, and a start failure must be docker-worker's.
    """
    out = await runner.run(
        payload("mount -t tmpfs none /mnt && echo MOUNTED", capabilities={"privileged": True}),
        task={"scopes": [f"docker-worker:capability:privileged:{PROVISIONER}/*"]},
        docker_config={"allowPrivileged": True},
    )
    assert record(out.task_id)["inspect"]["HostConfig"]["Privileged"] is True
    if out.state == "completed":
        assert "MOUNTED" in out.log
    else:
        assert out.state == "failed"
        assert "Failure to properly start execution environment." in out.log
        assert "Unsuccessful task run with exit code: -1" in out.log


# == images ====================================================================================================
async def test_registry_image_pulled_only_when_absent_with_private_credentials(
    runner: DockerRunner, docker_client: docker.DockerClient, busybox_id: str
) -> None:
    try:
        docker_client.images.remove(REGISTRY_BUSYBOX)
    except docker.errors.ImageNotFound:
        pass
    try:
        outs = await runner.run_many(
            [payload("echo pulled-ok", image=REGISTRY_BUSYBOX)] * 3,
            tasks=[
                {"scopes": []},
                {"scopes": ["docker-worker:image:127.0.0.1:5000/*"]},
                {"scopes": ["docker-worker:image:127.0.0.1:5000/megalodon-test/busybox:latest"]},
            ],
            docker_config={"registries": {"127.0.0.1:5000": {"username": "user", "password": "secret"}}},
        )
    finally:
        try:
            docker_client.images.get(REGISTRY_BUSYBOX)
        except docker.errors.ImageNotFound:
            docker_client.images.get(BUSYBOX).tag(REGISTRY_BUSYBOX)
    unauthorized, pulled, present = outs
    assert state0(unauthorized) == ("failed", "failed")
    assert "Not authorized to use" in unauthorized.log
    assert "docker-worker:image:127.0.0.1:5000/megalodon-test/busybox:latest" in unauthorized.log
    assert pulled.state == "completed", pulled.log
    assert f"Pulling docker image {REGISTRY_BUSYBOX}" in pulled.log
    assert present.state == "completed", present.log
    assert "Pulling docker image" not in present.log, "a present image was pulled again"
    assert record(pulled.task_id)["image"].image_id == busybox_id
    assert "secret" not in pulled.log


async def test_artifact_images_from_the_double(
    anonymous_reads_public_artifacts: None,
    runner: DockerRunner,
    session: aiohttp.ClientSession,
    image_files: dict[str, Path],
    busybox_id: str,
    image_tags: list[str],
) -> None:
    double = runner.harness.double
    upstream = await publish_upstream(
        double,
        session,
        {
            "public/image.tar.zst": (image_files[".tar.zst"], False),
            "public/image.tar.lz4": (image_files[".tar.lz4"], True),
            "private/image.tar": (image_files[".tar"], False),
        },
    )
    for path in ("public/image.tar.zst", "public/image.tar.lz4", "private/image.tar"):
        image_tags.append(hashlib.md5(f"{upstream}{path}".encode()).hexdigest() + ":latest")
    index = taskcluster.aio.Index({"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session)
    await index.insertTask(
        "project.images.busybox",
        {"taskId": upstream, "rank": 0, "data": {}, "expires": iso(utcnow() + dt.timedelta(days=1))},
    )

    def image(kind: str, path: str) -> dict[str, Any]:
        if kind == "indexed-image":
            return {"type": kind, "namespace": "project.images.busybox", "path": path}
        return {"type": kind, "taskId": upstream, "path": path}

    cases = [
        (image("task-image", "public/image.tar.zst"), []),  # 0 and 1 run together: one download
        (image("task-image", "public/image.tar.zst"), []),
        (image("task-image", "public/image.tar.lz4"), []),  # object storage
        (image("task-image", "private/image.tar"), []),
        (image("task-image", "private/image.tar"), ["queue:get-artifact:private/image.tar"]),
        (image("indexed-image", "public/image.tar.zst"), []),  # same md5 name? no: same task + path -> cached
        ({"type": "indexed-image", "namespace": "project.images.nope", "path": "public/image.tar"}, []),
    ]
    outs = await runner.run_many(
        [payload("echo image-ok", image=spec) for spec, _ in cases],
        tasks=[{"scopes": scopes} for _, scopes in cases],
        capacity=2,
    )
    zst_a, zst_b, lz4_, private_denied, private_ok, indexed, indexed_missing = outs
    for out, suffix in ((zst_a, ".tar.zst"), (zst_b, ".tar.zst"), (lz4_, ".tar.lz4"), (private_ok, ".tar")):
        assert out.state == "completed", out.log
        assert "image-ok" in out.log
        image = record(out.task_id)["image"]
        assert image.image_id == busybox_id
        assert image.artifact_hash == sha256(image_files[suffix])
        assert re.search(rf"Using image ID {re.escape(busybox_id)}\.", out.log)
    # Concurrent and later uses of one artifact image share one download and load.
    downloads = [o for o in (zst_a, zst_b, indexed) if 'Downloading artifact "public/image.tar.zst"' in o.log]
    assert len(downloads) == 1
    assert "Decompressing downloaded image" in downloads[0].log
    assert indexed.state == "completed", indexed.log
    assert record(indexed.task_id)["image"].artifact_hash == sha256(image_files[".tar.zst"])
    assert state0(private_denied) == ("failed", "failed")
    assert "Not authorized to use" in private_denied.log
    assert "queue:get-artifact:private/image.tar" in private_denied.log
    assert state0(indexed_missing) == ("failed", "failed")
    assert 'Could not find a task associated with "project.images.nope" namespace.' in indexed_missing.log
    # The loaded image is tagged docker-worker's way.
    name = hashlib.md5(f"{upstream}public/image.tar.zst".encode()).hexdigest()
    assert record(zst_a.task_id)["image"].name == f"{name}:latest"


# == artifacts =================================================================================================
async def test_artifacts_file_directory_volume_and_errors(runner: DockerRunner) -> None:
    expires = iso(utcnow() + dt.timedelta(hours=5))
    script = (
        "mkdir -p /out/dir/sub && echo one > /out/dir/a.txt && echo two > /out/dir/sub/b.txt && "
        "ln -s a.txt /out/dir/link && echo f > /out/file.txt && printf '\\211PNG' > /out/pic.png && "
        "head -c 1048576 /dev/zero > /out/big.bin"
    )
    out = await runner.run(
        payload(
            script,
            artifacts={
                "public/file.txt": {"type": "file", "path": "/out/file.txt"},
                "public/pic.png": {"type": "file", "path": "/out/pic.png", "expires": expires},
                "public/big.bin": {"type": "file", "path": "/out/big.bin"},
                "public/dir": {"type": "directory", "path": "/out/dir"},
                "public/vol": {"type": "volume", "path": "/out/dir/sub"},
                "public/missing.txt": {"type": "file", "path": "/out/nope.txt"},
                "public/notafile": {"type": "file", "path": "/out/dir"},
                "public/notadir": {"type": "directory", "path": "/out/file.txt"},
            },
        )
    )
    assert out.state == "completed", out.log  # missing and mistyped artifacts never fail a docker task
    harness = runner.harness
    data, meta = artifact(harness, out, "public/file.txt")
    assert data == b"f\n"
    assert meta["contentType"] == "text/plain" and meta["contentEncoding"] == "gzip"
    data, meta = artifact(harness, out, "public/pic.png")
    assert data == b"\x89PNG"
    assert meta["contentType"] == "image/png" and meta["contentEncoding"] == "identity"
    assert parse_iso(meta["expires"]) == parse_iso(expires)
    assert parse_iso(artifact(harness, out, "public/file.txt")[1]["expires"]) == parse_iso(out.status["expires"])
    assert artifact(harness, out, "public/big.bin")[0] == b"\0" * 1048576
    assert artifact(harness, out, "public/dir/a.txt")[0] == b"one\n"
    assert artifact(harness, out, "public/dir/sub/b.txt")[0] == b"two\n"
    assert "public/dir/link" not in out.artifacts, "symlinks are skipped"
    assert artifact(harness, out, "public/vol/b.txt")[0] == b"two\n"
    missing = out.artifacts["public/missing.txt"]
    assert missing["storageType"] == "error"
    _, meta = artifact(harness, out, "public/missing.txt")
    assert meta["reason"] == "file-missing-on-worker"
    assert meta["message"].startswith('Artifact "public/missing.txt" not found at "/out/nope.txt"')
    _, meta = artifact(harness, out, "public/notafile")
    assert meta["reason"] == "invalid-resource-on-worker"
    assert 'Error uploading "public/notafile". Expected artifact to be a "file" but was "directory"' in out.log
    _, meta = artifact(harness, out, "public/notadir")
    assert meta["reason"] == "invalid-resource-on-worker"
    assert 'Expected artifact to be a "directory" but was "file"' in out.log


# == caches ====================================================================================================
def cache_instances(runner: DockerRunner, name: str) -> list[Path]:
    """The pool's instances of cache ``name`` on disk (the task log shows only the container path)."""
    root = runner.harness.tmp_path / "caches" / "docker-worker" / name
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


async def test_cache_reused_across_tasks_and_purged_on_exit_status(runner: DockerRunner) -> None:
    scopes = {"scopes": ["docker-worker:cache:e2e-*"]}
    writer, reader, fresh = await runner.run_many(
        [
            payload("echo data > /cache/marker", cache={"e2e-cache": "/cache"}),
            payload("cat /cache/marker; exit 7", cache={"e2e-cache": "/cache"}, onExitStatus={"purgeCaches": [7]}),
            payload("test ! -e /cache/marker && echo CLEAN", cache={"e2e-cache": "/cache"}),
        ],
        tasks=[scopes] * 3,
    )
    assert writer.state == "completed", writer.log
    assert state0(reader) == ("failed", "failed")
    assert "data\r\n" in reader.log, "task 2 did not see what task 1 wrote"
    assert 'purging cache "e2e-cache"' in reader.log
    assert len(cache_instances(runner, "e2e-cache")) == 1, "the purged instance is gone; the fresh one stays"
    assert fresh.state == "completed", fresh.log
    assert "CLEAN" in fresh.log


async def test_cache_never_shared_by_running_tasks(runner: DockerRunner) -> None:
    script = "if [ -e /c/busy ]; then echo SHARED; exit 1; fi; touch /c/busy; sleep 2; rm /c/busy"
    scopes = {"scopes": ["docker-worker:cache:shared-name"]}
    first, second = await runner.run_many(
        [payload(script, cache={"shared-name": "/c"})] * 2, tasks=[scopes] * 2, capacity=2
    )
    assert first.state == "completed", first.log
    assert second.state == "completed", second.log
    a, b = (o.status["runs"][0] for o in (first, second))
    assert parse_iso(a["started"]) < parse_iso(b["resolved"]) and parse_iso(b["started"]) < parse_iso(a["resolved"])
    assert len(cache_instances(runner, "shared-name")) == 2


# == lifecycle =================================================================================================
async def test_max_run_time_kills_container_and_skips_artifacts(runner: DockerRunner) -> None:
    started = time.monotonic()
    out = await runner.run(
        payload(
            "echo f > /f.txt; echo before; sleep 30; echo after",
            maxRunTime=2,
            artifacts={"public/f.txt": {"type": "file", "path": "/f.txt"}},
        )
    )
    assert time.monotonic() - started < 20
    assert out.state == "failed", out.log
    assert "before\r\n" in out.log and "after\r\n" not in out.log
    assert "Unsuccessful task run with exit code: -1" in out.log
    assert "[taskcluster:error] Task timeout after 2 seconds. Force killing container." in out.log
    assert "public/f.txt" not in out.artifacts, "docker-worker uploads no artifacts after maxRunTime"
    container_id = record(out.task_id)["container_id"]
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(container_id)


async def test_cancelled_task_container_is_killed(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    async with (
        TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as double,
        aiohttp.ClientSession() as s,
    ):
        runner = DockerRunner(Harness(double, tmp_path, s))

        async def cancel_when_running(ids: list[str]) -> None:
            """Wait for the task's first output to reach the log sinks live, then cancel it."""
            (task_id,) = ids
            for _ in range(200):
                if b"started" in RecordingDockerExecutor.live.get(task_id, b""):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the task's output never reached the log while it ran")
            assert docker_client.containers.list(filters={"label": f"{LABEL}={task_id}/0"}), "not running"
            double.cancel_task(task_id)

        started = time.monotonic()
        (out,) = await runner.run_many([payload("echo started; sleep 60", maxRunTime=120)], during=cancel_when_running)
        elapsed = time.monotonic() - started
    assert state0(out) == ("exception", "canceled")
    assert elapsed < 20, f"the worker took {elapsed:.1f} s to notice the cancellation"
    assert out.exit_code == 0


async def test_leftover_containers_swept_at_start(runner: DockerRunner, docker_client: docker.DockerClient) -> None:
    """A crashed worker's containers go when a worker with its identity starts; nobody else's do."""
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    live = await asyncio.create_subprocess_exec("sleep", "60")
    created = []

    def create(**labels: str) -> Any:
        created.append(docker_client.containers.create(BUSYBOX, ["sleep", "60"], labels={LABEL: "x/0", **labels}))
        created[-1].start()
        return created[-1]

    try:
        crashed = create(**{LABEL_WORKER: WORKER_LABEL, LABEL_OWNER: str(dead.pid)})
        unlabelled_owner = create(**{LABEL_WORKER: WORKER_LABEL})
        same_pid = create(**{LABEL_WORKER: WORKER_LABEL, LABEL_OWNER: str(os.getpid())})
        concurrent = create(**{LABEL_WORKER: WORKER_LABEL, LABEL_OWNER: str(live.pid)})
        other = create(**{LABEL_WORKER: "other-group/other-worker"})
        out = await runner.run(payload("echo ran"))
        assert out.state == "completed", out.log
        for gone in (crashed, unlabelled_owner, same_pid):
            with pytest.raises(docker.errors.NotFound):
                docker_client.containers.get(gone.id)
        # A live worker process with the same identity, and other workers, keep their containers.
        for kept in (concurrent, other):
            assert docker_client.containers.get(kept.id).status == "running"
    finally:
        live.kill()
        await live.wait()
        for container in created:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


# == executor selection and run-task ===========================================================================
async def test_auto_executor_runs_native_and_docker_tasks(runner: DockerRunner) -> None:
    native, docker_task = await runner.run_many(
        [{"command": [["echo", "native-ok"]], "maxRunTime": 30}, payload("echo docker-ok")],
        plugins=PluginHost(),
        executor="auto",
    )
    assert native.state == "completed", native.log
    assert "native-ok" in native.log
    assert re.search(r"\[taskcluster \d{4}-\d\d-\d\dT", native.log), "generic-worker log style"
    assert docker_task.state == "completed", docker_task.log
    assert "docker-ok" in docker_task.log
    assert re.search(STAMP, docker_task.log), "docker-worker log style"


def test_run_task_cli_runs_docker_payload(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megalodon_core",
            "run-task",
            str(REPO / "examples" / "hello-docker.yml"),
            "--json",
            "--out",
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "completed"
    task_dir = out_dir / summary["taskId"]
    assert json.loads((task_dir / "public" / "result.json").read_text()) == {"ok": True}
    log = (task_dir / "public" / "logs" / "live_backing.log").read_bytes()
    if log[:2] == b"\x1f\x8b":
        log = gzip.decompress(log)
    assert b"hello from a container" in log
    assert b"=== Task Finished ===" in log


# == unit level: archive entries that would escape ==============================================================
async def test_escaping_archive_entries_are_refused(tmp_path: Path) -> None:
    from megalodon_docker.artifacts import DockerArtifacts
    from megalodon_docker.payload import Artifact

    def fetch(path: str, dest: Path) -> None:
        with tarfile.open(dest, "w") as tar:
            for name, kind in (("dir", tarfile.DIRTYPE), ("dir/ok.txt", tarfile.REGTYPE)):
                info = tarfile.TarInfo(name)
                info.type = kind
                info.size = 2 if kind == tarfile.REGTYPE else 0
                tar.addfile(info, _bytes(b"ok") if kind == tarfile.REGTYPE else None)
            for evil in ("dir/../../evil.txt", "/etc/evil.txt"):
                info = tarfile.TarInfo(evil)
                info.size = 4
                tar.addfile(info, _bytes(b"evil"))

    errors: list[str] = []
    work = tmp_path / "work"
    work.mkdir()
    arts = DockerArtifacts(
        fetch,
        {"public/dir": Artifact(type="directory", path="/dir")},
        utcnow() + dt.timedelta(days=1),
        work,
        errors.append,
        docker.errors.NotFound,
    )
    entries = {e.name: e for e in await arts.collect()}
    assert set(entries) == {"public/dir", "public/dir/ok.txt"}
    assert entries["public/dir"].error_reason == "invalid-resource-on-worker"
    assert entries["public/dir"].fails_task is False
    assert Path(entries["public/dir/ok.txt"].source).read_bytes() == b"ok"
    assert len(errors) == 2 and all("would escape" in e for e in errors)
    assert not list(tmp_path.rglob("evil.txt"))


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)
