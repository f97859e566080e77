"""The executor conformance suite: what every megalodon executor must do, tested black-box.

An executor distribution runs it against itself with **one fixture**.  In a test module::

    import pytest
    from megalodon_core.testing.conformance import ExecutorConformance, ExecutorKit

    class MyKit(ExecutorKit):
        executor = "my-executor"              # the name it registers
        features = frozenset({"liveLog"})     # conformance features it supports

        def shell(self, script, *, max_run_time=30, features=None, artifacts=()):
            return {"script": script, "maxRunTime": max_run_time, ...}

    @pytest.fixture
    def executor_kit() -> ExecutorKit:
        return MyKit()

    class TestMyExecutorConformance(ExecutorConformance):
        pass

Every test creates a task on the Taskcluster double with the real ``taskcluster`` client, runs an unmodified
worker (config ``executor`` set to the kit's executor, every installed plugin loaded) that claims, runs and
resolves it over HTTP, and checks what a task author sees: the resolution, the task log, the artifacts
(uploaded, or error artifacts), cancellation through the queue, ``maxRunTime``, and the features the kit says
the executor supports (taskclusterProxy, liveLog, chainOfTrust) — or a clear ``malformed-payload`` for the
ones it does not.

The kit builds payloads.  Its one required method, :meth:`ExecutorKit.shell`, turns a POSIX shell script
into a payload; every other builder has a default written with it and may be overridden by an executor that
does not run shell scripts.  Where executors legitimately differ (docker-worker does not fail a task on a
missing artifact; the max-run-time message is each peer's own) the kit declares the expectation
explicitly, as a class attribute.

The tests use pytest-asyncio's explicit marker and the ``harness`` fixture of :mod:`megalodon_core.testing`
(install ``megalodon-core[testing]``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import shlex
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble
from megalodon_core.testing import Harness, Outcome
from megalodon_core.timefmt import iso, utcnow

#: The features the suite knows how to exercise, by the name tasks request them with.
CONFORMANCE_FEATURES = ("taskclusterProxy", "liveLog", "chainOfTrust")
LIVE_LOG = "public/logs/live.log"
BACKING_LOG = "public/logs/live_backing.log"
CHAIN_OF_TRUST = "public/chain-of-trust.json"

Resolution = tuple[str, str]


@dataclass(frozen=True)
class FileArtifact:
    """A ``file`` artifact a payload declares: ``path`` as the executor's payload spells it."""

    name: str
    path: str


