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
import functools
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import taskcluster.aio.download

from megalodon_core import __version__
from megalodon_core.artifacts import check_artifact_name
from megalodon_core.contracts import ArtifactEntry, Artifacts, NoArtifacts, TaskExecutor
from megalodon_core.errors import ExecutionError, Failure, IntermittentTask, InternalError, MalformedPayload
from megalodon_core.scopes import scope_satisfied
from megalodon_core.task import TaskRun
from megalodon_core.timefmt import parse_iso

from .artifacts import ArchiveFetcher, DockerArtifacts
from .caches import CacheInstance, CachePool, delete_tree
from .images import ImageError, ImageManager, ImageOptions, resolution_error
from .payload import PayloadError, validate_payload
from .settings import DockerConfig

log = logging.getLogger(__name__)

LABEL = "megalodon.task"
LABEL_WORKER = "megalodon.worker"
#: pid of the worker process that created the container: the start-up sweep spares live owners.
LABEL_OWNER = "megalodon.owner-pid"
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
    """Image artifacts are fetched as docker-worker did: ``public/`` ones without credentials (the
    deployment's anonymous role covers them), others with the task's own credentials, so the queue
    enforces ``queue:get-artifact:<path>`` against the task's scopes rather than the worker's.
    """

    def __init__(self, run: TaskRun) -> None:
        self.run = run

    def _queue(self, path: str) -> Any:
        if path.startswith("public/"):
            return self.run.worker.queue({})
        return self.run.queue()

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
                taskId=task_id, name=path, queueService=self._queue(path), writerFactory=writer_factory
            )
        finally:
            await asyncio.to_thread(fh.close)

    async def find_task(self, namespace: str) -> str:
        try:
            found = await self.run.worker.index(self.run.credentials).findTask(namespace)
        except Exception as exc:
            raise ImageError(f'Could not find a task associated with "{namespace}" namespace. {exc}') from exc
        return str(found["taskId"])


@dataclass
class _RunState:
    """What the executor keeps for one run between prepare, run, result and cleanup."""

    #: monotonic time prepare began: docker-worker's footer duration includes the image pull.
    started: float
    work: Path | None = None
    image: str | None = None
    container_id: str | None = None
    network_id: str | None = None
    caches: list[CacheInstance] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _connect(settings: DockerConfig, timeout: float | None, version: str | None, pool_size: int) -> Any:
    kwargs: dict[str, Any] = {"timeout": timeout, "max_pool_size": pool_size}
    if version:
        kwargs["version"] = version
    if settings.host:
        return docker.DockerClient(base_url=settings.host, **kwargs)
    return docker.from_env(**kwargs)


