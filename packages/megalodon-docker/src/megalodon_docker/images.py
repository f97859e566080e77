"""docker-worker's image handling (registry pulls, task/indexed image artifacts, GC) on the docker SDK.

The docker SDK is synchronous; every call to it runs in a worker thread (the executor's own pool when one is
given in :class:`ImageOptions`, else ``asyncio.to_thread``) so that one slow pull or a multi-gigabyte
``docker load`` never stalls the worker's event loop (reclaims, live logs and other tasks keep running).

Behaviour follows docker-worker (``src/docker/*.js`` at a32a0be37f) where a task could notice it:

* a registry image already present locally is used as is, never re-pulled (d2g always pulls; docker-worker
  did not) -- the ``if-not-present`` pull policy, the default; ``always`` and ``never`` are megalodon's
  (:data:`PullPolicy`);
* transient pull failures are retried 5 times with exponential backoff and jitter;
* registry credentials from the worker config are only handed out to tasks holding
  ``docker-worker:image:<repo>:<tag>``;
* artifact images are re-tagged ``<md5(taskId + path)>:latest`` before loading, which is also the cache
  key: a second task using the same artifact skips the download;
* the task log lines use docker-worker's wording, since people grep task logs for them.

Deliberate differences: the archive is not extracted to disk and repacked, it is rewritten member by
member (streaming, memory bounded); compressed images are decompressed in-process (``zstandard``,
``lz4.frame``) rather than with the ``zstd``/``lz4`` binaries; the file extension is checked *before* the
download rather than after; concurrent ensures of one image share a single download instead of
docker-worker's worker-wide queue of all image ensures; and a pull failure is classified
(:func:`classify_pull_error`) instead of retried whatever it is: docker-worker retried a misspelt image
name five times (minutes of backoff) before failing the task, megalodon rejects it at once
(:class:`ImagePullRejected`) and keeps the retries for what a retry can cure (:class:`ImagePullUnavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import posixpath
import random
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal, Protocol, get_args, runtime_checkable

import docker.errors

from megalodon_core.archive_safety import UnsafeMember, link_escapes, member_parts
from megalodon_core.errors import ExecutionError, Failure, IntermittentTask, MalformedPayload
from megalodon_core.scopes import scope_satisfied

from .payload import DockerImage, IndexedImage, TaskImage
from .settings import PullPolicy

__all__ = [
    "PODMAN_LEGACY_ARCHIVE_MESSAGE",
    "PULL_POLICIES",
    "UNSUPPORTED_FORMAT_MESSAGE",
    "ArtifactDownloader",
    "ImageError",
    "ImageManager",
    "ImageNotAuthorizedError",
    "ImageNotPresentError",
    "ImageOptions",
    "ImagePullRejected",
    "ImagePullUnavailable",
    "IndexedArtifactDownloader",
    "PullPolicy",
    "PullReport",
    "RegistryCredentials",
    "ResolvedImage",
    "classify_pull_error",
    "resolution_error",
]

#: :data:`PullPolicy` (``dockerConfig.imagePullPolicy``): when a registry image that is already present is
#: pulled again.  ``if-not-present`` (docker-worker's behaviour): never; ``always``: before every task,
#: falling back to the present image when the registry cannot be reached; ``never``: an absent image is
#: not pulled at all.
PULL_POLICIES: tuple[str, ...] = get_args(PullPolicy)

PODMAN_LEGACY_ARCHIVE_MESSAGE = (
    "This image archive is in docker save format v1.0 (no manifest.json), which the podman engine of this "
    "worker cannot load (podman reads docker-archive 1.1+ and OCI archives): re-create it with docker save "
    "from docker >= 1.10, or run the task on a Docker engine"
)
UNSUPPORTED_FORMAT_MESSAGE = (
    "Unsupported image file format. Expected tarball with extension: .tar.zst, .tar.lz4 or .tar"
)
_IMAGE_SCOPE_PREFIX = "docker-worker:image:"
_COPY_CHUNK = 1 << 20

#: A registry entry of the worker config: ``{"username": ..., "password": ...}``.
RegistryCredentials = Mapping[str, str]


class ArtifactDownloader(Protocol):
    """Downloads the *latest* run's artifact ``path`` of ``task_id`` to the file ``dest``.

    Supplied by the caller because it needs the task's Taskcluster credentials (signed URLs for non-public
    artifacts) and owns retries, HTTP decoding and progress lines (``Download Progress: NN.NN%``).  The
    image manager itself logs ``Downloading artifact ...`` before the call and ``Downloaded artifact
    successfully.`` after it, and hashes the file.  It must raise on failure and may leave a partial file.
    """

    async def __call__(self, task_id: str, path: str, dest: Path) -> None: ...


@runtime_checkable
class IndexedArtifactDownloader(ArtifactDownloader, Protocol):
    """A downloader that can also resolve an index namespace to a task id, for ``indexed-image``.

    ``find_task`` is ``index.findTask(namespace).taskId``, called with the task's scopes as authorized
    scopes; it lives on the downloader because both need the same task credentials.
    """

    async def find_task(self, namespace: str) -> str: ...


class ImageError(Exception):
    """The task's image could not be made available; docker-worker resolves the task as failed."""


