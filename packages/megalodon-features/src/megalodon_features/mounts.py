"""generic-worker's mounts and caches for native tasks: ``file``, ``readOnlyDirectory``, ``writableDirectoryCache``.

Behaviour, log lines and error texts follow generic-worker's ``mounts_feature.go`` (NOTES.md section 3,
"Mounts details", and section 2, "Content"), because tasks moving from generic-worker keep their payloads and
the people reading their logs keep grepping for the same ``[mounts] ...`` lines:

- Content comes from a URL, an artifact of a task listed in ``task.dependencies`` (downloaded through the
  queue with the run's own task credentials, so the queue enforces ``queue:get-artifact:<name>``), an artifact
  of the task an index namespace points to, or inline ``raw``/``base64`` text.  Every content goes through
  the worker's download cache (:mod:`megalodon_features.cache_store`), keyed as generic-worker keys it, and
  its SHA-256 is checked against the payload's ``sha256`` on download and on every reuse.
- A writable cache (scope ``generic-worker:cache:<name>``) is renamed into the task directory when the task
  starts and back when it stops, so its content survives tasks and worker restarts; it is purged instead
  when the last command's exit code is listed in ``onExitStatus.purgeCaches`` or the task was aborted.
- Archives and compressed files are unpacked by :mod:`megalodon_features.archives`, which refuses anything
  that would write outside the target or expand past ``mountsMaxExtractedBytes``.

Payload problems (an artifact from a task not in ``dependencies``, a format this worker cannot read, bad
base64) resolve the task ``exception/malformed-payload``; everything that goes wrong while mounting (a
download that fails, a SHA-256 mismatch, a hostile archive) fails the task with a ``[mounts] <error>`` line.

Deliberate differences from generic-worker, each for a reason given where it is implemented:
- ``base64`` content is decoded before it is written (generic-worker writes the base64 text itself, which
  contradicts its own schema: "Base64 encoded content");
- MinLZ (``mz``, ``tar.mz``), which nothing outside Go reads, is refused as malformed-payload before
  anything is downloaded (every other format of the schema is read);
- inline content (raw, base64) is not warned about as unverifiable: it comes from the task definition itself;
- the same ``cacheName`` twice in one task is malformed-payload (generic-worker crashes on it);
- writable caches of an aborted task are purged (their content may be half-written);
- caches are returned newest-first, so a cache mounted inside another one survives (generic-worker moves
  the outer one first, taking the inner one with it, and then fails the task);
- a cached download whose bytes no longer match the SHA-256 recorded when it was downloaded is deleted and
  fetched again even when the task gives no ``sha256`` (generic-worker only warns);
- inline content is shown on one line in log messages (newlines escaped, cut after 64 characters);
- pools keep at most ``capacity`` idle directories per name.  The purge-cache service is not polled for
  these caches: generic-worker does not poll it either (docker-worker does, see ``megalodon_docker.caches``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import threading
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from megalodon_core.artifact_download import FileWriter, download_artifact_to_file
from megalodon_core.contracts import Feature, FeatureInitError, TaskFeature
from megalodon_core.errors import ExecutionErrors, Failure, InternalError, MalformedPayload

from .archives import (
    CHUNK,
    DEFAULT_MAX_EXTRACTED_BYTES,
    ArchiveError,
    ExtractionCancelled,
    copy_file,
    decompress_file,
    extract_archive,
    sha256_file,
    unsupported_format_reason,
)
from .cache_store import PARTIAL_SUFFIX, CacheEntry, CacheStore, Lease, move, remove_path

if TYPE_CHECKING:
    from megalodon_core.task import TaskRun
    from megalodon_core.worker_context import WorkerContext

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Attempts for one URL download (the first try included) and the backoff between them, in seconds.
DOWNLOAD_ATTEMPTS = 6
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
#: HTTP statuses worth retrying besides every 5xx.
RETRY_STATUSES = frozenset({408, 429})
#: A stalled connection is abandoned (and retried) after this long without a byte.
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=120)
#: Inline content longer than this is abbreviated in log lines.
DESCRIPTION_LIMIT = 64


class MountError(Exception):
    """Mounting failed because of the task (bad URL, mismatching SHA-256, hostile archive): the task fails."""


class FetchError(MountError):
    """Content could not be obtained."""


# -- writing downloads -------------------------------------------------------------------------------------
#: One implementation in core: the writer also serves URL downloads.
_FileWriter = FileWriter


# -- content -----------------------------------------------------------------------------------------------
def _abbreviate(text: str) -> str:
    """Inline content as one short log-friendly line (newlines escaped, long text cut)."""
    shown = text if len(text) <= DESCRIPTION_LIMIT else text[:DESCRIPTION_LIMIT] + "..."
    return json.dumps(shown, ensure_ascii=False)[1:-1]


class Content(ABC):
    """Where a mount's bytes come from; ``key`` names them in the download cache."""

    #: Inline content is part of the task definition: there is nothing to authenticate.
    inline: ClassVar[bool] = False

    @abstractmethod
    def describe(self) -> str:
        """generic-worker's ``String()``: how log lines name the content."""

    def required_sha256(self) -> str | None:
        return None

    def depends_on(self) -> str | None:
        """The task id whose artifact this is, which must be in ``task.dependencies``."""
        return None

    @abstractmethod
    async def key(self, tm: TaskMounts) -> str: ...

    @abstractmethod
    async def fetch(self, tm: TaskMounts, dest: Path, shown: Path) -> tuple[int, str]:
        """Write the content to ``dest`` (logged as ``shown``); return (size, sha256)."""


