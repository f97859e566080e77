"""docker-worker payloads, unchanged, in containers on the Docker engine (NOTES.md, docker-worker part).

Where docker-worker and generic-worker's d2g translation differ, docker-worker's behaviour wins (this is
what the payloads were written against): registry images are not re-pulled when present, artifact
images are re-tagged, missing artifacts become error artifacts without failing the task, the worker-set
environment variables are docker-worker's, and ``ShmSize`` is set.  Deliberate differences are listed in
``docs/compatibility.md``.

The Docker SDK is synchronous: every call to it runs in a thread of this executor's own pool, so one
slow engine call never stalls the event loop and long waits (log streams, container waits) cannot starve
the default pool that file operations use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker.errors
import taskcluster.aio.download

import docker
from megalodon_core import __version__
from megalodon_core.artifacts import check_artifact_name
from megalodon_core.contracts import Artifacts, NoArtifacts, TaskExecutor
from megalodon_core.errors import ExecutionError, Failure, IntermittentTask, MalformedPayload
from megalodon_core.scopes import scope_satisfied
from megalodon_core.task import TaskRun
from megalodon_core.timefmt import parse_iso

from .artifacts import ArchiveFetcher, DockerArtifacts
from .caches import CacheInstance, CachePool, delete_tree
from .images import ImageError, ImageManager, ImageOptions
from .payload import PayloadError, validate_payload
from .settings import DockerConfig

log = logging.getLogger(__name__)

LABEL = "megalodon.task"
LABEL_WORKER = "megalodon.worker"
#: docker-worker features that need a feature plugin; absent ones are refused by name.
PLUGIN_FEATURES = ("taskclusterProxy", "chainOfTrust", "interactive")
#: Every feature docker-worker's schema knows.
KNOWN_FEATURES = frozenset(
    {"localLiveLog", "bulkLog", "taskclusterProxy", "artifacts", "interactive", "allowPtrace", "chainOfTrust"}
)


def backing_log_name(live: str) -> str:
    """docker-worker's rule: ``dir/name.ext`` -> ``dir/name_backing.ext``."""
    head, tail = os.path.split(live)
    stem, ext = os.path.splitext(tail)
    return os.path.join(head, f"{stem}_backing{ext}") if head else f"{stem}_backing{ext}"


class _Downloader:
    """Image artifacts are fetched with the task's own credentials, so the queue enforces its scopes."""

    def __init__(self, run: TaskRun) -> None:
        self.run = run

    async def __call__(self, task_id: str, path: str, dest: Path) -> None:
        fh = await asyncio.to_thread(dest.open, "wb")

        class Writer:
            async def write(self, chunk: bytes) -> None:
                await asyncio.to_thread(fh.write, chunk)

        async def writer_factory() -> Writer:
            await asyncio.to_thread(fh.seek, 0)
            await asyncio.to_thread(fh.truncate)
            return Writer()

        try:
            await taskcluster.aio.download.downloadArtifact(
                taskId=task_id, name=path, queueService=self.run.queue(), writerFactory=writer_factory
            )
        finally:
            await asyncio.to_thread(fh.close)

    async def find_task(self, namespace: str) -> str:
        try:
            found = await self.run.worker.index(self.run.credentials).findTask(namespace)
        except Exception as exc:
            raise ImageError(f'Could not find a task associated with "{namespace}" namespace. {exc}') from exc
        return str(found["taskId"])