class ImagePullRejected(ImageError):
    """The engine or the registry refused the reference: invalid, unknown, or not authorized.

    A retry cannot change the answer, so nothing is retried and the task is ``malformed-payload``: its
    author must fix the image name or the credentials the worker was given.
    """


class ImagePullUnavailable(ImageError):
    """Every attempt failed in a way a retry may cure (rate limit, 5xx, timeout, connection error).

    The task is not at fault and this worker could not reach the registry: ``intermittent-task``, so the
    queue retries it (possibly on another worker).
    """


class ImageNotPresentError(ImageError):
    """``imagePullPolicy: never`` and the image is not present on this worker: ``malformed-payload``."""


class ImageNotAuthorizedError(ImageError):
    """The task lacks the scope that guards the image (private registry or non-public artifact)."""

    def __init__(self, image: object, missing_scope: str) -> None:
        self.missing_scope = missing_scope
        super().__init__(
            f"Not authorized to use {json.dumps(image, separators=(',', ':'))}.  Ensure that the task "
            f"scopes are correctly defined in the task definition (missing scope: {missing_scope})"
        )


@dataclasses.dataclass(frozen=True)
class PullReport:
    """What one registry pull cost, for the task log and the worker's metrics.

    ``bytes_downloaded`` is the sum of the compressed layer sizes the engine reported downloading (layers
    already present count 0); None when the engine reports no sizes (podman's Docker-compatible API sends
    no progress details).  ``seconds`` covers every attempt and the backoff between them.  ``fallback`` is
    True when the pull failed transiently under ``imagePullPolicy: always`` and the present image was used.
    """

    reference: str
    seconds: float
    bytes_downloaded: int | None
    attempts: int
    fallback: bool = False


@dataclasses.dataclass(frozen=True)
class ResolvedImage:
    """An image ready to run.

    ``image_id`` is the docker ``Id`` (``sha256:...``), recorded as ``imageHash`` in chain of trust;
    ``name`` is the reference to create the container from; ``artifact_hash`` is ``sha256:<hex>`` of the
    downloaded artifact file for task/indexed images (``imageArtifactHash``), when known.  ``pull`` is set
    for the caller whose ensure pulled from a registry (not for callers that waited on its pull, so a pull
    is counted once).
    """

    image_id: str
    name: str
    artifact_hash: str | None = None
    #: Not part of the identity: two ensures of one image compare equal whoever pulled it.
    pull: PullReport | None = dataclasses.field(default=None, compare=False)


# Engine answers are HTTP 500 with the registry's message for nearly everything (dockerd and podman alike),
# so the message decides.  Transient patterns are looked at first: a rate-limit text may mention
# authentication ("...increase the limit by authenticating"), never the other way round.
_TRANSIENT_PATTERN = re.compile(
    r"toomanyrequests|too many requests|\b429\b|unexpected http status: 5\d\d|\b5\d\d (internal|bad|service|gateway)"
    r"|service unavailable|bad gateway|gateway time-?out|internal server error|connection refused"
    r"|connection reset|broken pipe|i/o timeout|timed out|timeout|no route to host|network is unreachable"
    r"|no such host|temporary failure|unexpected eof|\beof\b|tls handshake",
    re.IGNORECASE,
)
_REJECTED_PATTERN = re.compile(
    r"invalid reference|repository name must|manifest unknown|name unknown|blob unknown|not found"
    r"|does not exist|unauthorized|authentication required|no basic auth credentials|denied|forbidden"
    r"|incorrect username or password|\b40[13]\b",
    re.IGNORECASE,
)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


def classify_pull_error(exc: BaseException) -> Literal["rejected", "transient"]:
    """Whether a failed pull can succeed when retried (``transient``) or never will (``rejected``).

    The engine's own 400 (invalid reference format), 401/403 and 404 (manifest or repository unknown,
    docker-hub's "pull access denied") are rejections; everything else is judged on the message, and a
    message that matches nothing known counts as transient: retrying an unknown failure costs minutes,
    failing a good task for it costs the task.
    """
    if isinstance(exc, docker.errors.APIError) and exc.status_code in (400, 401, 403, 404):
        return "rejected"
    text = _error_text(exc)
    if _TRANSIENT_PATTERN.search(text):
        return "transient"
    if _REJECTED_PATTERN.search(text):
        return "rejected"
    return "transient"