class URLContent(Content):
    def __init__(self, url: str, sha256: str | None) -> None:
        self.url = url
        self.sha256 = sha256

    def describe(self) -> str:
        return f"url {self.url}"

    def required_sha256(self) -> str | None:
        return self.sha256

    async def key(self, tm: TaskMounts) -> str:
        return f"urlcontent:{self.url}"

    async def fetch(self, tm: TaskMounts, dest: Path, shown: Path) -> tuple[int, str]:
        scheme = urllib.parse.urlsplit(self.url).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"cannot download {self.url}: only http and https URLs are supported")
        last: BaseException | None = None
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            tm.info(f"Downloading {self.describe()} to {shown}")
            writer = await _FileWriter.open(dest, tm.thread)
            try:
                async with tm.run.worker.session.get(self.url, timeout=DOWNLOAD_TIMEOUT) as resp:
                    if resp.status >= 400:
                        text = f"HTTP {resp.status} {resp.reason or ''} from {self.url}".replace("  ", " ")
                        if resp.status >= 500 or resp.status in RETRY_STATUSES:
                            raise _Transient(text)
                        raise FetchError(f"could not download {self.url}: {text}")
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await writer.write(chunk)
                size, digest = await writer.finish()
            except (_Transient, aiohttp.ClientError, TimeoutError) as exc:
                await writer.abandon()
                last = exc
                tm.warn(f"Download of {self.describe()} failed on this attempt: {str(exc) or type(exc).__name__}")
                if attempt < DOWNLOAD_ATTEMPTS:
                    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            except BaseException:
                await writer.abandon()
                raise
            tm.info(f"Downloaded {size} bytes with SHA256 {digest} from {self.describe()} to {shown}")
            return size, digest
        raise FetchError(f"could not download {self.url} after {DOWNLOAD_ATTEMPTS} attempts: {last}")


class _Transient(Exception):
    """A download attempt failed in a way worth retrying (5xx, 408, 429)."""


class ArtifactContent(Content):
    def __init__(self, task_id: str, artifact: str, sha256: str | None) -> None:
        self.task_id = task_id
        self.artifact = artifact
        self.sha256 = sha256

    def describe(self) -> str:
        return f"task {self.task_id} artifact {self.artifact}"

    def required_sha256(self) -> str | None:
        return self.sha256

    def depends_on(self) -> str | None:
        return self.task_id

    async def key(self, tm: TaskMounts) -> str:
        return f"artifact:{self.task_id}:{self.artifact}"

    async def fetch(self, tm: TaskMounts, dest: Path, shown: Path) -> tuple[int, str]:
        tm.info(f"Downloading {self.describe()} to {shown}")
        try:
            # The run's own (current) task credentials: the queue decides whether this task may read it.
            size, digest = await download_artifact_to_file(
                tm.run.queue(), self.task_id, self.artifact, dest, runner=tm.thread
            )
        except (TaskclusterFailure, aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"could not download {self.describe()}: {str(exc) or type(exc).__name__}") from None
        tm.info(f"Downloaded {size} bytes with SHA256 {digest} from {self.describe()} to {shown}")
        return size, digest


