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
import datetime as dt
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import taskcluster.aio.download

from megalodon_core import __version__
from megalodon_core.artifact_download import download_artifact_to_file
from megalodon_core.artifacts import check_artifact_name
from megalodon_core.contracts import (
    ArtifactEntry,
    Artifacts,
    ExecutorRun,
    ExecutorUnavailable,
    NoArtifacts,
    TaskExecutor,
)
from megalodon_core.errors import ExecutionError, Failure, IntermittentTask, InternalError, MalformedPayload
from megalodon_core.logstyle import LogStyle
from megalodon_core.process import memory_limit_bytes, memory_limit_message
from megalodon_core.rundata import FeatureRequest, ImageIdentity, ProxyPlacement
from megalodon_core.scopes import expanded, scope_satisfied
from megalodon_core.task import TaskRun
from megalodon_core.timefmt import parse_iso

from .artifacts import ArchiveFetcher, DockerArtifacts
from .caches import CacheInstance, CachePool, PurgePoller, delete_tree
from .images import ImageError, ImageManager, ImageOptions, resolution_error
from .payload import DockerPayload, PayloadError, validate_payload
from .settings import DockerConfig
from .shell import KEEP_ALIVE_MOUNT, DockerShellLauncher, KeepAlive, keep_alive_entrypoint

log = logging.getLogger(__name__)


def _is_date(value: str) -> bool:
    try:
        parse_iso(value)
    except ValueError:
        return False
    return True


def _js_date(when: dt.datetime) -> str:
    """A JavaScript ``Date``'s ``toString()`` in UTC, as docker-worker's messages print dates."""
    return when.astimezone(dt.UTC).strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")