class ExecutorKit(ABC):
    """Describes the executor under test to :class:`ExecutorConformance`: payload builders and expectations.

    Override :meth:`shell`; override the other builders only when the defaults (shell one-liners) do not
    fit; set the expectation attributes where the executor follows a peer that behaves differently.
    """

    #: The executor's registered name; the worker runs with config ``executor`` set to it.
    executor: ClassVar[str]
    #: Which of :data:`CONFORMANCE_FEATURES` the executor supports; each other one must be refused with
    #: ``exception/malformed-payload`` naming it when a task requests it.
    features: ClassVar[frozenset[str]] = frozenset()
    #: Whether a declared artifact whose file is missing fails the task (generic-worker: yes; docker-worker:
    #: no, it only publishes an error artifact).
    missing_artifact_fails: ClassVar[bool] = True
    #: Whether a task's artifacts are confined to its own file system.  False only for executors whose tasks
    #: run as the worker's user on the host and can read whatever the worker reads anyway (generic-worker's
    #: insecure engine follows symlinks and accepts absolute paths): a path outside is then uploaded like
    #: any other, and the suite checks exactly that.
    artifacts_confined: ClassVar[bool] = True
    #: Resolutions allowed for a confined task whose artifact leads outside its own file system (either way,
    #: the file outside is never uploaded).
    escaping_artifact_resolutions: ClassVar[frozenset[Resolution]] = frozenset(
        {("failed", "failed"), ("exception", "malformed-payload")}
    )
    #: Text the task log contains when maxRunTime aborted the run.
    max_run_time_message: ClassVar[str] = "max run time exceeded"
    #: Resolution of a run maxRunTime aborted.
    max_run_time_resolution: ClassVar[Resolution] = ("failed", "failed")

    def config(self) -> dict[str, Any]:
        """Worker config for every run of the suite, on top of the harness's (``executor`` is added)."""
        return {}

    @abstractmethod
    def shell(
        self,
        script: str,
        *,
        max_run_time: int = 30,
        features: Mapping[str, bool] | None = None,
        artifacts: Sequence[FileArtifact] = (),
    ) -> Any:
        """A payload that runs ``script`` with ``/bin/sh``: exit status is the script's, output goes to the
        task log.  ``features`` uses the conformance names (:data:`CONFORMANCE_FEATURES`): translate them
        to your payload's; ``artifacts`` are ``file`` artifacts to declare (expiring with the task)."""

    def artifact_path(self, filename: str) -> str:
        """Where a script writes ``filename`` so that a :class:`FileArtifact` with this path finds it
        (default: relative to the directory the script runs in)."""
        return filename

    def proxy_get(self, path: str) -> str:
        """Shell commands that GET ``path`` (``/secrets/v1/secret/...``) through the taskcluster proxy and
        print the response body (default: the worker's Python with urllib, for executors on the host)."""
        code = (
            "import os, sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen(os.environ['TASKCLUSTER_PROXY_URL'] + {path!r}).read().decode())"
        )
        return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"

    # -- builders with defaults ---------------------------------------------------------------------------
    def succeed(self, marker: str) -> Any:
        """Prints ``marker`` on stdout and exits 0."""
        return self.shell(f"echo {shlex.quote(marker)}")

    def fail(self, exit_code: int) -> Any:
        """Exits with ``exit_code``."""
        return self.shell(f"exit {exit_code}")

    def sleep(self, seconds: int, max_run_time: int) -> Any:
        """Sleeps ``seconds`` (longer than ``max_run_time``)."""
        return self.shell(f"sleep {seconds}", max_run_time=max_run_time)

    def print_then_sleep(self, marker: str, seconds: int, max_run_time: int) -> Any:
        """Prints ``marker``, then sleeps ``seconds``."""
        return self.shell(f"echo {shlex.quote(marker)}; sleep {seconds}", max_run_time=max_run_time)

    def write_artifact(self, name: str, content: str) -> Any:
        """Writes ``content`` to a file and declares it as artifact ``name``."""
        path = self.artifact_path("conformance-artifact.txt")
        script = f"printf %s {shlex.quote(content)} > {shlex.quote(path)}"
        return self.shell(script, artifacts=[FileArtifact(name, path)])

    def missing_artifact(self, name: str) -> Any:
        """Declares artifact ``name`` and never writes its file."""
        return self.shell("true", artifacts=[FileArtifact(name, self.artifact_path("never-written.txt"))])

    def escaping_artifact(self, name: str, outside: Path) -> Any:
        """Declares artifact ``name`` whose path leads to ``outside``, a file of the worker's host outside
        the task's own file system (default: a symlink to it)."""
        path = self.artifact_path("escape-link")
        script = f"ln -s {shlex.quote(str(outside))} {shlex.quote(path)}"
        return self.shell(script, artifacts=[FileArtifact(name, path)])

    def malformed(self) -> tuple[Any, str]:
        """A payload the executor must refuse, and the field name its log line must contain."""
        payload = self.shell("true")
        if not isinstance(payload, dict):
            raise NotImplementedError("override ExecutorKit.malformed for a payload that is not an object")
        return {**payload, "conformanceNoSuchField": True}, "conformanceNoSuchField"


# -- helpers -----------------------------------------------------------------------------------------------
async def run_task(
    kit: ExecutorKit,
    harness: Harness,
    payload: Any,
    *,
    task: dict[str, Any] | None = None,
    during: Callable[[str], Awaitable[None]] | None = None,
    **config: Any,
) -> Outcome:
    """Run ``payload`` on a worker configured for the kit's executor."""
    return await harness.run(payload, task=task, during=during, **{**kit.config(), "executor": kit.executor, **config})


def resolution(out: Outcome) -> Resolution:
    return out.state, out.reason


async def wait_for_artifact(double: TaskclusterDouble, task_id: str, name: str) -> dict[str, Any]:
    """The artifact's metadata as soon as the worker has created it (polled in process, 60 s bound)."""
    for _ in range(2400):
        try:
            return double.artifact_content(task_id, 0, name)[1]
        except KeyError:
            await asyncio.sleep(0.025)
    raise AssertionError(f"{name} was never created")