class IndexedContent(Content):
    def __init__(self, namespace: str, artifact: str) -> None:
        self.namespace = namespace
        self.artifact = artifact
        self._resolved: ArtifactContent | None = None

    def describe(self) -> str:
        return f"namespace {self.namespace} artifact {self.artifact}"

    async def resolve(self, tm: TaskMounts) -> ArtifactContent:
        """The artifact the namespace points to now (looked up once per task, so key and fetch agree)."""
        if self._resolved is None:
            index = tm.run.worker.index(tm.run.credentials)
            try:
                found = await index.findTask(self.namespace)
            except (TaskclusterFailure, aiohttp.ClientError, TimeoutError) as exc:
                raise FetchError(f"could not find a task in index namespace {self.namespace}: {exc}") from None
            self._resolved = ArtifactContent(str(found["taskId"]), self.artifact, None)
        return self._resolved

    async def key(self, tm: TaskMounts) -> str:
        return await (await self.resolve(tm)).key(tm)

    async def fetch(self, tm: TaskMounts, dest: Path, shown: Path) -> tuple[int, str]:
        return await (await self.resolve(tm)).fetch(tm, dest, shown)


class _InlineContent(Content):
    inline = True

    def __init__(self, text: str, data: bytes) -> None:
        self.text = text
        self.data = data

    async def fetch(self, tm: TaskMounts, dest: Path, shown: Path) -> tuple[int, str]:
        tm.info(f"Copying {self.describe()} to {shown}")
        await tm.thread(dest.write_bytes, self.data)
        tm.info(f"Copied {len(self.data)} bytes from {self.describe()} to {shown}")
        return len(self.data), hashlib.sha256(self.data).hexdigest()


class RawContent(_InlineContent):
    def __init__(self, raw: str) -> None:
        super().__init__(raw, raw.encode())

    def describe(self) -> str:
        return f"Raw ({_abbreviate(self.text)})"

    async def key(self, tm: TaskMounts) -> str:
        return f"Raw content: {self.text}"


