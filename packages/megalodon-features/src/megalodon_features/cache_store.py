"""The worker's two caches for mounts: downloaded content (``downloadsDir``) and writable caches (``cachesDir``).

Both outlive tasks and worker restarts, as on generic-worker: their tables are kept as JSON files under
``cachesDir`` (``file-caches.json`` and ``directory-caches.json``, generic-worker's names and entry shape
``{created, location, hits, key, sha256, in_use, last_used}``), reloaded when the worker starts, and entries
whose file or directory no longer exists on disk are dropped then (a crash mid-task leaves a writable cache
inside the dead task's directory, and it must not be handed out again).

Everything here runs on the event loop and is mutated only between ``await`` points, so with ``capacity > 1``
the tables need no lock; what does need one is *work* on a key (one download per key at a time, so two tasks
asking for the same URL download it once) and the state files (one writer at a time).

- Download cache: one file per key (``urlcontent:<url>``, ``artifact:<taskId>:<name>``, ``Raw content: ...``,
  ``Base64 content: ...``).  A task leases an entry while it copies or extracts it; an entry evicted while
  leased (its SHA-256 changed, another task required different content) leaves the table at once and its
  file is deleted when the last lease is returned.
- Writable caches: a *pool* of directories per cache name.  A task takes the most recently used idle
  directory (or a new one), renames it into its task directory, and renames it back when it stops; two
  concurrent tasks asking for the same name get two directories.  At most ``capacity`` idle directories
  are kept per name (generic-worker's ``trimPoolExcess``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import taskcluster

from megalodon_core.timefmt import iso, utcnow

log = logging.getLogger(__name__)

FILE_STATE = "file-caches.json"
DIRECTORY_STATE = "directory-caches.json"
#: Suffix of a download in progress; such leftovers of a crash are removed at start-up.
PARTIAL_SUFFIX = ".partial"


def _slug() -> str:
    """A fresh random name for a cache file or directory (generic-worker uses slugids too)."""
    return str(taskcluster.slugId())


@dataclass
class CacheEntry:
    """One cached file or directory; the JSON fields are generic-worker's."""

    key: str
    location: str
    created: str = field(default_factory=lambda: iso(utcnow()))
    hits: int = 1
    sha256: str = ""
    last_used: str = field(default_factory=lambda: iso(utcnow()))
    in_use: bool = False

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, key: str, data: Any) -> CacheEntry | None:
        if not isinstance(data, dict) or not isinstance(data.get("location"), str):
            return None
        return cls(
            key=str(data.get("key") or key),
            location=data["location"],
            created=str(data.get("created") or iso(utcnow())),
            hits=int(data.get("hits") or 0),
            sha256=str(data.get("sha256") or ""),
            last_used=str(data.get("last_used") or data.get("created") or iso(utcnow())),
            in_use=False,
        )


def move(src: Path, dst: Path) -> None:
    """Rename directory ``src`` to ``dst`` (an absent or empty directory), as ``rename(2)`` would.

    Across filesystems (``cachesDir`` and ``tasksDir`` on different mounts) rename fails with EXDEV; then
    the tree is copied and the source deleted (generic-worker's ``RenameCrossDevice``).  ``shutil.move`` is
    not used because it moves *into* an existing directory instead of replacing it.
    """
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    if not os.path.isdir(src) or os.path.islink(src):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", os.fspath(src))
    if os.path.lexists(dst):
        os.rmdir(dst)  # only an empty directory may be replaced, as with rename(2)
    try:
        shutil.copytree(src, dst, symlinks=True)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    shutil.rmtree(src)


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree, whichever ``path`` is; a missing path is not an error."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


class Lease:
    """A task's hold on a download-cache file: the file stays on disk until every lease is released."""

    def __init__(self, store: CacheStore, entry: CacheEntry) -> None:
        self.store = store
        self.entry = entry
        self.path = Path(entry.location)
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self.store.release_file(self.entry)