class DockerExecutor(TaskExecutor):
    name = "docker"
    log_style = "docker-worker"

    #: Attempts (and first backoff, doubled each time) at removing a task container, as docker-worker's GC.
    REMOVE_ATTEMPTS = 5
    REMOVE_BACKOFF = 0.2
    #: How long the output stream may outlive the container's exit before it is cut.
    STREAM_DRAIN_SECONDS = 10.0

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        config = worker.config
        self.settings: DockerConfig = config.extra("dockerConfig") or DockerConfig()
        threads = 4 + 3 * config.capacity
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="docker")
        # Building the client negotiates the API version with the engine: the one engine call made on the
        # event loop, at worker start before anything is claimed, so that a worker without a reachable
        # engine fails here (and a multi-executor worker runs without this executor) instead of per task.
        self.client = _connect(self.settings, self.settings.apiTimeoutSeconds, None, threads)
        # Output streams and waits last as long as the task and may be silent for longer than any API
        # timeout: they get their own connection pool without one.
        self.stream_api = _connect(self.settings, None, self.client.api.api_version, threads).api
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
                pull_policy=self.settings.imagePullPolicy,
                executor=self.pool,
            ),
        )
        self.caches = CachePool(Path(config.cachesDir).resolve() / "docker-worker")
        self._runs: dict[str, _RunState] = {}
        #: Containers whose removal failed; retried before the next task and swept at the next start.
        self._leftovers: set[str] = set()
        self.label_worker = f"{config.workerGroup}/{config.workerId}"
        # Containers a crashed run of this worker left behind go before any task of this run starts; the
        # sweep runs in the pool so construction does not wait for it, and prepare() waits for it.
        self.swept: Future[list[str]] = self.pool.submit(self._sweep)

    # -- plumbing ------------------------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One blocking docker SDK call, in this executor's pool (never on the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def _sweep(self) -> list[str]:
        """Remove containers a previous (crashed) run of this worker left behind; returns their ids.

        A container whose owner pid is a live process other than this one belongs to another worker
        process with the same identity (two ``megalodon run-task`` at once, parallel test runs) and is
        left alone; one recorded with this very pid comes from an earlier incarnation (pid 1 in a
        container restarted after a crash) since this process has not created any yet.
        """
        removed = []
        filters = {"label": f"{LABEL_WORKER}={self.label_worker}"}
        for info in self.client.api.containers(all=True, filters=filters):
            owner = (info.get("Labels") or {}).get(LABEL_OWNER, "")
            if owner.isdigit() and int(owner) != os.getpid() and _pid_alive(int(owner)):
                log.debug("container %s belongs to live worker process %s: kept", info["Id"][:12], owner)
                continue
            log.info("removing leftover container %s (%s)", info["Id"][:12], ",".join(info.get("Names") or []))
            try:
                self.client.api.remove_container(info["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("could not remove leftover container %s: %s", info["Id"][:12], exc)
                continue
            removed.append(info["Id"])
        return removed

    async def _remove_container(self, container_id: str) -> bool:
        """Force-remove a container (and its anonymous volumes), retrying like docker-worker's GC."""
        delay = self.REMOVE_BACKOFF
        for attempt in range(1, self.REMOVE_ATTEMPTS + 1):
            try:
                await self._call(self.client.api.remove_container, container_id, force=True, v=True)
                return True
            except docker.errors.NotFound:
                return True
            except (docker.errors.APIError, OSError) as exc:  # OSError: engine connection trouble
                if attempt == self.REMOVE_ATTEMPTS:
                    log.error("could not remove container %s: %s", container_id[:12], exc)
                    return False
                await asyncio.sleep(delay)
                delay *= 2
        return False  # pragma: no cover - the loop always returns

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
        """docker-worker's order: unknown features, then the schema, then artifact expiry vs task expiry."""
        raw = run.task.get("payload")
        features = raw.get("features") if isinstance(raw, dict) else None
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
            raise MalformedPayload(f"`task.payload` format is invalid json schema errors:\n{details}") from None
        for name, spec in (payload.artifacts or {}).items():
            check_artifact_name(name, f"artifacts.{name}")
            if spec.expires and parse_iso(spec.expires) > run.expires:
                raise MalformedPayload(
                    "`task.payload` format is invalid json schema errors:\n - "
                    f"Artifact {name!r} expires ({spec.expires}) after the task ({run.task['expires']})"
                )
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
        state = self._runs[self._key(run)] = _RunState(started=time.monotonic())
        await asyncio.wrap_future(self.swept)
        state.work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="dw-", dir=run.task_dir))
        await self._collect_garbage()
        try:
            image = await self.images.ensure_image(
                run.payload.image,
                task_id=run.task_id,
                task_scopes=run.scopes,
                download=_Downloader(run),
                log=run.log.info,
                hold=True,
            )
        except ImageError as exc:
            raise resolution_error(exc) from None
        state.image = image.name
        if run.payload.effective_features.taskcluster_proxy:
            await self._create_network(run, state)
        run.facts["docker_image"] = image.name
        run.facts["docker_image_id"] = image.image_id
        if image.artifact_hash:
            run.facts["docker_image_artifact_hash"] = image.artifact_hash

    async def _create_network(self, run: TaskRun, state: _RunState) -> None:
        """A bridge network of the task's own, whose gateway (an address of this host) the taskcluster
        proxy feature listens on at port 80, so the container reaches it as ``http://taskcluster`` like
        docker-worker's linked proxy container, and concurrent tasks never share a proxy."""
        name = f"megalodon-{run.task_id[:12]}-{run.run_id}-{os.urandom(3).hex()}"
        labels = {LABEL: self._key(run), LABEL_WORKER: self.label_worker, LABEL_OWNER: str(os.getpid())}
        try:
            created = await self._call(self.client.api.create_network, name, driver="bridge", labels=labels)
            state.network_id = created["Id"]
            info = await self._call(self.client.api.inspect_network, state.network_id)
        except docker.errors.APIError as exc:
            raise InternalError(f"could not create the task's docker network: {exc.explanation or exc}") from None
        configs = (info.get("IPAM") or {}).get("Config") or []
        gateway = next((c.get("Gateway") for c in configs if c.get("Gateway")), None)
        if not gateway:
            raise InternalError(f"docker network {name} has no gateway address for the taskcluster proxy")
        run.facts["docker_proxy_gateway"] = gateway.split("/")[0]
        run.facts["docker_network"] = name

    async def _remove_network(self, network_id: str) -> None:
        try:
            await self._call(self.client.api.remove_network, network_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("could not remove network %s: %s", network_id[:12], exc)

    async def free_disk_space(self) -> None:
        """Disk is short before a claim: unused images first, then idle cache instances."""
        await self._collect_garbage()
        for path in self.caches.detach_idle():
            await asyncio.to_thread(delete_tree, path)

    async def close(self) -> None:
        """Worker stops: release the engine connections and the thread pool."""
        with contextlib.suppress(Exception):
            await self._call(self.client.close)
        with contextlib.suppress(Exception):
            await self._call(self.stream_api.close)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _collect_garbage(self) -> None:
        """Retry failed container removals, then drop idle images (all of them when disk is short)."""
        for container_id in list(self._leftovers):
            if await self._remove_container(container_id):
                self._leftovers.discard(container_id)
        min_free = self.worker.config.requiredDiskSpaceMegabytes * 1024 * 1024
        try:
            removed = await self.images.gc(max_idle=self.settings.imageExpirationSeconds, min_free_bytes=min_free)
        except (docker.errors.DockerException, OSError) as exc:  # never a task's fault
            log.warning("image garbage collection failed: %s", exc)
            return
        if removed:
            log.info("removed unused images: %s", ", ".join(removed))

    def _has(self, run: TaskRun, *alternatives: str) -> bool:
        return any(scope_satisfied(run.scopes, s) for s in alternatives)

    @staticmethod
    def _docker_config_error(reason: str) -> Failure:
        return Failure(
            "Docker configuration could not be created.  This may indicate an authentication error when "
            f"validating scopes necessary for running the task.\n{reason}"
        )

    def environment(self, run: TaskRun) -> dict[str, str]:
        """Feature env, then the payload's, then docker-worker's forced variables (never overridable)."""
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

    def _devices(self, run: TaskRun, binds: list[str]) -> list[str]:
        """Scope, then presence, of each requested device; a device the host lacks is an error, not a skip."""
        caps = run.payload.capabilities
        if not caps or not caps.devices:
            return []
        pool = self.worker.config.task_queue_id
        devices: list[str] = []
        for key, wanted in caps.devices.model_dump(by_alias=True, exclude_none=True).items():
            if not wanted:
                continue
            if not self._has(
                run, f"docker-worker:capability:device:{key}", f"docker-worker:capability:device:{key}:{pool}"
            ):
                raise self._docker_config_error(f"Insufficient scopes to attach device {key!r}.")
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
        return devices

    def host_config(self, run: TaskRun, state: _RunState) -> dict[str, Any]:
        """Scope and config checks in docker-worker's order, then the container's HostConfig.

        Caches are acquired last, once every check passed, and recorded in ``state`` so cleanup gives them
        back whatever happens next.
        """
        payload = run.payload
        pool = self.worker.config.task_queue_id
        caps = payload.capabilities
        binds: list[str] = []
        privileged = bool(caps and caps.privileged)
        if privileged:
            if not self._has(run, "docker-worker:capability:privileged", f"docker-worker:capability:privileged:{pool}"):
                raise self._docker_config_error("Insufficient scopes to run task in privileged mode.")
            if not self.settings.allowPrivileged:
                raise self._docker_config_error(
                    "Cannot run task using docker privileged mode.  Worker config dockerConfig.allowPrivileged "
                    "is false."
                )
        security_opt: list[str] = []
        if caps and caps.disable_seccomp:
            if not self._has(run, "docker-worker:capability:disableSeccomp"):
                raise self._docker_config_error("Insufficient scopes to disable seccomp.")
            security_opt.append("seccomp=unconfined")
        devices = self._devices(run, binds)
        cap_add: list[str] = []
        if payload.effective_features.allow_ptrace:
            if not self._has(run, "docker-worker:feature:allowPtrace"):
                raise self._docker_config_error("Insufficient scopes to use feature allowPtrace.")
            cap_add.append("SYS_PTRACE")
        for cache_name in payload.cache or {}:
            CachePool.check_name(cache_name)
            if not self._has(run, f"docker-worker:cache:{cache_name}", f"docker-worker:cache:{cache_name}:{pool}"):
                raise self._docker_config_error("Insufficient scopes to attach cache volumes.")
        for cache_name, mount in (payload.cache or {}).items():
            instance = self.caches.acquire(cache_name)
            state.caches.append(instance)
            run.log.info(f'using cache "{cache_name}" -> {instance.path}')
            binds.append(f"{instance.path}:{mount}")
        return {
            "privileged": privileged,
            "shm_size": self.settings.shmSize,
            "extra_hosts": {"localhost.localdomain": "127.0.0.1", **run.facts.get("docker_extra_hosts", {})},
            "network_mode": run.facts.get("docker_network"),
            "binds": binds,
            "devices": devices,
            "cap_add": cap_add or None,
            "security_opt": security_opt or None,
        }

    # -- running -------------------------------------------------------------------------------------------
    async def run(self, run: TaskRun) -> None:
        key = self._key(run)
        state = self._runs[key]
        host = self.host_config(run, state)
        api = self.client.api
        command = list(run.payload.command) or None
        env = [f"{k}={v}" for k, v in self.environment(run).items()]
        try:
            created = await self._call(
                api.create_container,
                image=state.image,
                command=command,
                environment=env,
                tty=True,
                stdin_open=False,
                labels={LABEL: key, LABEL_WORKER: self.label_worker, LABEL_OWNER: str(os.getpid())},
                name=f"megalodon-{run.task_id}-{run.run_id}-{os.urandom(3).hex()}",
                host_config=api.create_host_config(**host),
            )
        except docker.errors.APIError as exc:
            raise Failure(f"Failure to create the task container: {exc.explanation or exc}") from None
        container_id: str = created["Id"]
        state.container_id = container_id
        run.facts["docker_container_id"] = container_id
        run.log.info("=== Task Starting ===")
        exit_code = -1
        try:
            # Attach before starting: output printed before an attach would be lost, and an attach to an
            # already-exited container never ends.
            stream = await self._call(
                self.stream_api.attach, container_id, stdout=True, stderr=True, stream=True, logs=True
            )
            try:
                await self._call(api.start, container_id)
            except docker.errors.APIError as exc:
                await self._call(stream.close)
                raise Failure(f"Failure to properly start execution environment.\n{exc.explanation or exc}") from None
            exit_code = await self._stream_and_wait(run, container_id, stream)
        finally:
            if run.aborted.is_set():
                exit_code = -1  # docker-worker's footer for aborted runs
            run.log.info("=== Task Finished ===")
            verdict = "Successful" if exit_code == 0 else "Unsuccessful"
            seconds = time.monotonic() - state.started
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

    async def _stream_and_wait(self, run: TaskRun, container_id: str, stream: Any) -> int:
        """Copy the container's pty output into the task log while waiting for its exit or an abort.

        A pool thread reads the stream and hands chunks over through a bounded queue, so memory stays
        bounded whatever the task prints and the event loop only ever appends to the log file.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

        def pump() -> None:
            try:
                for chunk in stream:
                    asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except Exception as exc:  # the stream ends with the container; errors only shorten the log
                log.debug("output stream of %s ended: %s", container_id[:12], exc)
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        async def copy() -> None:
            while (chunk := await queue.get()) is not None:
                run.log.write(chunk)

        pumping = loop.run_in_executor(self.pool, pump)
        copying = asyncio.create_task(copy())
        waiting = asyncio.ensure_future(self._call(self.stream_api.wait, container_id))
        aborted = asyncio.create_task(run.aborted.wait())
        try:
            await asyncio.wait({waiting, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                await self._kill(container_id)
            result: dict[str, Any] = await waiting
        except BaseException:
            await self._kill(container_id)
            await self._call(stream.close)
            raise
        finally:
            aborted.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(pumping), self.STREAM_DRAIN_SECONDS)
            except TimeoutError:
                log.warning("output stream of %s outlived its container: cut", container_id[:12])
                await self._call(stream.close)
                await pumping
            await copying
        return int(result.get("StatusCode", -1))

    async def _kill(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.APIError):  # 409: it exited meanwhile
            await self._call(self.client.api.kill, container_id)

    def result(self, run: TaskRun) -> Artifacts:
        payload = run.payload
        state = self._runs.get(self._key(run))
        if payload is None or state is None or state.container_id is None or state.work is None:
            return NoArtifacts()
        if run.aborted.is_set():
            return NoArtifacts()  # docker-worker uploads nothing for aborted or cancelled runs
        if not payload.artifacts or not payload.effective_features.artifacts:
            return NoArtifacts()

        async def runner(fn: Callable[[], list[ArtifactEntry]]) -> list[ArtifactEntry]:
            result: list[ArtifactEntry] = await self._call(fn)
            return result

        return DockerArtifacts(
            ArchiveFetcher(self.client.api, state.container_id),
            dict(payload.artifacts),
            run.expires,
            state.work,
            run.log.error,
            docker.errors.APIError,
            runner,
        )

    async def cleanup(self, run: TaskRun) -> None:
        """Remove the container, give caches back (purging on request), drop the work dir and image hold."""
        state = self._runs.pop(self._key(run), None)
        if state is None:
            return
        if state.container_id is not None and not await self._remove_container(state.container_id):
            self._leftovers.add(state.container_id)
        if state.network_id is not None:
            await self._remove_network(state.network_id)
        purge = self._should_purge(run)
        for instance in state.caches:
            doomed = self.caches.release(instance, purge=purge)
            if doomed is not None:
                run.log.info(f'purging cache "{instance.name}" ({doomed})')
                await asyncio.to_thread(delete_tree, doomed)
        if state.work is not None:
            await asyncio.to_thread(shutil.rmtree, state.work, True)
        if state.image is not None:
            self.images.release(state.image)

    @staticmethod
    def _should_purge(run: TaskRun) -> bool:
        """docker-worker evaluates ``onExitStatus.purgeCaches`` only for unsuccessful exits."""
        payload = run.payload
        if payload is None:
            return False
        code = run.facts.get("exit_code")
        on_exit = payload.on_exit_status
        return bool(on_exit and on_exit.purge_caches and code and code in on_exit.purge_caches)


__all__ = ["DockerExecutor", "backing_log_name"]