class Base64Content(_InlineContent):
    """Base64 content, *decoded*.

    generic-worker (at the reference snapshot) writes the base64 text itself into the file, although its
    schema calls the field "Base64 encoded content"; megalodon decodes it, which is what task authors write
    base64 for (binary content in a JSON payload).  Text that is not valid base64 is malformed-payload.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text, base64.b64decode(text, validate=True))

    def describe(self) -> str:
        return f"Base64 ({_abbreviate(self.text)})"

    async def key(self, tm: TaskMounts) -> str:
        return f"Base64 content: {self.text}"


def content_from(model: Any) -> Content:
    """The content object for a validated payload content model (same precedence as ``FSContentFrom``)."""
    if hasattr(model, "task_id"):
        return ArtifactContent(model.task_id, model.artifact, model.sha256)
    if hasattr(model, "namespace"):
        return IndexedContent(model.namespace, model.artifact)
    if hasattr(model, "url"):
        return URLContent(model.url, model.sha256)
    if hasattr(model, "raw"):
        return RawContent(model.raw)
    if hasattr(model, "base64"):
        return Base64Content(model.base64)
    raise TypeError(f"unrecognised mount content {model!r}")


# -- mounts ------------------------------------------------------------------------------------------------
@dataclass
class _Mount:
    """One payload mount, classified: ``kind`` is ``file``, ``directory`` or ``cache``."""

    index: int
    kind: str
    path: str
    content: Content | None
    format: str
    cache_name: str = ""


@dataclass
class _MountedCache:
    mount: _Mount
    entry: CacheEntry
    target: Path
    #: What ``target`` was once mounted (:func:`directory_identity`); None: the mount was interrupted.
    identity: tuple[str, int, int] | None = None


def directory_identity(path: Path) -> tuple[str, int, int]:
    """``path`` with symlinks resolved, and the device and inode of the directory there (blocking)."""
    real = os.path.realpath(path)
    info = os.lstat(real)
    return real, info.st_dev, info.st_ino


def still_mounted(mounted: _MountedCache) -> bool:
    """Whether ``mounted.target`` still leads to the directory mounted there (blocking).

    The cache goes back to the store by its path, moved by the worker (root, under the multiuser engine):
    a task that replaced the directory or a parent of it by a symlink would otherwise have the worker move
    whatever the link leads to (another user's directory) into the store, for the next task of the cache.
    """
    if mounted.identity is None:
        return False
    try:
        return directory_identity(mounted.target) == mounted.identity and not os.path.islink(mounted.target)
    except OSError:
        return False


def _classify(index: int, model: Any) -> _Mount:
    content = None if getattr(model, "content", None) is None else content_from(model.content)
    fmt = getattr(model, "format", None) or ""
    if hasattr(model, "cache_name"):
        return _Mount(index, "cache", model.directory, content, fmt, model.cache_name)
    if hasattr(model, "directory"):
        return _Mount(index, "directory", model.directory, content, fmt)
    return _Mount(index, "file", model.file, content, fmt)


def chown_to(target: Path, task_dir: Path, uid: int, gid: int) -> None:
    """``chown -R`` without following symlinks (a cache may hold links to root's files), plus the parents
    between ``target`` and ``task_dir`` that mounting created as root."""
    os.lchown(target, uid, gid)
    if target.is_dir() and not target.is_symlink():
        for root, dirs, files in os.walk(target, followlinks=False):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)
    parent = target.parent
    while parent != task_dir and task_dir in parent.parents:
        os.lchown(parent, uid, gid)
        parent = parent.parent


def _permits(info: os.stat_result, uid: int, gids: frozenset[int], bits: int) -> bool:
    """Whether the mode bits of ``info`` give ``bits`` (``2`` write, ``1`` search) to that uid and groups."""
    if info.st_uid == uid:
        bits <<= 6
    elif info.st_gid in gids:
        bits <<= 3
    return info.st_mode & bits == bits


def task_user_refusal(path: Path, uid: int, gids: frozenset[int]) -> str | None:
    """Why the task user could not make ``path`` itself, or None (blocking: call it in a thread).

    Under the multiuser engine the worker mounts as root and then gives the mount to the task user, and a
    mount path may be absolute: without this check a task could have root overwrite and hand it any file
    or directory of the host (``/etc/passwd``, ``/usr/local/bin``, its own task log directory).
    generic-worker creates mounts as the task user; megalodon checks the same rights first: symlinks
    resolved, an existing target must be the task user's, and otherwise the task user must be able to
    create entries in its nearest existing ancestor and reach it.
    """
    real = Path(os.path.realpath(path))
    try:
        info = os.stat(real)
    except FileNotFoundError:
        pass
    else:
        if info.st_uid != uid:
            return f"{path} already exists and does not belong to the task user"
        existing = real.parent
        return None if _reachable(existing, uid, gids) else f"the task user cannot reach {path}"
    existing = real.parent
    while True:
        try:
            info = os.stat(existing)
            break
        except FileNotFoundError:
            existing = existing.parent
    if not _permits(info, uid, gids, 3):
        return f"the task user may not create {path} (it may not write in {existing})"
    return None if _reachable(existing, uid, gids) else f"the task user cannot reach {existing}"


def _reachable(directory: Path, uid: int, gids: frozenset[int]) -> bool:
    """Whether the task user may search ``directory`` and every directory above it."""
    return all(_permits(os.stat(d), uid, gids, 1) for d in (directory, *directory.parents))


def task_user_groups(name: str, gid: int) -> frozenset[int]:
    """The task user's groups (blocking: NSS)."""
    return frozenset(os.getgrouplist(name, gid))


class TaskMounts(TaskFeature):
    """The mounts of one task run: checks, mounts in payload order, and returns caches at the end."""

    def __init__(self, feature: MountsFeature, run: TaskRun) -> None:
        self.feature = feature
        self.run = run
        self.cancel = threading.Event()
        self.mounted: list[_MountedCache] = []
        self.mounts: list[_Mount] = []
        self.payload_error: str | None = None
        request = run.data.request(MountsFeature.name)
        #: The executor's ``mounts`` request: ``{"mounts": [mount models], "purge_caches": [exit codes]}``.
        options = dict(request.options or {}) if request is not None else {}
        self.purge_exit_codes: list[int] = list(options.get("purge_caches", []))
        for index, model in enumerate(options.get("mounts", [])):
            try:
                self.mounts.append(_classify(index, model))
            except (binascii.Error, ValueError) as exc:
                # Only base64 decoding fails here; reported when the feature starts, after the scope check.
                self.payload_error = f"[mounts] mounts[{index}].content.base64 is not valid base64: {exc}"
                break

    # -- logging -------------------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.run.log.info(f"[mounts] {message}")

    def warn(self, message: str) -> None:
        self.run.log.warn(f"[mounts] {message}")

    def error(self, message: str) -> None:
        self.run.log.error(f"[mounts] {message}")

    # -- helpers -------------------------------------------------------------------------------------------
    async def thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work in a thread; if the task is cancelled meanwhile, wait for the thread to stop.

        Threads cannot be killed, so a cancelled mount sets :attr:`cancel` (which extraction loops check)
        and waits: nothing may still be writing into a directory that ``stop`` is about to move or delete.
        """
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.cancel.set()
            with contextlib.suppress(BaseException):
                await future
            raise

    def resolve(self, path: str) -> Path:
        """generic-worker's ``AbsFrom``: absolute paths stay, relative ones are below the task directory.

        Cleaned as Go's ``filepath.Join`` cleans (``a/../b`` is ``b``), for absolute paths too: the parents
        a path names are chowned to the task user (:func:`chown_to`), and ``generic-worker/../x`` must not
        name the task log's directory (root's) as one of them.
        """
        candidate = Path(path)
        return Path(os.path.normpath(candidate if candidate.is_absolute() else self.run.task_dir / candidate))

    @property
    def limit(self) -> int:
        return int(self.run.worker.config.extra("mountsMaxExtractedBytes", DEFAULT_MAX_EXTRACTED_BYTES))

    # -- TaskFeature ---------------------------------------------------------------------------------------
    def required_scopes(self) -> list[list[str]]:
        scopes = [f"generic-worker:cache:{m.cache_name}" for m in self.mounts if m.kind == "cache"]
        return [scopes] if scopes else []

    def check_payload(self) -> None:
        """Payload problems generic-worker reports as malformed-payload, found before anything is fetched."""
        if self.payload_error is not None:
            raise MalformedPayload(self.payload_error)
        dependencies = set(self.run.task.get("dependencies", []))
        for m in self.mounts:
            task_id = m.content.depends_on() if m.content is not None else None
            if task_id is not None and task_id not in dependencies:
                raise MalformedPayload(
                    f"[mounts] task.dependencies needs to include {task_id} since one or more of its artifacts "
                    "are mounted"
                )
        seen: set[str] = set()
        for m in self.mounts:
            if m.kind == "cache":
                if m.cache_name in seen:
                    raise MalformedPayload(
                        f'[mounts] mounts[{m.index}]: writable directory cache "{m.cache_name}" is mounted more '
                        "than once by this task"
                    )
                seen.add(m.cache_name)
            if m.format:
                reason = unsupported_format_reason(m.format, archive=m.kind != "file")
                if reason is not None:
                    raise MalformedPayload(f"[mounts] mounts[{m.index}].format: {reason}")

    async def start(self) -> None:
        self.check_payload()
        with self.run.data.phases.phase("mounts"):
            await self._start()

    async def _start(self) -> None:
        mounting = asyncio.create_task(self._mount_all())
        aborted = asyncio.create_task(self.run.aborted.wait())
        try:
            done, _ = await asyncio.wait({mounting, aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
            if not mounting.done():
                self.cancel.set()
                mounting.cancel()
                with contextlib.suppress(BaseException):
                    await mounting
        if mounting in done:
            mounting.result()

    async def _give_to_task_user(self, m: _Mount) -> None:
        """Multiuser engine: the mount is the task user's (generic-worker chowns -R), including new parents."""
        user = self.run.data.task_user
        if user is None:
            return
        await self.thread(chown_to, self.resolve(m.path), self.run.task_dir, user.uid, user.gid)

    async def _check_task_user_may(self, m: _Mount) -> None:
        """Multiuser engine: refuse a mount the task user could not make itself (:func:`task_user_refusal`)."""
        user = self.run.data.task_user
        if user is None or user.uid == 0:
            return
        gids = await self.thread(task_user_groups, user.name, user.gid)
        refusal = await self.thread(task_user_refusal, self.resolve(m.path), user.uid, gids)
        if refusal is not None:
            raise MountError(f"not able to mount mounts[{m.index}] at {self.resolve(m.path)}: {refusal}")

    async def _mount_all(self) -> None:
        for m in self.mounts:
            try:
                await self._check_task_user_may(m)
                if m.kind == "cache":
                    await self._mount_cache(m)
                elif m.kind == "directory":
                    await self._mount_directory(m)
                else:
                    await self._mount_file(m)
                await self._give_to_task_user(m)
            except (MountError, ArchiveError) as exc:
                raise Failure(f"[mounts] {exc}") from None
            except OSError as exc:
                # Usually the task's doing (a path below a file, an unwritable absolute path).
                raise Failure(
                    f"[mounts] not able to mount mounts[{m.index}] at {self.resolve(m.path)}: {exc}"
                ) from None

    async def _mkdir(self, directory: Path, *, cache: bool = False) -> None:
        """generic-worker's ``MkdirAll``: its log line, and Go's ``mkdir <path>: <reason>`` error text."""
        self.info(f"Creating directory {directory}")
        try:
            await self.thread(directory.mkdir, parents=True, exist_ok=True)
        except FileExistsError:
            error = f"mkdir {directory}: not a directory"
            raise MountError(f"not able to create directory {directory}: {error}" if cache else error) from None
        except OSError as exc:
            error = f"mkdir {exc.filename or directory}: {(exc.strerror or str(exc)).lower()}"
            raise MountError(f"not able to create directory {directory}: {error}" if cache else error) from None

    async def _mount_file(self, m: _Mount) -> None:
        assert m.content is not None
        file = self.resolve(m.path)
        if await self.thread(file.is_dir):
            raise MountError(f"cannot mount file at path {file} since it already exists as a directory")
        lease = await self.ensure_cached(m.content)
        try:
            await self._mkdir(file.parent)
            if m.format:
                self.info(f"Decompressing {m.format} file {lease.path} to '{file}'")
                await self.thread(decompress_file, lease.path, file, m.format, limit=self.limit, cancel=self.cancel)
            else:
                self.info(f"Copying {lease.path} to {file}")
                await self.thread(copy_file, lease.path, file)
        finally:
            await lease.release()

    async def _extract(self, content: Content, fmt: str, directory: Path) -> None:
        lease = await self.ensure_cached(content)
        try:
            await self._mkdir(directory)
            self.info(f"Extracting {fmt} file {lease.path} to '{directory}'")
            try:
                await self.thread(extract_archive, lease.path, directory, fmt, limit=self.limit, cancel=self.cancel)
            except ExtractionCancelled:
                raise
            except ArchiveError as exc:
                # generic-worker's wording (mounts_insecure.go / mounts_multiuser.go), which users grep for.
                raise MountError(f"cannot unarchive {lease.path} to {directory} as task user: {exc}") from None
        finally:
            await lease.release()

    async def _mount_directory(self, m: _Mount) -> None:
        assert m.content is not None
        await self._extract(m.content, m.format, self.resolve(m.path))

    async def _mount_cache(self, m: _Mount) -> None:
        store = self.feature.store
        target = self.resolve(m.path)
        entry = store.acquire_directory(m.cache_name)
        self.run.data.phases.cache(hit=entry is not None)
        if entry is not None:
            source = Path(entry.location)
            self.info(f"Moving existing writable directory cache {m.cache_name} from {source} to {target}")
            try:
                await self._mkdir(target.parent, cache=True)
                await self.thread(move, source, target)
            except asyncio.CancelledError:
                if await asyncio.to_thread(source.exists):
                    entry.in_use = False
                else:
                    self.mounted.append(_MountedCache(m, entry, target))
                raise
            except MountError:
                entry.in_use = False  # the parent could not be created: the cache goes back to the pool
                raise
            except OSError as exc:
                entry.in_use = False
                raise MountError(
                    f"not able to move writable directory cache {m.cache_name} from {source} to {target}: {exc}"
                ) from None
        else:
            entry = store.new_directory(m.cache_name)
            self.info(f"No existing writable directory cache '{m.cache_name}' - creating {entry.location}")
            try:
                if m.content is not None:
                    await self._extract(m.content, m.format, target)
                else:
                    await self._mkdir(target, cache=True)
            except BaseException:
                store.forget_directory(entry)
                raise
        self.mounted.append(_MountedCache(m, entry, target, await self.thread(directory_identity, target)))
        self.info(f"Successfully mounted writable directory cache '{target}'")

    # -- download cache ------------------------------------------------------------------------------------
    async def ensure_cached(self, content: Content) -> Lease:
        """A lease on a verified download-cache file holding ``content`` (generic-worker's ``ensureCached``)."""
        store = self.feature.store
        key = await content.key(self)
        required = content.required_sha256()
        async with store.key_lock(key):
            entry = store.files.get(key)
            if entry is not None:
                lease = await self._reuse(entry, key, required, content.inline)
                if lease is not None:
                    return lease
            location = store.new_download_path()
            partial = location.with_name(location.name + PARTIAL_SUFFIX)
            try:
                _, digest = await content.fetch(self, partial, location)
                await self.thread(os.replace, partial, location)
            except FetchError as exc:
                self.error(f"Could not fetch from {content.describe()} into file {location} due to {exc}")
                await asyncio.to_thread(remove_path, partial)
                raise
            except BaseException:
                await asyncio.to_thread(remove_path, partial)
                raise
            entry = store.add_file(key, location, digest)
            await self._save_state()
            if required is None:
                if not content.inline:
                    self.warn(
                        f"Download {location} of {content.describe()} has SHA256 {digest} but task payload does "
                        "not declare a required value, so content authenticity cannot be verified"
                    )
            elif required != digest:
                await self._evict_file(entry)
                raise MountError(
                    f"Download {location} of {content.describe()} has SHA256 {digest} but task definition "
                    f"explicitly requires {required}; not retrying download as there were no connection failures "
                    "and HTTP response status code was 200"
                )
            else:
                self.info(f"Content from {content.describe()} ({location}) matches required SHA256 {digest}")
            return store.lease(entry)

    async def _reuse(self, entry: CacheEntry, key: str, required: str | None, inline: bool) -> Lease | None:
        """A lease on a cached file whose SHA-256 still checks out; None after evicting one that does not."""
        store = self.feature.store
        path = Path(entry.location)
        lease = store.lease(entry)
        try:
            digest = await self.thread(sha256_file, path, self.cancel)
        except FileNotFoundError:
            await lease.release()
            self.warn(f"Cached download {key} ({path}) has disappeared from disk; downloading it again")
            await self._evict_file(entry)
            return None
        except BaseException:
            await lease.release()
            raise
        entry.hits += 1
        if entry.sha256 and digest != entry.sha256:
            await lease.release()
            self.warn(
                f"Cached download {key} ({path}) has SHA256 {digest} but was stored with SHA256 {entry.sha256}; "
                "deleting it"
            )
            await self._evict_file(entry)
            return None
        if required is None:
            if not inline:
                self.warn(
                    f"No SHA256 specified in task mounts for {key} - SHA256 from downloaded file {path} is {digest}."
                )
            return lease
        if required == digest:
            self.info(f"Found existing download for {key} ({path}) with correct SHA256 {digest}")
            return lease
        await lease.release()
        self.info(
            f"Found existing download of {key} ({path}) with SHA256 {digest} but task definition explicitly "
            f"requires {required} so deleting it"
        )
        await self._evict_file(entry)
        return None

    async def _save_state(self) -> None:
        """Record a new download at once, so a worker crash before the task ends does not orphan the file."""
        try:
            await self.feature.store.save()
        except OSError as exc:
            log.warning("[mounts] could not save the cache state: %s", exc)

    async def _evict_file(self, entry: CacheEntry) -> None:
        self.info(f"Removing cache {entry.key} from cache table")
        self.info(f"Deleting cache {entry.key} file(s) at {entry.location}")
        await self.feature.store.evict_file(entry)

    # -- stop ----------------------------------------------------------------------------------------------
    def should_purge(self) -> bool:
        if self.run.aborted.is_set():
            reason = self.run.abort_error.message if self.run.abort_error is not None else "aborted"
            self.info(f"Purging caches since the task was aborted ({reason})")
            return True
        code = self.run.data.exit_code
        if code is not None and code in self.purge_exit_codes:
            self.info(
                f"Purging caches since last command had exit code {code} which is listed in "
                "task.Payload.OnExitStatus.PurgeCaches array"
            )
            return True
        return False

    async def stop(self, errors: ExecutionErrors) -> None:
        store = self.feature.store
        purge = bool(self.mounted) and self.should_purge()
        # Newest first: a cache mounted inside another one must leave before the outer one is moved away.
        for mounted in reversed(self.mounted):
            entry, name = mounted.entry, mounted.mount.cache_name
            if purge:
                self.info(f"Removing cache {name} from cache table")
                self.info(f"Deleting cache {name} file(s) at {entry.location}")
                await store.evict_directory(entry)
                continue
            self.info(f'Preserving cache: Moving "{mounted.target}" to "{entry.location}"')
            try:
                if not await asyncio.to_thread(still_mounted, mounted):
                    raise NotADirectoryError(
                        errno.ENOTDIR, "it is no longer the directory mounted there", str(mounted.target)
                    )
                await asyncio.to_thread(move, mounted.target, Path(entry.location))
            except OSError as exc:
                self.info(f"Removing cache {name} from cache table")
                self.info(f"Deleting cache {name} file(s) at {entry.location}")
                await store.evict_directory(entry)
                self.error(f'Could not unmount writable directory cache "{name}" due to: {exc}')
                errors.add(Failure(f'[mounts] could not persist cache "{name}" due to {exc}'))
                continue
            for old in await store.release_directory(entry):
                log.info("[mounts] evicted idle writable cache %s at %s (pool above capacity)", old.key, old.location)
        self.mounted.clear()
        try:
            await store.save()
        except OSError as exc:
            errors.add(InternalError(f"[mounts] could not save the cache state in {store.caches_dir}: {exc}"))


class MountsFeature(Feature):
    """Worker-lifetime half: the config gate, the cache store and its state files."""

    name = "mounts"

    def __init__(self, worker: WorkerContext) -> None:
        super().__init__(worker)
        self._store: CacheStore | None = None

    @property
    def store(self) -> CacheStore:
        if self._store is None:
            raise RuntimeError("the mounts feature was used before the worker initialised it")
        return self._store

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableMounts)

    async def initialise(self) -> None:
        if not self.is_enabled():
            return
        config = self.worker.config
        limit = config.extra("mountsMaxExtractedBytes", DEFAULT_MAX_EXTRACTED_BYTES)
        if not isinstance(limit, int) or limit < 1:
            raise FeatureInitError(
                f'Config setting "mountsMaxExtractedBytes" must be a positive integer, not {limit!r}', 73
            )
        caches, downloads = await asyncio.to_thread(
            lambda: (Path(config.cachesDir).absolute(), Path(config.downloadsDir).absolute())
        )
        store = CacheStore(caches, downloads, config.capacity)
        try:
            warnings = await asyncio.to_thread(store.load)
        except OSError as exc:
            raise FeatureInitError(
                f"[mounts] Not able to create worker cache directories {store.caches_dir} and "
                f"{store.downloads_dir}: {exc}",
                80,
            ) from None
        for warning in warnings:
            log.warning("[mounts] %s", warning)
        self._store = store

    async def free_disk_space(self) -> None:
        """Before a claim with disk short: downloads and writable caches no running task holds go."""
        if self._store is not None:
            evicted = await self._store.evict_idle()
            if evicted:
                log.warning("[mounts] disk space short: evicted %d idle downloads and caches", evicted)

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return TaskMounts(self, run)