class CacheStore:
    """The download cache and the writable-cache pools of one worker, with their state files."""

    def __init__(self, caches_dir: Path, downloads_dir: Path, capacity: int = 1) -> None:
        self.caches_dir = caches_dir
        self.downloads_dir = downloads_dir
        self.capacity = capacity
        self.files: dict[str, CacheEntry] = {}
        self.directories: dict[str, list[CacheEntry]] = {}
        self._leases: dict[str, int] = {}
        self._doomed: set[str] = set()
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._save_lock = asyncio.Lock()

    # -- persistence ---------------------------------------------------------------------------------------
    def load(self) -> list[str]:
        """Create the directories and read the state files (blocking: call in a thread); returns warnings."""
        warnings: list[str] = []
        for directory in (self.caches_dir, self.downloads_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.downloads_dir.glob(f"*{PARTIAL_SUFFIX}"):
            remove_path(leftover)
        files = self._read(self.caches_dir / FILE_STATE, warnings)
        for key, raw in files.items():
            entry = CacheEntry.from_json(key, raw)
            if entry is None:
                continue
            if not os.path.exists(entry.location):
                warnings.append(f"Cache {entry.key!r} missing on worker ({entry.location}) - dropping it")
                continue
            self.files[entry.key] = entry
        dirs = self._read(self.caches_dir / DIRECTORY_STATE, warnings)
        for name, raw in dirs.items():
            # generic-worker's older format kept one entry per name instead of a list.
            items = raw if isinstance(raw, list) else [raw]
            pool: list[CacheEntry] = []
            for item in items:
                entry = CacheEntry.from_json(name, item)
                if entry is None:
                    continue
                if not os.path.isdir(entry.location):
                    warnings.append(f"Cache {name!r} missing on worker ({entry.location}) - dropping it")
                    continue
                pool.append(entry)
            if pool:
                self.directories[name] = pool
        return warnings

    @staticmethod
    def _read(path: Path, warnings: list[str]) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            warnings.append(f"cannot read cache state {path}: {exc}; starting with no entries from it")
            return {}
        if not isinstance(data, dict):
            warnings.append(f"cache state {path} does not hold a JSON object; ignoring it")
            return {}
        return data

    def _snapshot(self) -> tuple[str, str]:
        files = {key: entry.as_json() for key, entry in self.files.items()}
        dirs = {name: [e.as_json() for e in pool] for name, pool in self.directories.items() if pool}
        return json.dumps(files, indent=2, sort_keys=True), json.dumps(dirs, indent=2, sort_keys=True)

    @staticmethod
    def _write_atomically(path: Path, text: str) -> None:
        tmp = path.with_name(f"{path.name}-{_slug()}")
        try:
            tmp.write_text(text + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    async def save(self) -> None:
        """Write both state files (atomically: a crash leaves the old or the new file, never half of one)."""
        async with self._save_lock:
            files, dirs = self._snapshot()
            await asyncio.to_thread(self._write_atomically, self.caches_dir / FILE_STATE, files)
            await asyncio.to_thread(self._write_atomically, self.caches_dir / DIRECTORY_STATE, dirs)

    # -- download cache ------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def key_lock(self, key: str) -> AsyncIterator[None]:
        """Serialise work on one download key (generic-worker's singleflight)."""
        lock = self._key_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._key_locks[key] = lock
        async with lock:
            yield

    def new_download_path(self) -> Path:
        return self.downloads_dir / _slug()

    def add_file(self, key: str, location: Path, sha256: str) -> CacheEntry:
        entry = CacheEntry(key=key, location=os.fspath(location), sha256=sha256)
        self.files[key] = entry
        return entry

    def lease(self, entry: CacheEntry) -> Lease:
        self._leases[entry.location] = self._leases.get(entry.location, 0) + 1
        entry.in_use = True
        entry.last_used = iso(utcnow())
        return Lease(self, entry)

    async def release_file(self, entry: CacheEntry) -> None:
        left = self._leases.get(entry.location, 0) - 1
        if left > 0:
            self._leases[entry.location] = left
            return
        self._leases.pop(entry.location, None)
        entry.in_use = False
        if entry.location in self._doomed:
            self._doomed.discard(entry.location)
            await asyncio.to_thread(remove_path, Path(entry.location))

    async def evict_file(self, entry: CacheEntry) -> None:
        """Forget ``entry`` now; delete its file now, or when its last lease is released."""
        if self.files.get(entry.key) is entry:
            del self.files[entry.key]
        if self._leases.get(entry.location, 0) > 0:
            self._doomed.add(entry.location)
        else:
            await asyncio.to_thread(remove_path, Path(entry.location))

    async def evict_idle(self) -> int:
        """Disk is short: delete every download no task holds, then every idle writable cache, least
        recently used first; returns how many entries went.  State is saved afterwards."""
        evicted = 0
        for entry in sorted(self.files.values(), key=lambda e: e.last_used):
            if not self._leases.get(entry.location):
                await self.evict_file(entry)
                evicted += 1
        idle = [e for pool in self.directories.values() for e in pool if not e.in_use]
        for entry in sorted(idle, key=lambda e: e.last_used):
            await self.evict_directory(entry)
            evicted += 1
        if evicted:
            await self.save()
        return evicted

    # -- writable caches -----------------------------------------------------------------------------------
    def acquire_directory(self, name: str) -> CacheEntry | None:
        """The most recently used idle directory of cache ``name``, now marked in use, or None."""
        idle = [e for e in self.directories.get(name, []) if not e.in_use]
        if not idle:
            return None
        entry = max(idle, key=lambda e: e.last_used)
        entry.in_use = True
        entry.hits += 1
        entry.last_used = iso(utcnow())
        return entry

    def new_directory(self, name: str) -> CacheEntry:
        """A new in-use pool entry for ``name``; its directory appears when the task gives it back."""
        entry = CacheEntry(key=name, location=os.fspath(self.caches_dir / _slug()), in_use=True)
        self.directories.setdefault(name, []).append(entry)
        return entry

    def forget_directory(self, entry: CacheEntry) -> None:
        pool = self.directories.get(entry.key, [])
        if entry in pool:
            pool.remove(entry)
        if not pool:
            self.directories.pop(entry.key, None)

    async def evict_directory(self, entry: CacheEntry) -> None:
        self.forget_directory(entry)
        await asyncio.to_thread(remove_path, Path(entry.location))

    async def release_directory(self, entry: CacheEntry) -> list[CacheEntry]:
        """Return ``entry`` to its pool; evict idle entries beyond ``capacity``; returns the evicted ones."""
        entry.in_use = False
        entry.last_used = iso(utcnow())
        idle = sorted((e for e in self.directories.get(entry.key, []) if not e.in_use), key=lambda e: e.last_used)
        excess = idle[: max(0, len(idle) - self.capacity)]
        for old in excess:
            await self.evict_directory(old)
        return excess