def resolution_error(exc: ImageError) -> ExecutionError:
    """The error that resolves a task whose image could not be made available, with docker-worker's text.

    Missing scopes and artifact-image problems fail the task as docker-worker did; a rejected reference
    and ``imagePullPolicy: never`` are ``malformed-payload``; a registry that stayed unavailable through
    every retry is ``intermittent-task``.
    """
    message = f"Pulling docker image has failed.\nError: {exc}"
    if isinstance(exc, ImagePullRejected | ImageNotPresentError):
        return MalformedPayload(message)
    if isinstance(exc, ImagePullUnavailable):
        return IntermittentTask(message)
    return Failure(message)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """Tunables of :class:`ImageManager`, with docker-worker's defaults.

    ``default_registry`` is the host assumed for two-part names like ``user/img`` when looking up
    credentials.  ``pull_attempts``, ``pull_base_delay`` (seconds) and ``pull_jitter`` drive the pull retry
    backoff ``base * 2**(n-1) * (1 ± jitter)``; ``pull_policy`` is :data:`PullPolicy`.  ``clock`` (for
    last-used times) and ``disk_free`` (free bytes where images live; default: the work dir's file system)
    are injectable for tests.  ``executor``
    runs the engine calls (the docker executor passes its own pool, so image work and container streams
    share one bounded set of threads and never starve the default pool that file operations use).
    """

    default_registry: str = "registry.hub.docker.com"
    pull_attempts: int = 5
    pull_base_delay: float = 15.0
    pull_jitter: float = 0.25
    pull_policy: PullPolicy = "if-not-present"
    clock: Callable[[], float] = time.monotonic
    disk_free: Callable[[], int] | None = None
    executor: Executor | None = None


@dataclasses.dataclass
class _Usage:
    image_id: str
    last_used: float


ImageSpec = str | DockerImage | IndexedImage | TaskImage


def _split_reference(name: str) -> tuple[str, str | None, str | None]:
    """``repo[:tag][@digest]`` -> (repo, tag, digest), where a ``:`` before the last ``/`` is a port."""
    digest = None
    if "@" in name:
        name, digest = name.split("@", 1)
    repo, tag = name, None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        repo, tag = name[:colon], name[colon + 1 :]
    return repo, tag, digest


#: The names of Docker Hub's registry (what the engine pulls a two-part ``user/image`` name from).
DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
#: The local names artifact images are loaded under (``md5(taskId + path)``): never a registry image's.
_ARTIFACT_IMAGE_REPO = re.compile(r"[0-9a-f]{32}")
#: An image ID (``sha256:<hex>``, or the bare 64 hex digits), which the engine resolves without any name.
_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")


def _check_registry_name(name: str) -> None:
    """Refuse registry image names that would reach a local image without its guard.

    The engine finds a local image by its ID and by any unique ID prefix, and artifact images are cached
    under ``md5(taskId + path):latest``: a task naming either as a registry image would otherwise get a
    private registry image without its ``docker-worker:image:`` scope, or a private artifact image without
    ``queue:get-artifact:``, since a present image is used without a pull.
    """
    repo, _tag, _digest = _split_reference(name)
    if _IMAGE_ID.fullmatch(name):
        raise ImagePullRejected(f"Image {name} is an image ID: name a repository (and tag or digest) instead")
    if _ARTIFACT_IMAGE_REPO.fullmatch(repo):
        raise ImagePullRejected(
            f"Image name {repo} is reserved for images loaded from task artifacts on this worker: use an "
            '"indexed-image" or "task-image" image'
        )


def _normalized_references(reference: str, *, requested: bool) -> set[str]:
    """``reference`` as the engine would resolve it (``docker.io/library/`` added, ``:latest`` defaulted).

    A requested unqualified name also matches ``localhost/<name>``, podman's name for local images.
    """
    repo, tag, digest = _split_reference(reference)
    parts = [p for p in repo.split("/") if p]
    qualified = len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost")
    suffix = f"@{digest}" if digest else f":{tag or 'latest'}"
    names = set()
    if not qualified:
        if requested:
            names.add("localhost/" + "/".join(parts) + suffix)
        parts = ["docker.io", *parts]
    if parts[0] == "index.docker.io":
        parts[0] = "docker.io"
    if parts[0] == "docker.io" and len(parts) == 2:
        parts.insert(1, "library")
    names.add("/".join(parts) + suffix)
    return names