class DockerExecutor(TaskExecutor):
    name = "docker"
    log_style = "docker-worker"

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        config = worker.config
        self.settings: DockerConfig = config.extra("dockerConfig") or DockerConfig()
        self.pool = ThreadPoolExecutor(max_workers=4 + 3 * config.capacity, thread_name_prefix="docker")
        self.client = (
            docker.DockerClient(base_url=self.settings.baseUrl) if self.settings.baseUrl else docker.from_env()
        )
        root = Path(config.downloadsDir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.images = ImageManager(
            self.client,
            root,
            {k: v.model_dump() for k, v in self.settings.registries.items()},
            options=ImageOptions(
                default_registry=self.settings.defaultRegistry,
                pull_attempts=self.settings.pullAttempts,
                pull_base_delay=self.settings.pullBaseDelaySeconds,
            ),
        )
        self.caches = CachePool(Path(config.cachesDir).resolve() / "docker-worker")
        self._containers: dict[str, Any] = {}
        self._held: dict[str, list[CacheInstance]] = {}
        self._work: dict[str, Path] = {}
        self._sweep()

    # -- plumbing ------------------------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def _sweep(self) -> None:
        """Remove containers a previous (crashed) run of this worker left behind."""
        label = f"{LABEL_WORKER}={self.worker.config.workerGroup}/{self.worker.config.workerId}"
        for container in self.client.containers.list(all=True, filters={"label": label}):
            log.info("removing leftover container %s", container.name)
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)

    @staticmethod
    def _key(run: TaskRun) -> str:
        return f"{run.task_id}/{run.run_id}"

    # -- validation ----------------------------------------------------------------------------------------
    def write_header(self, run: TaskRun) -> None:
        config = self.worker.config
        run.log.info(f"Task ID: {run.task_id}")
        run.log.info(f"Worker ID: {config.workerId}")
        run.log.info(f"Worker Group: {config.workerGroup}")
        run.log.info(f"Worker Node Type: {config.instanceType}")
        run.log.info(f"Worker Pool: {config.task_queue_id}")
        run.log.info(f"Worker Version: megalodon {__version__}")
        run.log.info(f"Public IP: {config.publicIP or ''}")
        run.log.info(f"Hostname: {socket.gethostname()}")

    def validate_payload(self, run: TaskRun) -> None:
        raw = run.task.get("payload")
        features = raw.get("features") if isinstance(raw, dict) else None
        # docker-worker checks features before the schema: an unknown feature fails the task.
        if isinstance(features, dict):
            unknown = sorted(set(features) - KNOWN_FEATURES)
            if unknown:
                raise Failure(f"Task was aborted because of unknown features: {', '.join(unknown)}")
            installed = run.worker.plugins.features
            for name in PLUGIN_FEATURES:
                if features.get(name) is True and name not in installed:
                    raise MalformedPayload(
                        f'this task is attempting to use feature "{name}", but no megalodon plugin installed on '
                        f"this worker provides it for the docker executor ({self.worker.config.task_queue_id})"
                    )
        try:
            payload = validate_payload(raw)
        except PayloadError as exc:
            details = "\n".join(f" - {field}: {message}" for field, message in exc.errors)
            run.log.error(f"`task.payload` format is invalid json schema errors:\n{details}")
            raise MalformedPayload(
                "Validation of payload failed: " + "; ".join(f"{f}: {m}" for f, m in exc.errors)
            ) from None
        for name, spec in (payload.artifacts or {}).items():
            check_artifact_name(name, f"artifacts.{name}")
            if spec.expires and parse_iso(spec.expires) > run.expires:
                message = f"Artifact {name!r} expires ({spec.expires}) after the task ({run.task['expires']})"
                run.log.error(f"`task.payload` format is invalid json schema errors:\n - {message}")
                raise MalformedPayload(message)
        check_artifact_name(payload.log, "log")
        run.payload = payload

    def requested_features(self, run: TaskRun) -> list[str]:
        features = run.payload.effective_features.requested()
        return [name for name in PLUGIN_FEATURES if features.get(name)]

    def max_run_time(self, run: TaskRun) -> int:
        return int(run.payload.max_run_time)

    def max_run_time_error(self, run: TaskRun) -> ExecutionError:
        return Failure(f"Task timeout after {self.max_run_time(run)} seconds. Force killing container.")

    def log_artifact_names(self, run: TaskRun) -> tuple[str | None, str | None]:
        payload = run.payload
        if payload is None:
            return "public/logs/live.log", "public/logs/live_backing.log"
        features = payload.effective_features
        live = payload.log if features.local_live_log else None
        backing = backing_log_name(payload.log) if (features.local_live_log or features.bulk_log) else None
        return live, backing

    # -- preparing -----------------------------------------------------------------------------------------
    async def prepare(self, run: TaskRun) -> None:
        """Get the image before the maxRunTime clock starts (docker-worker excludes pull time)."""
        self._work[self._key(run)] = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="dw-", dir=run.task_dir))
        min_free = self.worker.config.requiredDiskSpaceMegabytes * 1024 * 1024
        await self.images.gc(max_idle=self.settings.imageExpirationSeconds, min_free_bytes=min_free)
        try:
            image = await self.images.ensure_image(
                run.payload.image,
                task_id=run.task_id,
                task_scopes=run.scopes,
                download=_Downloader(run),
                log=run.log.info,
            )
        except ImageError as exc:
            run.log.error(f"Pulling docker image has failed.\nError: {exc}")
            raise Failure(f"Pulling docker image has failed: {exc}") from None
        run.facts["docker_image"] = image.name
        run.facts["docker_image_id"] = image.image_id
        if image.artifact_hash:
            run.facts["docker_image_artifact_hash"] = image.artifact_hash

    def _has(self, run: TaskRun, *alternatives: str) -> bool:
        return any(scope_satisfied(run.scopes, s) for s in alternatives)

    def _docker_config_error(self, run: TaskRun, reason: str) -> Failure:
        message = (
            "Docker configuration could not be created.  This may indicate an authentication error when "
            f"validating scopes necessary for running the task.\n{reason}"
        )
        run.log.error(message)
        return Failure(message)

    def environment(self, run: TaskRun) -> dict[str, str]:
        config = self.worker.config
        env = dict(run.env)
        env.update(run.payload.env or {})
        env.update(
            {
                "TASK_ID": run.task_id,
                "RUN_ID": str(run.run_id),
                "TASKCLUSTER_WORKER_TYPE": config.workerType,
                "TASKCLUSTER_WORKER_POOL": config.task_queue_id,
                "TASKCLUSTER_INSTANCE_TYPE": config.instanceType,
                "TASKCLUSTER_WORKER_GROUP": config.workerGroup,
                "TASKCLUSTER_PUBLIC_IP": config.publicIP or "",
                "TASKCLUSTER_ROOT_URL": config.rootURL,
                "TASKCLUSTER_WORKER_LOCATION": config.workerLocation,
            }
        )
        return env

    def host_config(self, run: TaskRun) -> dict[str, Any]:
        """Scope and config checks in docker-worker's order, then the container's HostConfig."""
        payload = run.payload
        pool = self.worker.config.task_queue_id
        caps = payload.capabilities
        binds: list[str] = []
        devices: list[str] = []
        privileged = bool(caps and caps.privileged)
        if privileged:
            if not self._has(run, "docker-worker:capability:privileged", f"docker-worker:capability:privileged:{pool}"):
                raise self._docker_config_error(run, "Insufficient scopes to run task in privileged mode.")
            if not self.settings.allowPrivileged:
                raise self._docker_config_error(
                    run,
                    "Cannot run task using docker privileged mode.  Worker config dockerConfig.allowPrivileged "
                    "is false.",
                )
        security_opt: list[str] = []
        if caps and caps.disable_seccomp:
            if not self._has(run, "docker-worker:capability:disableSeccomp"):
                raise self._docker_config_error(run, "Insufficient scopes to disable seccomp.")
            security_opt.append("seccomp=unconfined")
        if caps and caps.devices:
            for key, value in caps.devices.model_dump(by_alias=True, exclude_none=True).items():
                if not value:
                    continue
                if not self._has(
                    run, f"docker-worker:capability:device:{key}", f"docker-worker:capability:device:{key}:{pool}"
                ):
                    raise self._docker_config_error(run, f"Insufficient scopes to attach device {key!r}.")
                if key == "kvm":
                    if not os.path.exists("/dev/kvm"):
                        raise MalformedPayload("Device 'kvm' was requested but /dev/kvm does not exist on this worker")
                    devices.append("/dev/kvm:/dev/kvm:rwm")
                elif key == "hostSharedMemory":
                    binds.append("/dev/shm:/dev/shm")
                else:
                    raise MalformedPayload(
                        f"Device {key!r} was requested but this worker has no {key} device (loopback devices need "
                        "kernel modules this host does not provide)"
                    )
        cap_add: list[str] = []
        if payload.effective_features.allow_ptrace:
            if not self._has(run, "docker-worker:feature:allowPtrace"):
                raise self._docker_config_error(run, "Insufficient scopes to use feature allowPtrace.")
            cap_add.append("SYS_PTRACE")
        held: list[CacheInstance] = self._held.setdefault(self._key(run), [])
        for cache_name in payload.cache or {}:
            CachePool.check_name(cache_name)
            if not self._has(run, f"docker-worker:cache:{cache_name}", f"docker-worker:cache:{cache_name}:{pool}"):
                raise self._docker_config_error(run, "Insufficient scopes to attach cache volumes.")
        for cache_name, mount in (payload.cache or {}).items():
            instance = self.caches.acquire(cache_name)
            held.append(instance)
            run.log.info(f'using cache "{cache_name}" -> {instance.path}')
            binds.append(f"{instance.path}:{mount}")
        return {
            "privileged": privileged,
            "shm_size": self.settings.shmSize,
            "extra_hosts": {"localhost.localdomain": "127.0.0.1"},
            "binds": binds,
            "devices": devices,
            "cap_add": cap_add or None,
            "security_opt": security_opt or None,
        }

    # -- running -------------------------------------------------------------------------------------------
    async def run(self, run: TaskRun) -> None:
        started = time.monotonic()
        host = self.host_config(run)
        key = self._key(run)
        api = self.client.api
        command = list(run.payload.command) or None
        env = [f"{k}={v}" for k, v in self.environment(run).items()]
        config = self.worker.config
        created = await self._call(
            api.create_container,
            image=run.facts["docker_image"],
            command=command,
            environment=env,
            tty=True,
            stdin_open=False,
            labels={LABEL: key, LABEL_WORKER: f"{config.workerGroup}/{config.workerId}"},
            name=f"megalodon-{run.task_id}-{run.run_id}-{os.urandom(3).hex()}",
            host_config=api.create_host_config(**host),
        )
        container_id = created["Id"]
        container = await self._call(self.client.containers.get, container_id)
        self._containers[key] = container
        run.facts["docker_container_id"] = container_id
        run.log.info("=== Task Starting ===")
        exit_code = -1
        try:
            # Attach before starting: an attach to an already-exited container never ends.
            stream = await self._call(container.attach, stdout=True, stderr=True, stream=True, logs=True)
            try:
                await self._call(container.start)
            except docker.errors.APIError as exc:
                run.log.error(f"Failure to properly start execution environment.\n{exc.explanation or exc}")
                raise Failure("Failure to properly start execution environment.") from None
            exit_code = await self._stream_and_wait(run, container, stream)
        finally:
            run.log.info("=== Task Finished ===")
            verdict = "Successful" if exit_code == 0 and not run.aborted.is_set() else "Unsuccessful"
            seconds = time.monotonic() - started
            run.log.info(f"{verdict} task run with exit code: {exit_code} completed in {seconds:.3f} seconds")
        if run.aborted.is_set():
            return
        run.facts["exit_code"] = exit_code
        if exit_code != 0:
            on_exit = run.payload.on_exit_status
            if on_exit and on_exit.retry and exit_code in on_exit.retry:
                raise IntermittentTask(
                    f"Task exited with code {exit_code}, listed in payload.onExitStatus.retry: retrying"
                )
            raise Failure(f"Task exited with code {exit_code}")

    async def _stream_and_wait(self, run: TaskRun, container: Any, stream: Any) -> int:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

        def pump() -> None:
            try:
                for chunk in stream:
                    asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except Exception as exc:  # the stream ends with the container; errors only shorten the log
                log.debug("log stream of %s ended: %s", container.id, exc)
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        pumping = loop.run_in_executor(self.pool, pump)

        async def copy() -> None:
            while (chunk := await queue.get()) is not None:
                run.log.write(chunk)

        copying = asyncio.create_task(copy())
        waiting = asyncio.ensure_future(self._call(container.wait))
        aborted = asyncio.create_task(run.aborted.wait())
        try:
            await asyncio.wait({waiting, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                with contextlib.suppress(docker.errors.APIError):
                    await self._call(container.kill)
            result = await waiting
        finally:
            aborted.cancel()
        await pumping
        await copying
        return int(result.get("StatusCode", -1))

    def result(self, run: TaskRun) -> Artifacts:
        payload = run.payload
        container = self._containers.get(self._key(run))
        if payload is None or container is None or run.aborted.is_set():
            return NoArtifacts()  # docker-worker uploads nothing for aborted or cancelled runs
        if not payload.artifacts or not payload.effective_features.artifacts:
            return NoArtifacts()
        return DockerArtifacts(
            ArchiveFetcher(container),
            dict(payload.artifacts),
            run.expires,
            self._work[self._key(run)],
            run.log.error,
            docker.errors.NotFound,
        )

    async def cleanup(self, run: TaskRun) -> None:
        key = self._key(run)
        container = self._containers.pop(key, None)
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                await self._call(container.remove, force=True, v=True)
        purge = self._should_purge(run)
        for instance in self._held.pop(key, []):
            doomed = self.caches.release(instance, purge=purge)
            if doomed is not None:
                run.log.info(f'purging cache "{instance.name}" ({doomed})')
                await asyncio.to_thread(delete_tree, doomed)
        work = self._work.pop(key, None)
        if work is not None:
            await asyncio.to_thread(shutil.rmtree, work, True)
        if "docker_image" in run.facts:
            self.images.touch(run.facts["docker_image"])

    @staticmethod
    def _should_purge(run: TaskRun) -> bool:
        payload = run.payload
        if payload is None:
            return False
        code = run.facts.get("exit_code")
        on_exit = payload.on_exit_status
        return bool(on_exit and on_exit.purge_caches and code is not None and code in on_exit.purge_caches)


__all__ = ["DockerExecutor", "backing_log_name"]