LABEL = "megalodon.task"
LABEL_WORKER = "megalodon.worker"
#: pid of the worker process that created the container: the start-up sweep spares live owners.
LABEL_OWNER = "megalodon.owner-pid"
#: docker-worker features provided by feature plugins; the pipeline refuses absent ones by name.
PLUGIN_FEATURES = ("taskclusterProxy", "chainOfTrust", "interactive")
#: Port the taskcluster proxy listens on at the task network's gateway (``http://taskcluster``).
DOCKER_PROXY_PORT = 80
#: docker-worker's task log lines: space-separated timestamp, no ``:warn`` tag, an empty line before errors.
DOCKER_WORKER = LogStyle("docker-worker", timestamp="%Y-%m-%d %H:%M:%S", warn="[taskcluster {ts}]", error_lead="\n")
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
        await download_artifact_to_file(self._queue(path), task_id, path, dest)

    async def find_task(self, namespace: str) -> str:
        try:
            found = await self.run.worker.index(self.run.credentials).findTask(namespace)
        except Exception as exc:
            raise ImageError(f'Could not find a task associated with "{namespace}" namespace. {exc}') from exc
        return str(found["taskId"])


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
    """Worker-lifetime half: engine connections, the thread pool, image and cache stores, leftover sweeps."""

    name = "docker"
    log_style = DOCKER_WORKER

    #: Attempts (and first backoff, doubled each time) at removing a task container, as docker-worker's GC.
    REMOVE_ATTEMPTS = 5
    REMOVE_BACKOFF = 0.2
    #: How long the output stream may outlive the container's exit before it is cut.
    STREAM_DRAIN_SECONDS = 10.0

    def __init__(self, worker: Any) -> None:
        # No engine call here: commands that only build executors (and a worker before its start-up
        # checks) must not touch the engine.  The connection and the sweep are :meth:`initialise`'s.
        super().__init__(worker)
        config = worker.config
        self.settings: DockerConfig = config.extra("dockerConfig") or DockerConfig()
        self.threads = 4 + 3 * config.capacity
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="docker")
        self.downloads = Path(config.downloadsDir).resolve()
        self.caches = CachePool(Path(config.cachesDir).resolve() / "docker-worker")
        self.purger = PurgePoller(self.caches, config.task_queue_id, self._purge_requests)
        #: Containers whose removal failed; retried before the next task and swept at the next start.
        self.leftovers: set[str] = set()
        self.label_worker = f"{config.workerGroup}/{config.workerId}"
        self._client: Any = None
        self._stream_api: Any = None
        self._images: ImageManager | None = None
        #: The engine ping in flight (:meth:`health`): one at a time, however long an engine hangs.
        self._ping: asyncio.Future[Any] | None = None

    async def initialise(self) -> None:
        """Worker start, before any claim: connect to the engine, then remove what a crashed run left.

        Connecting negotiates the API version, so a worker without a reachable engine stops here with a
        line naming the engine (or, with ``"executor": "auto"``, runs without this executor).
        """
        try:
            self._client = await self.call(_connect, self.settings, self.settings.apiTimeoutSeconds, None, self.threads)
            # Output streams and waits last as long as the task and may be silent for longer than any API
            # timeout: they get their own connection pool without one.
            stream = await self.call(_connect, self.settings, None, self._client.api.api_version, self.threads)
        except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
            where = self.settings.host or "the default Docker socket (DOCKER_HOST)"
            raise ExecutorUnavailable(f"the Docker engine at {where} does not answer: {exc}") from exc
        self._stream_api = stream.api
        await asyncio.to_thread(self.downloads.mkdir, parents=True, exist_ok=True)
        self._images = ImageManager(
            self._client,
            self.downloads,
            {k: v.model_dump() for k, v in self.settings.registries.items()},
            options=ImageOptions(
                default_registry=self.settings.defaultRegistry,
                pull_attempts=self.settings.pullAttempts,
                pull_base_delay=self.settings.pullBaseDelaySeconds,
                pull_policy=self.settings.imagePullPolicy,
                executor=self.pool,
            ),
        )
        # Containers a crashed run of this worker left behind go before any task of this run starts.
        removed = await self.call(self._sweep)
        if removed:
            log.info("removed %d leftover container(s) of an earlier run of this worker", len(removed))

    @property
    def client(self) -> Any:
        """The engine client (``docker.DockerClient``), connected by :meth:`initialise`."""
        return self._connected(self._client)

    @property
    def stream_api(self) -> Any:
        """A low-level client without an API timeout, for output streams and waits."""
        return self._connected(self._stream_api)

    @property
    def images(self) -> ImageManager:
        images: ImageManager = self._connected(self._images)
        return images

    @staticmethod
    def _connected(value: Any) -> Any:
        if value is None:
            raise RuntimeError("the docker executor was used before its initialise() connected to the engine")
        return value

    def new_run(self, run: TaskRun) -> DockerRun:
        return DockerRun(self, run)

    # -- plumbing ------------------------------------------------------------------------------------------
    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
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

    async def remove_container(self, container_id: str) -> bool:
        """Force-remove a container (and its anonymous volumes), retrying like docker-worker's GC."""
        delay = self.REMOVE_BACKOFF
        for attempt in range(1, self.REMOVE_ATTEMPTS + 1):
            try:
                await self.call(self.client.api.remove_container, container_id, force=True, v=True)
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

    # -- validation ----------------------------------------------------------------------------------------

    # -- preparing -----------------------------------------------------------------------------------------

    async def remove_network(self, network_id: str) -> None:
        try:
            await self.call(self.client.api.remove_network, network_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("could not remove network %s: %s", network_id[:12], exc)

    async def _purge_requests(self, worker_pool_id: str, since: str) -> dict[str, Any]:
        client = taskcluster.aio.PurgeCache(self.worker.client_options(), session=self.worker.session)
        answer: dict[str, Any] = await client.purgeRequests(worker_pool_id, query={"since": since})
        return answer

    async def purge_caches(self) -> None:
        """docker-worker polls purge-cache before starting a task: drop the caches it names."""
        for path in await self.purger.poll():
            await asyncio.to_thread(delete_tree, path)

    async def free_disk_space(self) -> None:
        """Disk is short before a claim: unused images first, then idle cache instances."""
        await self.collect_garbage()
        for path in self.caches.detach_idle():
            await asyncio.to_thread(delete_tree, path)

    async def health(self) -> str | None:
        """The engine answers its ``/_ping`` (the worker's ``selfCheckExecutors`` self-check before a claim)."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.get_running_loop().run_in_executor(self.pool, self.client.api.ping)
        try:
            await asyncio.shield(self._ping)
        except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
            where = self.settings.host or "the default Docker socket (DOCKER_HOST)"
            return f"the Docker engine at {where} does not answer: {exc}"
        return None

    async def close(self) -> None:
        """Worker stops: release the engine connections and the thread pool."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self.call(self._client.close)
        if self._stream_api is not None:
            with contextlib.suppress(Exception):
                await self.call(self._stream_api.close)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def collect_garbage(self) -> None:
        """Retry failed container removals, then drop idle images (all of them when disk is short)."""
        for container_id in list(self.leftovers):
            if await self.remove_container(container_id):
                self.leftovers.discard(container_id)
        min_free = self.worker.config.requiredDiskSpaceMegabytes * 1024 * 1024
        try:
            removed = await self.images.gc(max_idle=self.settings.imageExpirationSeconds, min_free_bytes=min_free)
        except (docker.errors.DockerException, OSError) as exc:  # never a task's fault
            log.warning("image garbage collection failed: %s", exc)
            return
        if removed:
            log.info("removed unused images: %s", ", ".join(removed))

    # -- running -------------------------------------------------------------------------------------------

    async def kill(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.APIError):  # 409: it exited meanwhile
            await self.call(self.client.api.kill, container_id)


class DockerRun(ExecutorRun[Any]):
    """One docker-worker payload in a container: its image, container, network and caches as attributes."""

    executor: DockerExecutor

    def __init__(self, executor: DockerExecutor, task_run: TaskRun) -> None:
        super().__init__(executor, task_run)
        #: monotonic time prepare began: docker-worker's footer duration includes the image pull.
        self.started = time.monotonic()
        self.work: Path | None = None
        self.image: str | None = None
        self.container_id: str | None = None
        self.network_id: str | None = None
        #: The task's own network (taskclusterProxy) and the host names the container resolves on it.
        self.network_name: str | None = None
        self.extra_hosts: dict[str, str] = {}
        self.caches: list[CacheInstance] = []
        #: docker-worker's interactive keep-alive (``features.interactive``), set in prepare.
        self.keep_alive: KeepAlive | None = None
        #: The task's scopes with roles expanded (docker-worker checks capabilities and caches against those).
        self.expanded_scopes: list[str] = list(task_run.scopes)

    @property
    def key(self) -> str:
        """The run's label value on its container and network (``<taskId>/<runId>``)."""
        return f"{self.task_run.task_id}/{self.task_run.run_id}"

    def write_header(self) -> None:
        run = self.task_run
        config = self.worker.config
        run.log.info(f"Task ID: {run.task_id}")
        run.log.info(f"Worker ID: {config.workerId}")
        run.log.info(f"Worker Group: {config.workerGroup}")
        run.log.info(f"Worker Node Type: {config.instanceType}")
        run.log.info(f"Worker Pool: {config.task_queue_id}")
        run.log.info(f"Worker Version: megalodon {__version__}")
        run.log.info(f"Public IP: {config.publicIP or ''}")
        run.log.info(f"Hostname: {socket.gethostname()}")
        # docker-worker lists the payload's caches in the header, with their path *in the container*.
        raw = run.task.get("payload")
        caches = raw.get("cache") if isinstance(raw, dict) else None
        if isinstance(caches, dict):
            for cache_name, mount in caches.items():
                run.log.info(f'using cache "{cache_name}" -> {mount}')

    def parse_payload(self, raw: Any) -> Any:
        """docker-worker's order: unknown features, then the schema, then artifact expiry vs task expiry."""
        run = self.task_run
        features = raw.get("features") if isinstance(raw, dict) else None
        if isinstance(features, dict):
            unknown = sorted(set(features) - KNOWN_FEATURES)
            if unknown:
                raise Failure(f"Task was aborted because of unknown features: {', '.join(unknown)}")
        # docker-worker's validatePayload: the schema error, then one line per artifact expiring after the
        # task, logged as `logSchemaErrors` does (a JSON list of strings).
        errors: list[str] = []
        payload: DockerPayload | None = None
        try:
            payload = validate_payload(raw)
        except PayloadError as exc:
            schema = f"{self.worker.config.rootURL}/schemas/docker-worker/v1/payload.json#"
            items = "\n  * ".join(
                f"data{'' if f == '(root)' else '/' + f.replace('.', '/')} {m}" for f, m in exc.errors
            )
            errors.append(f"\nSchema Validation Failed!\nRejecting Schema: {schema}\nErrors:\n  * {items}")
        artifacts = raw.get("artifacts") if isinstance(raw, dict) else None
        for name, spec in (artifacts if isinstance(artifacts, dict) else {}).items():
            expires = spec.get("expires") if isinstance(spec, dict) else None
            when = parse_iso(expires) if isinstance(expires, str) and _is_date(expires) else None
            if when is not None and when > run.expires:
                errors.append(
                    f"Artifact expiration for '{name}' must not be greater than task expiration. Artifact "
                    f"expiration is '{_js_date(when)}' but task expiration is '{_js_date(run.expires)}'"
                )
        if errors or payload is None:
            raise MalformedPayload(
                "`task.payload` format is invalid json schema errors:\n " + json.dumps(errors, indent=2)
            )
        for name in payload.artifacts or {}:
            check_artifact_name(name, f"artifacts.{name}")
        check_artifact_name(payload.log, "log")
        return payload

    def requested_features(self) -> list[FeatureRequest]:
        features = self.payload.effective_features
        requested = features.requested()
        requests = [FeatureRequest(name) for name in PLUGIN_FEATURES if requested.get(name)]
        if features.local_live_log:
            requests.append(FeatureRequest("liveLog", required=False))
        return requests

    def max_run_time(self) -> int:
        return int(self.payload.max_run_time)

    def max_run_time_error(self) -> ExecutionError:
        return Failure(f"Task timeout after {self.max_run_time()} seconds. Force killing container.")

    def log_artifact_names(self) -> tuple[str | None, str | None]:
        payload = self.payload
        features = payload.effective_features
        live = payload.log if features.local_live_log else None
        # docker-worker: `localLiveLog: false` means no log artifact at all.  Only a payload that asks for
        # `bulkLog: true` explicitly still gets the backing log (d2g's mapping); the schema's default does not.
        bulk = features.bulk_log and "bulk_log" in features.model_fields_set
        backing = backing_log_name(payload.log) if (features.local_live_log or bulk) else None
        return live, backing

    async def prepare(self) -> None:
        """Get the image before the maxRunTime clock starts (docker-worker excludes pull time)."""
        run = self.task_run
        self.started = time.monotonic()
        self.work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="dw-", dir=run.task_dir))
        await self.executor.collect_garbage()
        try:
            with run.data.phases.phase("image_pull"):
                image = await self.executor.images.ensure_image(
                    self.payload.image,
                    task_id=run.task_id,
                    task_scopes=run.scopes,
                    download=_Downloader(run),
                    log=run.log.info,
                    hold=True,
                )
        except ImageError as exc:
            raise resolution_error(exc) from None
        if image.pull is not None and image.pull.bytes_downloaded:
            run.data.phases.add_bytes("image_pull", image.pull.bytes_downloaded)
        self.image = image.name
        if self.payload.effective_features.taskcluster_proxy:
            await self._create_network()
        run.data.image = ImageIdentity(image.name, image.image_id, image.artifact_hash or None)
        # Interactive shells are ``docker exec`` sessions: they join the container once ``run`` started it.
        self.container_started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.payload.effective_features.interactive:
            settings = self.executor.settings
            self.keep_alive = KeepAlive(
                self.work / "interactive",
                settings.interactiveMinTimeSeconds,
                settings.interactiveExpirationAfterSessionSeconds,
            )
            await asyncio.to_thread(self.keep_alive.create)
        run.data.interactive = DockerShellLauncher(
            self.executor.stream_api, self.executor.call, self.container_started, self.keep_alive
        )

    async def _create_network(self) -> None:
        """A bridge network of the task's own, whose gateway (an address of this host) the taskcluster
        proxy feature listens on at port 80, so the container reaches it as ``http://taskcluster`` like
        docker-worker's linked proxy container, and concurrent tasks never share a proxy.  Recorded as the
        run's proxy placement; only the network's own addresses (the task container) may connect."""
        run = self.task_run
        name = f"megalodon-{run.task_id[:12]}-{run.run_id}-{os.urandom(3).hex()}"
        labels = {LABEL: self.key, LABEL_WORKER: self.executor.label_worker, LABEL_OWNER: str(os.getpid())}
        try:
            created = await self.executor.call(
                self.executor.client.api.create_network, name, driver="bridge", labels=labels
            )
            self.network_id = created["Id"]
            info = await self.executor.call(self.executor.client.api.inspect_network, self.network_id)
        except docker.errors.APIError as exc:
            raise InternalError(f"could not create the task's docker network: {exc.explanation or exc}") from None
        configs = (info.get("IPAM") or {}).get("Config") or []
        config = next((c for c in configs if c.get("Gateway")), None)
        if config is None:
            raise InternalError(f"docker network {name} has no gateway address for the taskcluster proxy")
        gateway = str(config["Gateway"]).split("/")[0]
        subnet = config.get("Subnet")
        self.network_name = name
        self.extra_hosts["taskcluster"] = gateway
        run.data.proxy = ProxyPlacement(
            host=gateway,
            port=DOCKER_PROXY_PORT,
            exact_port=True,
            url="http://taskcluster",
            allowed_sources=(str(subnet),) if subnet else (),
        )

    def _has(self, *alternatives: str, literal: bool = False) -> bool:
        """docker-worker matches caches and devices against the expanded scopes, privileged mode and
        allowPtrace against ``task.scopes`` as written (``literal``)."""
        given = self.task_run.scopes if literal else self.expanded_scopes
        return any(scope_satisfied(given, s) for s in alternatives)

    @staticmethod
    def _docker_config_error(reason: str) -> Failure:
        return Failure(
            "Docker configuration could not be created.  This may indicate an authentication error when "
            f"validating scopes necessary for running the task.\n{reason}"
        )

    def environment(self) -> dict[str, str]:
        """Feature env, then the payload's, then docker-worker's forced variables (never overridable)."""
        run = self.task_run
        config = self.worker.config
        env = dict(run.data.env)
        env.update(self.payload.env or {})
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

    def _devices(self, binds: list[str]) -> list[str]:
        """Scope, then presence, of each requested device; a device the host lacks is an error, not a skip."""
        caps = self.payload.capabilities
        if not caps or not caps.devices:
            return []
        pool = self.worker.config.task_queue_id
        devices: list[str] = []
        for key, wanted in caps.devices.model_dump(by_alias=True, exclude_none=True).items():
            if not wanted:
                continue
            if not self._has(f"docker-worker:capability:device:{key}", f"docker-worker:capability:device:{key}:{pool}"):
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

    def host_config(self) -> dict[str, Any]:
        """Scope and config checks in docker-worker's order, then the container's HostConfig.

        Caches are acquired last, once every check passed, and recorded in :attr:`caches` so cleanup gives them
        back whatever happens next.
        """
        payload = self.payload
        pool = self.worker.config.task_queue_id
        caps = payload.capabilities
        binds: list[str] = []
        privileged = bool(caps and caps.privileged)
        if privileged:
            if not self._has(
                "docker-worker:capability:privileged", f"docker-worker:capability:privileged:{pool}", literal=True
            ):
                raise self._docker_config_error(
                    "Insufficient scopes to run task in privileged mode. Try adding "
                    f"docker-worker:capability:privileged:{pool} to the .scopes array"
                )
            if not self.executor.settings.allowPrivileged:
                raise self._docker_config_error(
                    "Cannot run task using docker privileged mode.  Worker config dockerConfig.allowPrivileged "
                    "is false."
                )
        security_opt: list[str] = []
        if caps and caps.disable_seccomp:
            if not self._has("docker-worker:capability:disableSeccomp"):
                raise self._docker_config_error("Insufficient scopes to disable seccomp.")
            security_opt.append("seccomp=unconfined")
        devices = self._devices(binds)
        cap_add: list[str] = []
        if payload.effective_features.allow_ptrace:
            if not self._has("docker-worker:feature:allowPtrace", literal=True):
                raise self._docker_config_error(
                    "Insufficient scopes to use 'allowPtrace' feature.  Try adding docker-worker:feature:allowPtrace "
                    "to the .scopes array."
                )
            cap_add.append("SYS_PTRACE")
        for cache_name in payload.cache or {}:
            CachePool.check_name(cache_name)
            if not self._has(f"docker-worker:cache:{cache_name}", f"docker-worker:cache:{cache_name}:{pool}"):
                raise self._docker_config_error("Insufficient scopes to attach cache volumes.")
        for cache_name, mount in (payload.cache or {}).items():
            pool_caches = self.executor.caches.instances.get(cache_name, [])
            self.task_run.data.phases.cache(hit=any(not i.in_use and not i.purge for i in pool_caches))
            instance = self.executor.caches.acquire(cache_name)
            self.caches.append(instance)
            log.info("task %s: cache %r is instance %s", self.key, cache_name, instance.path)
            binds.append(f"{instance.path}:{mount}")
        return {
            "privileged": privileged,
            "shm_size": self.executor.settings.shmSize,
            "extra_hosts": {"localhost.localdomain": "127.0.0.1", **self.extra_hosts},
            "network_mode": self.network_name,
            "binds": binds,
            "devices": devices,
            "cap_add": cap_add or None,
            "security_opt": security_opt or None,
            # taskMemoryLimitMegabytes (off by default): the kernel kills the container's processes beyond it
            "mem_limit": memory_limit_bytes(self.worker.config) or None,
            "memswap_limit": memory_limit_bytes(self.worker.config) or None,
        }

    async def run(self) -> None:
        run = self.task_run
        key = self.key
        # docker-worker: `auth.expandScopes(task.scopes)` with the worker's credentials before any check.
        self.expanded_scopes = await expanded(run.scopes, self.worker.expand_scopes)
        if self.payload.cache:
            await self.executor.purge_caches()
        host = self.host_config()
        api = self.executor.client.api
        command = list(self.payload.command) or None
        env = [f"{k}={v}" for k, v in self.environment().items()]
        entrypoint = None
        if self.keep_alive is not None:
            # docker-worker's interactive wrapper around the image's entrypoint; an entrypoint set at create
            # drops the image's CMD, so a payload without command gets it explicitly.
            host["binds"].append(f"{self.keep_alive.directory}:{KEEP_ALIVE_MOUNT}:ro")
            image_config = (await self.executor.call(api.inspect_image, self.image)).get("Config") or {}
            entrypoint = keep_alive_entrypoint(image_config.get("Entrypoint"))
            command = command or list(image_config.get("Cmd") or [])
        try:
            created = await self.executor.call(
                api.create_container,
                image=self.image,
                command=command,
                entrypoint=entrypoint,
                environment=env,
                tty=True,
                stdin_open=False,
                labels={LABEL: key, LABEL_WORKER: self.executor.label_worker, LABEL_OWNER: str(os.getpid())},
                name=f"megalodon-{run.task_id}-{run.run_id}-{os.urandom(3).hex()}",
                host_config=api.create_host_config(**host),
            )
        except docker.errors.APIError as exc:
            raise Failure(f"Failure to create the task container: {exc.explanation or exc}") from None
        container_id: str = created["Id"]
        self.container_id = container_id
        run.log.info("=== Task Starting ===")
        exit_code = -1
        try:
            # Attach before starting: output printed before an attach would be lost, and an attach to an
            # already-exited container never ends.
            stream = await self.executor.call(
                self.executor.stream_api.attach, container_id, stdout=True, stderr=True, stream=True, logs=True
            )
            try:
                await self.executor.call(api.start, container_id)
            except docker.errors.APIError as exc:
                await self.executor.call(stream.close)
                raise Failure(f"Failure to properly start execution environment.\n{exc.explanation or exc}") from None
            self.container_started.set_result(container_id)
            if self.keep_alive is not None:
                self.keep_alive.started()
            exit_code = await self._stream_and_wait(container_id, stream)
        finally:
            if run.aborted.is_set():
                exit_code = -1  # docker-worker's footer for aborted runs
            run.log.info("=== Task Finished ===")
            verdict = "Successful" if exit_code == 0 else "Unsuccessful"
            seconds = time.monotonic() - self.started
            run.log.info(f"{verdict} task run with exit code: {exit_code} completed in {seconds:.3f} seconds")
        if run.aborted.is_set():
            return
        run.data.exit_code = exit_code
        if exit_code != 0 and memory_limit_bytes(self.worker.config):
            state = (await self.executor.call(api.inspect_container, container_id)).get("State", {})
            if state.get("OOMKilled"):
                run.log.error(memory_limit_message(self.worker.config))
                raise Failure("task exceeded the per-task memory limit")
        if exit_code != 0:
            on_exit = self.payload.on_exit_status
            if on_exit and on_exit.retry and exit_code in on_exit.retry:
                raise IntermittentTask(
                    f"Task exited with code {exit_code}, listed in payload.onExitStatus.retry: retrying"
                )
            raise Failure(f"Task exited with code {exit_code}")

    async def _stream_and_wait(self, container_id: str, stream: Any) -> int:
        """Copy the container's pty output into the task log while waiting for its exit or an abort.

        A pool thread reads the stream and hands chunks over through a bounded queue, so memory stays
        bounded whatever the task prints and the event loop only ever appends to the log file.
        """
        run = self.task_run
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

        pumping = loop.run_in_executor(self.executor.pool, pump)
        copying = asyncio.create_task(copy())
        waiting = asyncio.ensure_future(self.executor.call(self.executor.stream_api.wait, container_id))
        aborted = asyncio.create_task(run.aborted.wait())
        try:
            await asyncio.wait({waiting, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                await self.executor.kill(container_id)
            result: dict[str, Any] = await waiting
        except BaseException:
            await self.executor.kill(container_id)
            await self.executor.call(stream.close)
            raise
        finally:
            aborted.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(pumping), self.executor.STREAM_DRAIN_SECONDS)
            except TimeoutError:
                log.warning("output stream of %s outlived its container: cut", container_id[:12])
                await self.executor.call(stream.close)
                await pumping
            await copying
        return int(result.get("StatusCode", -1))

    def artifacts(self) -> Artifacts:
        run = self.task_run
        payload = self.payload if self.parsed else None
        if payload is None or self.container_id is None or self.work is None:
            return NoArtifacts()
        if run.aborted.is_set():
            return NoArtifacts()  # docker-worker uploads nothing for aborted or cancelled runs
        if not payload.artifacts or not payload.effective_features.artifacts:
            return NoArtifacts()

        async def runner(fn: Callable[[], list[ArtifactEntry]]) -> list[ArtifactEntry]:
            result: list[ArtifactEntry] = await self.executor.call(fn)
            return result

        return DockerArtifacts(
            ArchiveFetcher(self.executor.client.api, self.container_id),
            dict(payload.artifacts),
            run.expires,
            self.work,
            run.log.error,
            docker.errors.APIError,
            runner,
            log_info=run.log.info,
        )

    async def cleanup(self) -> None:
        """Remove the container, give caches back (purging on request), drop the work dir and image hold."""
        run = self.task_run
        if self.keep_alive is not None:
            self.keep_alive.close()
        if self.container_id is not None and not await self.executor.remove_container(self.container_id):
            self.executor.leftovers.add(self.container_id)
        if self.network_id is not None:
            await self.executor.remove_network(self.network_id)
        purge = self._should_purge()
        for instance in self.caches:
            doomed = self.executor.caches.release(instance, purge=purge)
            if doomed is not None:
                run.log.info(f'purging cache "{instance.name}" ({doomed})')
                await asyncio.to_thread(delete_tree, doomed)
        if self.work is not None:
            await asyncio.to_thread(shutil.rmtree, self.work, True)
        if self.image is not None:
            self.executor.images.release(self.image)

    def _should_purge(self) -> bool:
        """docker-worker evaluates ``onExitStatus.purgeCaches`` only for unsuccessful exits."""
        run = self.task_run
        if not self.parsed:
            return False
        payload = self.payload
        code = run.data.exit_code
        on_exit = payload.on_exit_status
        return bool(on_exit and on_exit.purge_caches and code and code in on_exit.purge_caches)


__all__ = ["DOCKER_WORKER", "DockerExecutor", "DockerRun", "backing_log_name"]
