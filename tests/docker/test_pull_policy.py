"""Image pull policy and pull-failure classification, against the real engine and real registries.

Registry stops and restarts use a ``docker-registry`` of this module's own on another loopback port (the
shared one on 127.0.0.1:5000 serves every other test); registry answers the real registry never gives on
demand (401, 403, 429, 503) come from a small HTTP server on loopback that the engine pulls from.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from aiohttp import web

from megalodon_core.errors import Failure, IntermittentTask, MalformedPayload
from megalodon_core.testing import PROVISIONER, Harness
from megalodon_docker.images import (
    ImageError,
    ImageManager,
    ImageNotAuthorizedError,
    ImageNotPresentError,
    ImageOptions,
    ImagePullRejected,
    ImagePullUnavailable,
    classify_pull_error,
    resolution_error,
)

from ..helpers.metrics import scrape, scraped_worker

pytestmark = pytest.mark.docker

BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
SHARED_REGISTRY_IMAGE = "127.0.0.1:5000/megalodon-test/busybox:latest"
REGISTRY_BINARY = "/usr/bin/docker-registry"
#: Size of the random (incompressible) layer of the pushed image: the pull must report at least this.
BLOB_BYTES = 256 * 1024


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def count(self, prefix: str) -> int:
        return sum(1 for line in self.lines if line.startswith(prefix))

    def text(self) -> str:
        return "\n".join(self.lines)


async def _no_download(task_id: str, path: str, dest: Path) -> None:
    raise AssertionError(f"unexpected download of {path} from {task_id}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnRegistry:
    """A ``docker-registry serve`` on a loopback port of its own, stoppable and restartable on that port."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.config = root / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\nhttp:\n  addr: {self.addr}\n"
        )
        self.log = root / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(self.config)], stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while not self.up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry not answering on {self.addr} after 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRegistry]:
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise RuntimeError(f"{REGISTRY_BINARY} missing; run .ci/docker-setup.sh (Debian package docker-registry)")
    registry = OwnRegistry(tmp_path_factory.mktemp("own-registry"))
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def pushed_image(own_registry: OwnRegistry, docker_client: docker.DockerClient) -> Iterator[str]:
    """An image only this module's registry has: the busybox test image plus one random 256 KiB layer."""
    ref = f"{own_registry.addr}/megalodon-test/pull-policy-{uuid.uuid4().hex[:8]}:1"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (
            ("Dockerfile", f"FROM {BUSYBOX_IMAGE}\nCOPY blob /blob\n".encode()),
            ("blob", os.urandom(BLOB_BYTES)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=ref, rm=True)
    repo, tag = ref.rsplit(":", 1)
    for event in docker_client.api.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    yield ref
    _remove(docker_client, ref)


def _remove(client: docker.DockerClient, ref: str) -> None:
    try:
        client.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


@pytest.fixture
def absent(pushed_image: str, own_registry: OwnRegistry, docker_client: docker.DockerClient) -> Iterator[str]:
    """The pushed image, absent from the engine and present in a running registry at the test's start."""
    own_registry.start()
    _remove(docker_client, pushed_image)
    yield pushed_image
    own_registry.start()


def _manager(client: docker.DockerClient, tmp_path: Path, **options: object) -> ImageManager:
    opts: dict[str, object] = {"pull_base_delay": 0.01, **options}
    return ImageManager(client, tmp_path / "work", options=ImageOptions(**opts))  # type: ignore[arg-type]


# == policies ================================================================================================


async def test_if_not_present_pulls_once_and_reports_bytes_and_duration(
    absent: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path)
    log = Log()
    first = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert first.pull is not None
    assert first.pull.reference == absent and first.pull.attempts == 1 and not first.pull.fallback
    assert first.pull.bytes_downloaded is not None and first.pull.bytes_downloaded >= BLOB_BYTES, first.pull
    assert first.pull.seconds > 0
    assert first.image_id == docker_client.images.get(absent).id
    (summary,) = [line for line in log.lines if line.startswith("Pulled docker image")]
    assert f"Pulled docker image {absent} in {first.pull.seconds:.3f} seconds" in summary
    assert f"({first.pull.bytes_downloaded / 1024 / 1024:.3f} mb downloaded)" in summary
    assert first.image_id in summary

    log2 = Log()
    second = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log2)
    assert second.image_id == first.image_id and second.pull is None
    assert log2.count("Pulling") == 0