def write_signing_key(path: Path) -> bytes:
    """A chain-of-trust key in generic-worker's format (base64 of a 32-byte ed25519 seed); returns the seed."""
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(seed))
    finally:
        os.close(fd)
    return seed


class ExecutorConformance:
    """The suite.  Subclass it as ``class Test...(ExecutorConformance)`` next to an ``executor_kit`` fixture."""

    # -- resolution rules -----------------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_success_completes_with_its_output_in_the_log(
        self, executor_kit: ExecutorKit, harness: Harness
    ) -> None:
        marker = f"conformance-{uuid.uuid4().hex}"
        out = await run_task(executor_kit, harness, executor_kit.succeed(marker))
        assert resolution(out) == ("completed", "completed"), out.log
        assert marker in out.log
        assert out.artifacts[BACKING_LOG]["storageType"] in ("s3", "object")
        assert LIVE_LOG in out.artifacts

    @pytest.mark.asyncio
    async def test_stdout_and_stderr_both_reach_the_log(self, executor_kit: ExecutorKit, harness: Harness) -> None:
        out = await run_task(executor_kit, harness, executor_kit.shell("echo to-stdout; echo to-stderr >&2"))
        assert resolution(out) == ("completed", "completed"), out.log
        assert "to-stdout" in out.log and "to-stderr" in out.log

    @pytest.mark.asyncio
    @pytest.mark.parametrize("code", [1, 3])
    async def test_non_zero_exit_fails(self, executor_kit: ExecutorKit, harness: Harness, code: int) -> None:
        out = await run_task(executor_kit, harness, executor_kit.fail(code))
        assert resolution(out) == ("failed", "failed"), out.log

    @pytest.mark.asyncio
    async def test_malformed_payload_names_the_field(self, executor_kit: ExecutorKit, harness: Harness) -> None:
        payload, field = executor_kit.malformed()
        out = await run_task(executor_kit, harness, payload)
        assert resolution(out) == ("exception", "malformed-payload"), out.log
        assert field in out.log

    @pytest.mark.asyncio
    async def test_the_worker_access_token_in_its_environment_never_reaches_the_task(
        self, executor_kit: ExecutorKit, harness: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker started with ``TASKCLUSTER_ACCESS_TOKEN`` set (a deployment's habit): the task never sees it.
        (The value differs from the config's token, which the task log masks anyway.)"""
        token = f"worker-env-token-{uuid.uuid4().hex}"
        monkeypatch.setenv("TASKCLUSTER_ACCESS_TOKEN", token)
        out = await run_task(executor_kit, harness, executor_kit.shell('echo "token=[$TASKCLUSTER_ACCESS_TOKEN]"; env'))
        assert resolution(out) == ("completed", "completed"), out.log
        assert token not in out.log

    # -- maxRunTime and cancellation ------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_max_run_time_aborts_the_run(self, executor_kit: ExecutorKit, harness: Harness) -> None:
        # The task would sleep 10 minutes: the harness's 2-minute bound fails the test if nothing aborts it.
        out = await run_task(executor_kit, harness, executor_kit.print_then_sleep("conformance-running", 600, 3))
        assert resolution(out) == executor_kit.max_run_time_resolution, out.log
        assert executor_kit.max_run_time_message in out.log
        assert "conformance-running" in out.log  # the command ran, and was stopped

    @pytest.mark.asyncio
    async def test_max_run_time_above_the_worker_limit_is_malformed(
        self, executor_kit: ExecutorKit, harness: Harness
    ) -> None:
        out = await run_task(executor_kit, harness, executor_kit.sleep(1, max_run_time=11), maxTaskRunTime=10)
        assert resolution(out) == ("exception", "malformed-payload"), out.log
        assert "maxRunTime" in out.log

    @pytest.mark.asyncio
    async def test_cancelled_through_the_queue_is_stopped_and_not_reported(
        self, executor_kit: ExecutorKit, tmp_path: Path
    ) -> None:
        # A short claim makes the worker reclaim every second; the queue answers the reclaim after
        # cancelTask with 409, and the run must stop (it would sleep 10 minutes: the harness bound is 2).
        async with (
            TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as double,
            aiohttp.ClientSession() as session,
        ):
            harness = Harness(double, tmp_path, session)

            async def cancel(task_id: str) -> None:
                await harness.wait_for_output(task_id, "conformance-running")
                await harness.root.cancelTask(task_id)

            payload = executor_kit.print_then_sleep("conformance-running", 600, max_run_time=300)
            out = await run_task(executor_kit, harness, payload, during=cancel)
            reports = [double.calls[m] for m in ("reportCompleted", "reportFailed", "reportException")]
        assert resolution(out) == ("exception", "canceled"), out.log
        assert reports == [0, 0, 0], "the worker reported a run the queue had cancelled"

    @pytest.mark.asyncio
    async def test_worker_shutdown_aborts_the_run_as_worker_shutdown(
        self, executor_kit: ExecutorKit, harness: Harness
    ) -> None:
        """SIGTERM's path (``Worker.stop(finish_tasks=False)``): the run is aborted and resolved
        ``exception/worker-shutdown`` so the queue retries it elsewhere."""

        async def shut_down(task_id: str) -> None:
            await harness.wait_for_output(task_id, "conformance-running")
            assert harness.worker is not None
            harness.worker.stop(finish_tasks=False)

        payload = executor_kit.print_then_sleep("conformance-running", 600, max_run_time=300)
        out = await run_task(executor_kit, harness, payload, during=shut_down)
        assert resolution(out) == ("exception", "worker-shutdown"), out.log

    # -- artifacts ------------------------------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_declared_artifact_is_uploaded(self, executor_kit: ExecutorKit, harness: Harness) -> None:
        content = f"artifact content {uuid.uuid4().hex}"
        out = await run_task(executor_kit, harness, executor_kit.write_artifact("public/conformance.txt", content))
        assert resolution(out) == ("completed", "completed"), out.log
        data, meta = harness.double.artifact_content(out.task_id, 0, "public/conformance.txt")
        assert data.decode() == content
        assert meta["storageType"] in ("s3", "object")
        assert meta["contentType"].startswith("text/plain")

    @pytest.mark.asyncio
    async def test_missing_artifact_becomes_an_error_artifact(
        self, executor_kit: ExecutorKit, harness: Harness
    ) -> None:
        out = await run_task(executor_kit, harness, executor_kit.missing_artifact("public/missing.txt"))
        expected = ("failed", "failed") if executor_kit.missing_artifact_fails else ("completed", "completed")
        assert resolution(out) == expected, out.log
        assert out.artifacts["public/missing.txt"]["storageType"] == "error"

    @pytest.mark.asyncio
    async def test_artifact_escaping_the_task_is_never_uploaded_when_confined(
        self, executor_kit: ExecutorKit, harness: Harness, tmp_path: Path
    ) -> None:
        secret = f"host-only {uuid.uuid4().hex}"
        outside = tmp_path / "outside-the-task.txt"
        outside.write_text(secret)
        out = await run_task(executor_kit, harness, executor_kit.escaping_artifact("public/escape.txt", outside))
        if not executor_kit.artifacts_confined:
            assert resolution(out) == ("completed", "completed"), out.log
            data, _ = harness.double.artifact_content(out.task_id, 0, "public/escape.txt")
            assert data.decode() == secret
            return
        assert resolution(out) in executor_kit.escaping_artifact_resolutions, out.log
        for name in out.artifacts:
            data, _ = harness.double.artifact_content(out.task_id, 0, name)
            assert secret.encode() not in data, f"{name} holds a file from outside the task"

    # -- features -------------------------------------------------------------------------------------------
    # Each feature test checks the feature when the kit says the executor supports it, and its refusal
    # (malformed-payload naming it, never a run with the feature silently missing) when it does not.
    async def _refused(self, kit: ExecutorKit, harness: Harness, feature: str) -> bool:
        if feature in kit.features:
            return False
        out = await run_task(kit, harness, kit.shell("true", features={feature: True}))
        assert resolution(out) == ("exception", "malformed-payload"), out.log
        assert feature in out.log
        return True

    @pytest.mark.asyncio
    async def test_feature_taskcluster_proxy(self, executor_kit: ExecutorKit, harness: Harness) -> None:
        """The task reads a secret through ``$TASKCLUSTER_PROXY_URL`` with its own scopes; the value is masked."""
        if await self._refused(executor_kit, harness, "taskclusterProxy"):
            return
        name = f"conformance/{uuid.uuid4().hex}"
        value = f"proxied-secret-{uuid.uuid4().hex}"
        async with aiohttp.ClientSession() as session:
            secrets = taskcluster.aio.Secrets(
                {"rootUrl": harness.double.root_url, "credentials": harness.double.root_credentials}, session=session
            )
            expires = iso(utcnow() + dt.timedelta(days=1))
            await secrets.set(name, {"secret": {"token": value}, "expires": expires})
        quoted = name.replace("/", "%2F")
        script = executor_kit.proxy_get(f"/secrets/v1/secret/{quoted}")
        payload = executor_kit.shell(script, features={"taskclusterProxy": True})
        out = await run_task(executor_kit, harness, payload, task={"scopes": [f"secrets:get:{name}"]})
        assert resolution(out) == ("completed", "completed"), out.log
        # The secret was read with the task's scopes, and masked in the log before the task could print it.
        assert value not in out.log
        assert '"token":"[REDACTED]"' in out.log.replace(" ", ""), out.log

    @pytest.mark.asyncio
    async def test_feature_live_log(self, executor_kit: ExecutorKit, harness: Harness) -> None:
        """The live log streams the whole task log while the task runs, then links to the backing log."""
        if await self._refused(executor_kit, harness, "liveLog"):
            return
        streamed: dict[str, bytes] = {}

        async def read_live_log(task_id: str) -> None:
            reference = await wait_for_artifact(harness.double, task_id, LIVE_LOG)
            assert reference["storageType"] == "reference", reference
            async with aiohttp.ClientSession() as session, session.get(reference["url"]) as resp:
                assert resp.status == 200
                streamed["body"] = await resp.read()

        # The sleep keeps the run going while the test finds the reference; the reader then follows to EOF.
        payload = executor_kit.shell("echo live-first; sleep 4; echo live-second", features={"liveLog": True})
        out = await run_task(executor_kit, harness, payload, during=read_live_log)
        assert resolution(out) == ("completed", "completed"), out.log
        assert streamed["body"] == out.log.encode(), "the live stream is not the backing log"
        assert b"live-first" in streamed["body"] and b"live-second" in streamed["body"]
        _, link = harness.double.artifact_content(out.task_id, 0, LIVE_LOG)
        assert (link["storageType"], link["artifact"]) == ("link", BACKING_LOG)

    @pytest.mark.asyncio
    async def test_feature_chain_of_trust(self, executor_kit: ExecutorKit, harness: Harness, tmp_path: Path) -> None:
        """The signed certificate verifies with the worker's key and certifies the task's artifact."""
        if await self._refused(executor_kit, harness, "chainOfTrust"):
            return
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key_file = tmp_path / "conformance-signing.key"
        public = Ed25519PrivateKey.from_private_bytes(write_signing_key(key_file)).public_key()
        path = executor_kit.artifact_path("certified.txt")
        payload = executor_kit.shell(
            f"printf certified > {shlex.quote(path)}",
            features={"chainOfTrust": True},
            artifacts=[FileArtifact("public/certified.txt", path)],
        )
        out = await run_task(
            executor_kit, harness, payload, enableChainOfTrust=True, ed25519SigningKeyLocation=str(key_file)
        )
        assert resolution(out) == ("completed", "completed"), out.log
        document, _ = harness.double.artifact_content(out.task_id, 0, CHAIN_OF_TRUST)
        signature, _ = harness.double.artifact_content(out.task_id, 0, CHAIN_OF_TRUST + ".sig")
        public.verify(signature, document)  # raises InvalidSignature
        certificate = json.loads(document)
        assert certificate["taskId"] == out.task_id and certificate["runId"] == 0
        assert certificate["task"]["payload"] == payload
        data, _ = harness.double.artifact_content(out.task_id, 0, "public/certified.txt")
        assert data == b"certified"
        assert certificate["artifacts"]["public/certified.txt"] == {"sha256": hashlib.sha256(data).hexdigest()}


__all__ = [
    "CONFORMANCE_FEATURES",
    "ExecutorConformance",
    "ExecutorKit",
    "FileArtifact",
    "run_task",
    "wait_for_artifact",
    "write_signing_key",
]