def _carries_name(attrs: Mapping[str, Any], name: str) -> bool:
    """Whether an image (``inspect`` attributes) is tagged ``name`` or has it as a repository digest."""
    wanted = _normalized_references(name, requested=True)
    for known in (attrs.get("RepoTags") or []) + (attrs.get("RepoDigests") or []):
        if wanted & _normalized_references(str(known), requested=False):
            return True
    return False


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse archive members that could write outside the archive root if it were extracted.

    docker-worker extracted image archives to disk; a crafted image artifact must never be able to make
    the worker (or anything later unpacking our rewritten copy) write outside its directory.
    """
    name = member.name
    try:
        member_parts(name, collapse=False, windows_names=False)
    except UnsafeMember:
        raise ImageError(f'Refusing image archive member "{name}": it would escape the archive root') from None
    if member.issym() or member.islnk():
        target = member.linkname
        if link_escapes(name, target, symbolic=member.issym()):
            raise ImageError(
                f'Refusing image archive member "{name}": its link target "{target}" is outside the archive'
            )
    elif not (member.isfile() or member.isdir()):
        raise ImageError(f'Refusing image archive member "{name}": unsupported member type')


def _retag_archive(src: Path, dst: Path, new_name: str) -> bool:
    """Copy the ``docker save`` archive ``src`` to ``dst`` with its single image tagged ``new_name:latest``.

    ``manifest.json`` (format >= 1.1) gets ``RepoTags = [new_name:latest]`` and any ``repositories`` file
    is dropped, as docker-worker did; a v1.0 archive has its ``repositories`` entry renamed instead.
    Member data is streamed, never held in memory.  Returns True for a v1.0 archive (no ``manifest.json``).
    """
    legacy = False
    with tarfile.open(src, "r:") as archive:
        members = archive.getmembers()
        for member in members:
            _check_member(member)
        by_name = {posixpath.normpath(m.name): m for m in members if m.isfile()}

        def read_json(member: tarfile.TarInfo) -> Any:
            handle = archive.extractfile(member)
            assert handle is not None
            try:
                return json.load(handle)
            except ValueError as exc:
                raise ImageError(f"Invalid {member.name} in image archive: {exc}") from None

        replacements: dict[str, bytes | None] = {}
        if "manifest.json" in by_name:
            manifest = read_json(by_name["manifest.json"])
            if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
                raise ImageError("Image tarballs must only contain one image")
            manifest[0]["RepoTags"] = [f"{new_name}:latest"]
            replacements["manifest.json"] = json.dumps(manifest).encode()
            replacements["repositories"] = None
        elif "repositories" in by_name:
            repositories = read_json(by_name["repositories"])
            if not isinstance(repositories, dict) or len(repositories) != 1:
                raise ImageError("Image tarballs must only contain one image")
            (tags,) = repositories.values()
            if not isinstance(tags, dict) or not tags:
                raise ImageError("Invalid repositories file in image archive")
            old_tag = next(iter(tags))
            if old_tag != "latest":
                tags["latest"] = tags.pop(old_tag)
            replacements["repositories"] = json.dumps({new_name: tags}).encode()
            legacy = True
        else:
            raise ImageError("Unknown docker archive format")

        with tarfile.open(dst, "w:", format=tarfile.PAX_FORMAT) as out:
            for member in members:
                key = posixpath.normpath(member.name)
                if key in replacements and member.isfile():
                    content = replacements.pop(key)
                    if content is not None:
                        member.size = len(content)
                        out.addfile(member, io.BytesIO(content))
                    continue
                out.addfile(member, archive.extractfile(member) if member.isfile() else None)
    return legacy


def _decompress(src: Path, dst: Path, suffix: str) -> None:
    if suffix == ".zst":
        import zstandard

        with src.open("rb") as fin, dst.open("wb") as fout:
            zstandard.ZstdDecompressor().copy_stream(fin, fout, read_size=_COPY_CHUNK, write_size=_COPY_CHUNK)
    else:
        import lz4.frame

        with lz4.frame.open(src, "rb") as fin, dst.open("wb") as fout:
            shutil.copyfileobj(fin, fout, _COPY_CHUNK)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _load_archive(client: docker.DockerClient, path: Path) -> None:
    """POST the archive to ``/images/load``, streaming it from disk.

    The low-level call is used because the SDK's ``images.load`` chokes on the empty (non-JSON) response
    the engine sends for v1.0 archives; success is checked afterwards by inspecting the new name.
    """
    with path.open("rb") as handle:
        data: BinaryIO = handle
        events = client.api.load_image(data)
        with contextlib.suppress(ValueError):
            for event in events:
                if isinstance(event, dict) and "errorDetail" in event:
                    raise ImageError(str(event["errorDetail"].get("message") or event))


class ImageManager:
    """Makes task images available in the local docker engine, once per image, and collects old ones.

    ``work_dir`` holds temporary downloads (``<work_dir>/tmp-docker-images/<uuid>/``, removed afterwards);
    ``registries`` maps a registry host or ``host/user`` to ``{"username", "password"}`` (docker-worker's
    ``registries`` config).
    """

    def __init__(
        self,
        client: docker.DockerClient,
        work_dir: Path,
        registries: Mapping[str, RegistryCredentials] | None = None,
        *,
        options: ImageOptions | None = None,
    ) -> None:
        opts = options or ImageOptions()
        self._client = client
        self._work_dir = Path(work_dir)
        self._registries = dict(registries or {})
        self._default_registry = opts.default_registry
        self._pull_attempts = max(1, opts.pull_attempts)
        self._pull_base_delay = opts.pull_base_delay
        self._pull_jitter = opts.pull_jitter
        if opts.pull_policy not in PULL_POLICIES:
            raise ValueError(f"unknown image pull policy {opts.pull_policy!r}; expected one of {PULL_POLICIES}")
        self._pull_policy = opts.pull_policy
        self._clock = opts.clock
        self._disk_free = opts.disk_free or (lambda: shutil.disk_usage(self._work_dir).free)
        self._executor = opts.executor
        self._podman: bool | None = None
        # One shared job per image key: concurrent ensures of the same image await the same task.
        self._inflight: dict[str, asyncio.Task[ResolvedImage]] = {}
        # sha256 of downloaded artifact files, by md5 image name, so a cached image still reports it.
        self._artifact_hashes: dict[str, str] = {}
        # Images this manager handed out, by the reference they run as; the basis for gc().
        self._usage: dict[str, _Usage] = {}
        # References being ensured right now, and references held by running tasks: gc() keeps both, so an
        # image is never removed between the moment a task resolved it and the moment its container exists.
        self._ensuring: dict[str, int] = {}
        self._holds: dict[str, int] = {}

    async def _engine(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one blocking docker SDK call in the engine thread pool."""
        if self._executor is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def _engine_is_podman(self) -> bool:
        """Whether the engine is podman's Docker-compatible service (asked once; where it differs from
        dockerd the manager says so instead of passing on podman's less telling error)."""
        if self._podman is None:
            try:
                version: dict[str, Any] = await self._engine(self._client.version)
            except (docker.errors.DockerException, OSError):
                return False
            names = [str(c.get("Name", "")) for c in version.get("Components") or [] if isinstance(c, dict)]
            self._podman = any("podman" in name.lower() for name in names)
        return self._podman

    def release(self, name: str) -> None:
        """Undo the hold ``ensure_image(..., hold=True)`` took once the task's container is gone."""
        count = self._holds.get(name, 0) - 1
        if count > 0:
            self._holds[name] = count
        else:
            self._holds.pop(name, None)
        self.touch(name)

    @contextlib.contextmanager
    def _ensuring_name(self, name: str) -> Iterator[None]:
        self._ensuring[name] = self._ensuring.get(name, 0) + 1
        try:
            yield
        finally:
            count = self._ensuring[name] - 1
            if count > 0:
                self._ensuring[name] = count
            else:
                del self._ensuring[name]

    @property
    def artifact_hashes(self) -> Mapping[str, str]:
        return dict(self._artifact_hashes)

    def last_used(self, name: str) -> float | None:
        usage = self._usage.get(name)
        return None if usage is None else usage.last_used

    def touch(self, name: str) -> None:
        """Record that ``name`` is still in use (e.g. when its task container is removed)."""
        usage = self._usage.get(name)
        if usage is not None:
            usage.last_used = self._clock()

    # -- ensure -------------------------------------------------------------------------------------------

    async def ensure_image(
        self,
        spec: ImageSpec,
        *,
        task_id: str,
        task_scopes: list[str],
        download: ArtifactDownloader,
        log: Callable[[str], None],
        hold: bool = False,
    ) -> ResolvedImage:
        """Make the payload's image available locally and say what to run.

        ``task_id`` is the id of the task that needs the image (for log context); ``log`` receives task
        log messages without timestamp or newline.  For ``indexed-image``, ``download`` must also be an
        :class:`IndexedArtifactDownloader`.  Raises :class:`ImageError` (or its subclass
        :class:`ImageNotAuthorizedError`) with docker-worker's messages.

        With ``hold=True`` the image is protected from :meth:`gc` until :meth:`release` is called with the
        returned name: the hold is taken before this coroutine returns, so no collection can slip in
        between the ensure and the creation of the task's container.
        """
        del task_id  # The requesting task shows up through ``log``; the key is the image, not the task.
        if isinstance(spec, str):
            spec = DockerImage(type="docker-image", name=spec)
        if isinstance(spec, DockerImage):
            resolved = await self._ensure_registry_image(spec, task_scopes, log)
        elif isinstance(spec, IndexedImage | TaskImage):
            # docker-worker's order: the artifact scope is checked before anything else, so a task without
            # it learns nothing from the index (not even whether the namespace exists).
            self._check_artifact_scope(spec, task_scopes)
            if isinstance(spec, IndexedImage):
                source_task = await self._find_task(spec.namespace, download)
            else:
                source_task = spec.task_id
            resolved = await self._ensure_artifact_image(
                spec, source_task=source_task, task_scopes=task_scopes, download=download, log=log
            )
        else:
            raise ImageError(f"Unrecognized image type. Image Type: {getattr(spec, 'type', spec)}")
        if hold:
            self._holds[resolved.name] = self._holds.get(resolved.name, 0) + 1
        return resolved

    @staticmethod
    async def _find_task(namespace: str, download: ArtifactDownloader) -> str:
        if not isinstance(download, IndexedArtifactDownloader):
            raise ImageError("indexed-image needs a downloader with find_task() to resolve the index namespace")
        try:
            return await download.find_task(namespace)
        except Exception as exc:
            raise ImageError(f'Could not find a task associated with "{namespace}" namespace. {exc}') from exc

    async def _shared(self, key: str, job: Callable[[], Awaitable[ResolvedImage]]) -> ResolvedImage:
        """Run ``job`` once for ``key`` however many callers ask concurrently.

        The job is shielded: a caller cancelled mid-download (its task was aborted) must not cancel the
        download other tasks are waiting for.  Only the caller that started the job gets its
        :class:`PullReport`: the others waited for a pull, they did not make one.
        """
        task = self._inflight.get(key)
        if task is not None:
            resolved = await asyncio.shield(task)
            return dataclasses.replace(resolved, pull=None)

        async def run() -> ResolvedImage:
            try:
                return await job()
            finally:
                self._inflight.pop(key, None)

        task = asyncio.ensure_future(run())
        self._inflight[key] = task
        return await asyncio.shield(task)

    def _record_use(self, resolved: ResolvedImage) -> ResolvedImage:
        self._usage[resolved.name] = _Usage(resolved.image_id, self._clock())
        return resolved

    async def _inspect_id(
        self, name: str, log: Callable[[str], None] | None = None, *, exact: bool = False
    ) -> str | None:
        """The ID of the local image ``name`` resolves to, or None.

        ``exact`` (registry images): only an image that carries ``name`` as a tag or repository digest
        counts, never one the engine found by ID prefix (see :func:`_check_registry_name`).
        """
        try:
            image = await self._engine(self._client.images.get, name)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if log is not None:
                log(f"Error checking for image presence: {exc}")
            return None
        if exact and not _carries_name(image.attrs, name):
            return None
        image_id: str = image.id
        return image_id

    # -- registry images ------------------------------------------------------------------------------------

    def _credentials_for(self, repo: str) -> RegistryCredentials | None:
        """docker-worker's lookup: exact ``host/user`` wins, else ``host``; only 2- or 3-part names."""
        parts = [p for p in repo.split("/") if p]
        if len(parts) not in (2, 3):
            return None
        if len(parts) == 2:
            parts.insert(0, self._default_registry)
        # Docker Hub answers to several names: credentials configured under one guard the image under all.
        hosts = [parts[0]]
        if parts[0] in DOCKER_HUB_NAMES:
            hosts += sorted(DOCKER_HUB_NAMES - {parts[0]})
        user = parts[1]
        for host in hosts:
            if f"{host}/{user}" in self._registries:
                return self._registries[f"{host}/{user}"]
        for host in hosts:
            for key in (host, f"{host}/"):
                if key in self._registries:
                    return self._registries[key]
        return None

    async def _ensure_registry_image(
        self, spec: DockerImage, task_scopes: list[str], log: Callable[[str], None]
    ) -> ResolvedImage:
        _check_registry_name(spec.name)
        repo, tag, digest = _split_reference(spec.name)
        credentials = self._credentials_for(repo)
        if credentials is not None:
            required = f"{_IMAGE_SCOPE_PREFIX}{repo}:{tag or 'latest'}"
            if not scope_satisfied(task_scopes, required):
                raise ImageNotAuthorizedError(spec.model_dump(by_alias=True), required)

        policy = self._pull_policy
        with self._ensuring_name(spec.name):
            image_id = await self._inspect_id(spec.name, exact=True)
        # A digest names immutable content: pulling it again can only download the same bytes.
        if image_id is not None and (policy != "always" or digest):
            return self._record_use(ResolvedImage(image_id=image_id, name=spec.name))
        if image_id is None and policy == "never":
            raise ImageNotPresentError(
                f"Image {spec.name} is not present on this worker and its dockerConfig.imagePullPolicy is "
                '"never": the worker does not pull images'
            )

        reference = f"{repo}@{digest}" if digest else f"{repo}:{tag or 'latest'}"

        async def job() -> ResolvedImage:
            if policy == "always":
                return await self._pull_always(reference, credentials, log)
            # Look again inside the shared job: a concurrent ensure may have pulled it since our look.
            present_id = await self._inspect_id(spec.name, exact=True)
            if present_id is not None:
                return ResolvedImage(image_id=present_id, name=spec.name)
            report = await self._pull_with_retries(reference, credentials, log, attempts=self._pull_attempts)
            return await self._pulled(reference, report, log)

        with self._ensuring_name(reference):
            return self._record_use(await self._shared(f"registry:{reference}", job))

    async def _pull_always(
        self, reference: str, credentials: RegistryCredentials | None, log: Callable[[str], None]
    ) -> ResolvedImage:
        """``imagePullPolicy: always``: pull; when the registry cannot be reached, run the present image.

        With an image present a single attempt is made (a task should not wait minutes of backoff for an
        update it can do without); without one, the usual retries.  A rejection (unknown image, denied
        credentials) is never covered by the present image: the registry's answer is what ``always``
        asks for, and a revoked credential must not keep working from the cache.
        """
        cached_id = await self._inspect_id(reference, exact=True)
        attempts = 1 if cached_id is not None else self._pull_attempts
        started = time.monotonic()
        try:
            report = await self._pull_with_retries(reference, credentials, log, attempts=attempts)
        except ImagePullUnavailable as exc:
            if cached_id is None:
                raise
            log(
                f"Registry unreachable, using the cached image {reference} ({cached_id}) although "
                f'dockerConfig.imagePullPolicy is "always": {exc}'
            )
            fallback = PullReport(reference, time.monotonic() - started, 0, attempts, fallback=True)
            return ResolvedImage(image_id=cached_id, name=reference, pull=fallback)
        return await self._pulled(reference, report, log)

    async def _pulled(self, reference: str, report: PullReport, log: Callable[[str], None]) -> ResolvedImage:
        pulled_id = await self._inspect_id(reference, log)
        if pulled_id is None:
            raise ImageError(f"image missing after pulling: {reference}")
        size = "size not reported by the engine"
        if report.bytes_downloaded is not None:
            size = f"{report.bytes_downloaded / 1024 / 1024:.3f} mb downloaded"
        log(f"Pulled docker image {reference} in {report.seconds:.3f} seconds ({size}).  Using image ID {pulled_id}.")
        return ResolvedImage(image_id=pulled_id, name=reference, pull=report)

    async def _pull_with_retries(
        self, reference: str, credentials: RegistryCredentials | None, log: Callable[[str], None], *, attempts: int
    ) -> PullReport:
        """Pull ``reference``, retrying transient failures only; raises the classified :class:`ImageError`."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def thread_log(line: str) -> None:
            loop.call_soon_threadsafe(log, line)

        for attempt in range(1, attempts + 1):
            log(f"Pulling docker image {reference}")
            try:
                downloaded = await self._engine(self._pull_once, reference, credentials, thread_log)
                return PullReport(reference, time.monotonic() - started, downloaded, attempt)
            except (docker.errors.DockerException, ImageError, OSError) as exc:  # OSError: requests' errors too
                error = _error_text(exc)
                if classify_pull_error(exc) == "rejected":
                    raise ImagePullRejected(f"Could not pull docker image {reference}: {error}") from exc
                if attempt >= attempts:
                    raise ImagePullUnavailable(
                        f"Could not pull docker image {reference} after {attempt} attempt(s): {error}"
                    ) from exc
                jitter = 1 + self._pull_jitter * (2 * random.random() - 1)
                delay = self._pull_base_delay * 2 ** (attempt - 1) * jitter
                log(
                    f"Error pulling docker image {reference} (attempt {attempt}/{attempts}): "
                    f"{error}. Next attempt in {delay:.2f} s."
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _pull_once(
        self, reference: str, credentials: RegistryCredentials | None, log: Callable[[str], None]
    ) -> int | None:
        """One pull through the engine, in a pool thread; returns the compressed bytes downloaded (or None).

        dockerd reports each layer's size in its ``Downloading`` events (``progressDetail.total``); a layer
        that ``Already exists`` is not fetched and counts 0.  podman sends no sizes: None when it fetched
        anything.
        """
        repo, tag, digest = _split_reference(reference)
        auth = None
        if credentials is not None:
            auth = {"username": credentials.get("username", ""), "password": credentials.get("password", "")}
        stream = self._client.api.pull(repo, tag=digest or tag, stream=True, decode=True, auth_config=auth)
        last_status: dict[str, str] = {}
        layer_sizes: dict[str, int] = {}
        # Blobs the engine fetched: dockerd reports a size for each (even 100-byte layers), podman none,
        # and a fetched blob without a size makes the total unknown rather than too small.
        fetched: set[str] = set()
        for event in stream:
            if "error" in event:
                raise ImageError(str(event.get("errorDetail", {}).get("message") or event["error"]))
            status = event.get("status")
            if not status:
                continue
            layer = event.get("id", "")
            detail = event.get("progressDetail") or {}
            total = detail.get("total") if isinstance(detail, dict) else None
            if status == "Downloading" and isinstance(total, int) and total > 0:
                layer_sizes[layer] = total
            elif status in ("Download complete", "Pull complete"):
                fetched.add(layer)
            # Progress ticks ("Downloading [==>  ]") would flood the log: report each state change once.
            if last_status.get(layer) == status:
                continue
            last_status[layer] = status
            log(f"{layer}: {status}" if layer else status)
        return None if fetched - set(layer_sizes) else sum(layer_sizes.values())

    # -- artifact images ------------------------------------------------------------------------------------

    async def _ensure_artifact_image(
        self,
        spec: IndexedImage | TaskImage,
        *,
        source_task: str,
        task_scopes: list[str],
        download: ArtifactDownloader,
        log: Callable[[str], None],
    ) -> ResolvedImage:
        path = spec.path
        self._check_artifact_scope(spec, task_scopes)

        name = hashlib.md5(f"{source_task}{path}".encode()).hexdigest()
        reference = f"{name}:latest"

        with self._ensuring_name(reference):
            image_id = await self._inspect_id(reference, log)
            if image_id is None:

                async def job() -> ResolvedImage:
                    # Look again inside the shared job: a concurrent ensure may have loaded it meanwhile
                    # (its job ended between our look and this call), and one load per image is the rule.
                    loaded_id = await self._inspect_id(reference, log)
                    if loaded_id is not None:
                        return ResolvedImage(loaded_id, reference, self._artifact_hashes.get(name))
                    self._artifact_hashes.pop(name, None)
                    return await self._download_and_load(source_task, path, name, download, log)

                resolved = await self._shared(f"artifact:{name}", job)
            else:
                resolved = ResolvedImage(image_id, reference, self._artifact_hashes.get(name))
        log(f"Image '{path}' from task '{source_task}' loaded.  Using image ID {resolved.image_id}.")
        return self._record_use(resolved)

    @staticmethod
    def _check_artifact_scope(spec: IndexedImage | TaskImage, task_scopes: list[str]) -> None:
        """docker-worker's ``isAuthorized`` of artifact images: non-public paths need the get-artifact scope."""
        if not re.match(r"^/?public/", spec.path):
            required = f"queue:get-artifact:{spec.path}"
            if not scope_satisfied(task_scopes, required):
                raise ImageNotAuthorizedError(spec.model_dump(by_alias=True), required)

    async def _download_and_load(
        self,
        source_task: str,
        path: str,
        name: str,
        download: ArtifactDownloader,
        log: Callable[[str], None],
    ) -> ResolvedImage:
        try:
            filename = PurePosixPath(path).name
            suffix = PurePosixPath(filename).suffix
            if suffix not in (".tar", ".zst", ".lz4"):
                raise ImageError(UNSUPPORTED_FORMAT_MESSAGE)
            tmp_dir = self._work_dir / "tmp-docker-images" / uuid.uuid4().hex
            await asyncio.to_thread(tmp_dir.mkdir, parents=True)
            try:
                downloaded = tmp_dir / filename
                log(f'Downloading artifact "{path}" from task ID: {source_task}.')
                await download(source_task, path, downloaded)
                size = (await asyncio.to_thread(downloaded.stat)).st_size
                log("Downloaded artifact successfully.")
                log(f"Downloaded {size / 1024 / 1024:.3f} mb over the wire")
                artifact_hash = await asyncio.to_thread(_sha256_file, downloaded)

                tarball = downloaded
                if suffix != ".tar":
                    log("Decompressing downloaded image")
                    tarball = tmp_dir / "image.tar"
                    await asyncio.to_thread(_decompress, downloaded, tarball, suffix)
                    await asyncio.to_thread(downloaded.unlink)

                log("Loading docker image from downloaded archive.")
                edited = tmp_dir / "image-edited.tar"
                legacy = await asyncio.to_thread(_retag_archive, tarball, edited, name)
                await asyncio.to_thread(tarball.unlink)
                if legacy and await self._engine_is_podman():
                    raise ImageError(PODMAN_LEGACY_ARCHIVE_MESSAGE)
                await self._engine(_load_archive, self._client, edited)
            finally:
                await asyncio.to_thread(shutil.rmtree, tmp_dir, True)

            image_id = await self._inspect_id(f"{name}:latest", log)
            if image_id is None:
                raise ImageError("Image did not load properly.")
        except Exception as exc:
            # Downloader, decompressor (zstandard.ZstdError, lz4's RuntimeError), tar and engine errors share
            # no base class; docker-worker reported them all the same way.
            raise ImageError(f"Error loading docker image. {str(exc) or type(exc).__name__}") from exc
        self._artifact_hashes[name] = artifact_hash
        return ResolvedImage(image_id=image_id, name=f"{name}:latest", artifact_hash=artifact_hash)

    # -- garbage collection ---------------------------------------------------------------------------------

    async def gc(
        self,
        *,
        max_idle: float = 2 * 60 * 60,
        min_free_bytes: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> list[str]:
        """Remove images this manager handed out that no container uses, returning the names removed.

        An image goes when it has been unused for ``max_idle`` seconds (docker-worker: 2 h), or, while
        free disk space (``disk_free()``) is below ``min_free_bytes``, regardless of age, least recently
        used first, until enough space is free.  Images being ensured right now, and images held by a
        running task (``ensure_image(..., hold=True)``), are kept.
        """
        containers: list[dict[str, Any]] = await self._engine(self._client.api.containers, all=True)
        in_use = {c.get("ImageID") for c in containers} | {c.get("Image") for c in containers}
        busy = {key.split(":", 1)[1] for key in self._inflight} | set(self._ensuring) | set(self._holds)
        now = self._clock()
        removed: list[str] = []

        async def under_pressure() -> bool:
            return min_free_bytes is not None and await asyncio.to_thread(self._disk_free) < min_free_bytes

        for name, usage in sorted(self._usage.items(), key=lambda item: item[1].last_used):
            if name in busy or name.split(":", 1)[0] in busy:
                continue
            if usage.image_id in in_use or name in in_use:
                continue
            if now - usage.last_used < max_idle and not await under_pressure():
                continue
            try:
                await self._engine(self._client.images.remove, name)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                if log is not None:
                    log(f"image removal error: {name}: {exc}")
                continue
            del self._usage[name]
            with contextlib.suppress(KeyError):
                del self._artifact_hashes[name.split(":", 1)[0]]
            removed.append(name)
        return removed