async def test_always_pulls_again_and_an_unchanged_image_downloads_nothing(
    absent: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path, pull_policy="always")
    first = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=Log())
    log = Log()
    second = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert log.count("Pulling docker image") == 1, log.lines
    assert second.pull is not None and second.pull.bytes_downloaded == 0 and not second.pull.fallback
    assert second.image_id == first.image_id


async def test_always_falls_back_to_the_cached_image_when_the_registry_is_stopped(
    absent: str, own_registry: OwnRegistry, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path, pull_policy="always", pull_attempts=5, pull_base_delay=60)
    cached = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=Log())
    await asyncio.to_thread(own_registry.stop)
    log = Log()
    resolved = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert resolved.image_id == cached.image_id
    assert resolved.pull is not None and resolved.pull.fallback and resolved.pull.attempts == 1
    # One attempt (a 60 s backoff would have been waited for otherwise), and the task log says what happened.
    assert log.count("Pulling docker image") == 1
    (line,) = [line for line in log.lines if line.startswith("Registry unreachable")]
    assert f"using the cached image {absent} ({cached.image_id})" in line
    assert 'imagePullPolicy is "always"' in line and "connection refused" in line


async def test_stopped_registry_is_retried_then_unavailable(
    absent: str, own_registry: OwnRegistry, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """No cached image, registry down: every attempt made, then intermittent-task for the queue to retry."""
    await asyncio.to_thread(own_registry.stop)
    for policy in ("if-not-present", "always"):
        manager = _manager(docker_client, tmp_path, pull_policy=policy, pull_attempts=3)
        log = Log()
        with pytest.raises(ImagePullUnavailable, match=r"after 3 attempt\(s\).*connection refused") as caught:
            await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log)
        assert log.count("Pulling docker image") == 3
        assert log.count("Error pulling docker image") == 2
        error = resolution_error(caught.value)
        assert isinstance(error, IntermittentTask) and error.reason == "intermittent-task"
        assert "Pulling docker image has failed." in error.message


async def test_registry_back_during_the_backoff_lets_a_later_attempt_succeed(
    absent: str, own_registry: OwnRegistry, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The registry stops, the pull fails, the registry comes back while the worker backs off: pulled."""
    await asyncio.to_thread(own_registry.stop)
    restarted: list[asyncio.Task[None]] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("Error pulling docker image") and not restarted:
            restarted.append(asyncio.ensure_future(asyncio.to_thread(own_registry.start)))

    lines: list[str] = []
    # Backoff 2, 4, 8, 16 s: the restart (well under a second) has 30 s to happen.
    manager = _manager(docker_client, tmp_path, pull_attempts=5, pull_base_delay=2, pull_jitter=0)
    resolved = await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log)
    await restarted[0]
    assert resolved.pull is not None and resolved.pull.attempts >= 2, lines
    assert resolved.pull.bytes_downloaded is not None and resolved.pull.bytes_downloaded >= BLOB_BYTES
    assert "connection refused" in next(line for line in lines if line.startswith("Error pulling"))
    assert resolved.image_id == docker_client.images.get(absent).id


async def test_never_uses_a_present_image_and_refuses_an_absent_one(
    absent: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path, pull_policy="never")
    log = Log()
    present = await manager.ensure_image(BUSYBOX_IMAGE, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert present.image_id == docker_client.images.get(BUSYBOX_IMAGE).id and present.pull is None
    with pytest.raises(ImageNotPresentError, match='imagePullPolicy is "never"') as caught:
        await manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert log.count("Pulling") == 0
    assert isinstance(resolution_error(caught.value), MalformedPayload)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(absent)


async def test_concurrent_ensures_share_one_pull_and_one_report(
    absent: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """Two tasks wanting the same absent image: one pull, reported once (metrics must not count it twice)."""
    manager = _manager(docker_client, tmp_path)
    logs = [Log(), Log()]
    results = await asyncio.gather(
        *(manager.ensure_image(absent, task_id="T", task_scopes=[], download=_no_download, log=log) for log in logs)
    )
    assert sum(log.count("Pulling docker image") for log in logs) == 1
    assert [r.pull is not None for r in results].count(True) == 1
    assert results[0].image_id == results[1].image_id


async def test_always_on_the_shared_registry_image(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    """``always`` against the local registry every lane has (docker and podman): a pull that finds the
    image up to date, reported with its duration."""
    docker_client.images.pull(SHARED_REGISTRY_IMAGE)
    manager = _manager(docker_client, tmp_path, pull_policy="always")
    log = Log()
    resolved = await manager.ensure_image(
        SHARED_REGISTRY_IMAGE, task_id="T", task_scopes=[], download=_no_download, log=log
    )
    assert resolved.pull is not None and not resolved.pull.fallback
    assert log.count("Pulling docker image") == 1 and log.count("Pulled docker image") == 1
    assert resolved.image_id == docker_client.images.get(SHARED_REGISTRY_IMAGE).id


# == registry answers ========================================================================================


class FakeRegistry:
    """Answers every registry request with one fixed HTTP error, counting requests."""

    def __init__(self, status: int, body: dict[str, object] | str, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.requests = 0
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, headers=self.headers)
        return web.json_response(self.body, status=self.status, headers=self.headers)


@pytest.fixture
async def fake_registry(request: pytest.FixtureRequest) -> AsyncIterator[FakeRegistry]:
    fake = FakeRegistry(*request.param)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = runner.addresses[0][1]
    yield fake
    await runner.cleanup()


def _errors(code: str, message: str) -> dict[str, object]:
    return {"errors": [{"code": code, "message": message, "detail": None}]}


REJECTING = [
    pytest.param(
        (401, _errors("UNAUTHORIZED", "authentication required"), {"WWW-Authenticate": 'Basic realm="fake"'}),
        "no basic auth credentials",
        id="401",
    ),
    pytest.param((403, _errors("DENIED", "requested access to the resource is denied")), "denied", id="403"),
]
TRANSIENT = [
    pytest.param((429, _errors("TOOMANYREQUESTS", "You have reached your pull rate limit.")), "rate limit", id="429"),
    pytest.param((503, "down for maintenance"), "503 Service Unavailable", id="503"),
    pytest.param((500, "boom"), "500 Internal Server Error", id="500"),
]


@pytest.mark.parametrize(("fake_registry", "message"), REJECTING, indirect=["fake_registry"])
async def test_authentication_answers_are_rejected_at_once(
    fake_registry: FakeRegistry, message: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path, pull_attempts=5, pull_base_delay=60)
    log = Log()
    ref = f"127.0.0.1:{fake_registry.port}/private/image:1"
    with pytest.raises(ImagePullRejected, match=message) as caught:
        await manager.ensure_image(ref, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert log.count("Pulling docker image") == 1 and log.count("Error pulling") == 0
    assert fake_registry.requests >= 1
    error = resolution_error(caught.value)
    assert isinstance(error, MalformedPayload) and message in error.message


@pytest.mark.parametrize(("fake_registry", "message"), TRANSIENT, indirect=["fake_registry"])
async def test_rate_limits_and_server_errors_are_retried(
    fake_registry: FakeRegistry, message: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path, pull_attempts=3)
    log = Log()
    ref = f"127.0.0.1:{fake_registry.port}/some/image:1"
    with pytest.raises(ImagePullUnavailable, match=message) as caught:
        await manager.ensure_image(ref, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert log.count("Pulling docker image") == 3 and log.count("Error pulling docker image") == 2
    assert isinstance(resolution_error(caught.value), IntermittentTask)


@pytest.mark.parametrize("ref", ["UPPER/case:1", "127.0.0.1:5000/bad//name:1"])
async def test_invalid_reference_is_rejected_at_once(
    ref: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manager = _manager(docker_client, tmp_path, pull_attempts=5, pull_base_delay=60)
    log = Log()
    with pytest.raises(ImageError, match="invalid reference format") as caught:
        await manager.ensure_image(ref, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert isinstance(resolution_error(caught.value), MalformedPayload)
    assert log.count("Error pulling") == 0


# == classification and resolution, message by message ========================================================

#: Messages as dockerd 20.10 and podman 4.3 word them (recorded on this project's CI machine).
MESSAGES = [
    ("manifest for 127.0.0.1:5000/x:latest not found: manifest unknown: manifest unknown", "rejected"),
    (
        "initializing source docker://127.0.0.1:5000/x:latest: reading manifest latest in 127.0.0.1:5000/x: "
        "manifest unknown: manifest unknown",
        "rejected",
    ),
    (
        "pull access denied for nope, repository does not exist or may require 'docker login': denied: requested "
        "access to the resource is denied",
        "rejected",
    ),
    ('Head "http://127.0.0.1:1/v2/x/manifests/latest": no basic auth credentials', "rejected"),
    ("unauthorized: incorrect username or password", "rejected"),
    ("denied", "rejected"),
    ("invalid reference format: repository name must be lowercase", "rejected"),
    (
        "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating",
        "transient",
    ),
    ("received unexpected HTTP status: 503 Service Unavailable", "transient"),
    ('Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused', "transient"),
    ('Get "https://registry/v2/": net/http: TLS handshake timeout', "transient"),
    # dockerd's answer, after 15 s, for a registry that accepts the connection and never answers.
    (
        'Get "http://127.0.0.1:33711/v2/": net/http: request canceled (Client.Timeout exceeded while awaiting headers)',
        "transient",
    ),
    ("read tcp 10.0.0.2:4000->10.0.0.1:443: read: connection reset by peer", "transient"),
    ("unexpected EOF", "transient"),
    ("something nobody has seen before", "transient"),
]


@pytest.mark.parametrize(("message", "kind"), MESSAGES)
def test_classification_of_engine_messages(message: str, kind: str) -> None:
    assert classify_pull_error(ImageError(message)) == kind


def test_engine_status_codes_decide_before_the_message() -> None:
    class Answer:
        def __init__(self, status: int) -> None:
            self.status_code = status
            self.reason = "x"

    for status in (400, 401, 403, 404):
        exc = docker.errors.APIError("x", response=Answer(status), explanation="connection refused")
        assert classify_pull_error(exc) == "rejected"
    exc = docker.errors.APIError("x", response=Answer(500), explanation="dial tcp: i/o timeout")
    assert classify_pull_error(exc) == "transient"
    assert classify_pull_error(ConnectionResetError("reset")) == "transient"


def test_other_image_errors_fail_the_task_as_docker_worker_did() -> None:
    failed = resolution_error(ImageNotAuthorizedError({"name": "x"}, "docker-worker:image:x"))
    assert isinstance(failed, Failure) and "Not authorized to use" in failed.message
    assert isinstance(resolution_error(ImageError("Error loading docker image. boom")), Failure)


# == through the worker: resolutions, task log and metrics =====================================================


def _docker_task(image: str) -> dict[str, Any]:
    return {"image": image, "command": ["sh", "-c", "test -s /blob && echo blob-ok"], "maxRunTime": 60}


async def test_pull_bytes_and_duration_reach_the_task_log_and_the_metrics(harness: Harness, absent: str) -> None:
    worker_type = harness.worker_type()
    task_id = await harness.create(_docker_task(absent), worker_type)
    async with scraped_worker(
        harness, worker_type, numberOfTasksToRun=1, executor="docker", requiredDiskSpaceMegabytes=0
    ) as (worker, url):
        code = await asyncio.wait_for(worker.run(), 120)
        scraped = await scrape(url)
    out = await harness.outcome(task_id, code)
    assert out.state == "completed", out.log
    assert "blob-ok" in out.log
    assert re.search(
        rf"Pulled docker image {re.escape(absent)} in \d+\.\d{{3}} seconds \(\d+\.\d{{3}} mb downloaded\)", out.log
    )
    pool = f"{PROVISIONER}/{worker_type}"

    def value(name: str, phase: str) -> float:
        return scraped.value(name, taskQueueId=pool, phase=phase)

    assert value("megalodon_task_phase_bytes_total", "image_pull") >= BLOB_BYTES
    assert value("megalodon_task_phase_seconds_count", "image_pull") == 1
    assert value("megalodon_task_phase_seconds_sum", "image_pull") > 0


async def test_unreachable_registry_resolves_intermittent_task_and_the_queue_retries(
    harness: Harness, absent: str, own_registry: OwnRegistry
) -> None:
    await asyncio.to_thread(own_registry.stop)
    out = await harness.run(
        _docker_task(absent),
        executor="docker",
        requiredDiskSpaceMegabytes=0,
        dockerConfig={"pullAttempts": 2, "pullBaseDelaySeconds": 0.01},
    )
    run0 = out.status["runs"][0]
    assert (run0["state"], run0.get("reasonResolved")) == ("exception", "intermittent-task"), out.log
    assert out.status["runs"][1]["reasonCreated"] == "task-retry"
    assert "Pulling docker image has failed." in out.log and "after 2 attempt(s)" in out.log
    assert "connection refused" in out.log


async def test_unknown_image_resolves_malformed_payload_without_retries(
    harness: Harness, own_registry: OwnRegistry
) -> None:
    image = f"{own_registry.addr}/megalodon-test/no-such-image:{uuid.uuid4().hex[:8]}"
    out = await harness.run(
        _docker_task(image),
        executor="docker",
        requiredDiskSpaceMegabytes=0,
        dockerConfig={"pullAttempts": 5, "pullBaseDelaySeconds": 60},
    )
    assert (out.state, out.status["runs"][0].get("reasonResolved")) == ("exception", "malformed-payload"), out.log
    assert len(out.status["runs"]) == 1, "the queue must not retry a malformed payload"
    assert "manifest unknown" in out.log and "Error pulling docker image" not in out.log


async def test_always_with_a_stopped_registry_runs_the_cached_image_and_says_so(
    harness: Harness, absent: str, own_registry: OwnRegistry, docker_client: docker.DockerClient
) -> None:
    docker_client.images.pull(absent)
    await asyncio.to_thread(own_registry.stop)
    out = await harness.run(
        _docker_task(absent),
        executor="docker",
        requiredDiskSpaceMegabytes=0,
        dockerConfig={"imagePullPolicy": "always", "pullBaseDelaySeconds": 60},
    )
    assert out.state == "completed", out.log
    assert "blob-ok" in out.log
    assert "Registry unreachable, using the cached image" in out.log


async def test_never_refuses_an_absent_image_as_malformed_payload(harness: Harness, absent: str) -> None:
    out = await harness.run(
        _docker_task(absent), executor="docker", requiredDiskSpaceMegabytes=0, dockerConfig={"imagePullPolicy": "never"}
    )
    assert (out.state, out.status["runs"][0].get("reasonResolved")) == ("exception", "malformed-payload"), out.log
    assert 'dockerConfig.imagePullPolicy is "never"' in out.log
    assert f"Pulling docker image {absent}" not in out.log
