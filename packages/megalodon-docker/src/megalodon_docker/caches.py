"""docker-worker's ``cache: {name: path}``: persistent host directories bind-mounted into containers.

Each cache name has a pool of instances (``<cachesDir>/docker-worker/<name>/<uuid>``).  A task gets the
most recently used instance that no running task holds and that is not marked for purge, or a fresh one;
two running tasks never share an instance.  Instances on disk are adopted again after a restart (unlike
docker-worker, which forgot them), so caches survive worker restarts.

Purge requests (``purge-cache`` service, docker-worker's ``VolumeCache.purgeCaches``): before a task with
caches starts, the pool's open requests since the last successful poll (minus 5 minutes of clock skew; every
open request at the first poll) are fetched with the worker's credentials; every
instance of a named cache created before the request's ``before`` is dropped — at once when idle, when its
task releases it otherwise.  A purge-cache service that cannot be reached costs a warning, never a task.
An instance's creation time is the millisecond prefix of its directory name (``<ms>-<uuid>``); an adopted
instance without one counts as created at the epoch, so any request purges it.

All bookkeeping happens on the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from megalodon_core.errors import Failure

log = logging.getLogger(__name__)

#: docker-worker's skew: the next poll asks for requests since 5 minutes before the last one.
PURGE_SKEW = dt.timedelta(minutes=5)


@dataclass
class CacheInstance:
    name: str
    path: Path
    last_used: float = 0.0
    in_use: bool = False
    purge: bool = False
    #: Creation time (seconds since the epoch), what purge requests compare with.
    created: float = 0.0


def _created_from_name(name: str) -> float:
    prefix, _, rest = name.partition("-")
    return int(prefix) / 1000 if prefix.isdigit() and rest else 0.0


@dataclass
class CachePool:
    root: Path
    instances: dict[str, list[CacheInstance]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name_dir in sorted(self.root.iterdir()):
            if not name_dir.is_dir():
                continue
            for inst in sorted(name_dir.iterdir()):
                if inst.is_dir():
                    self.instances.setdefault(name_dir.name, []).append(
                        CacheInstance(
                            name_dir.name, inst, last_used=inst.stat().st_mtime, created=_created_from_name(inst.name)
                        )
                    )

    @staticmethod
    def check_name(name: str) -> None:
        if "::" in name or "/" in name or name in ("", ".", ".."):
            raise Failure(
                "Docker configuration could not be created.  This may indicate an authentication error when "
                f"validating scopes necessary for running the task.\nInvalid key name was provided: {name!r}"
            )

    def acquire(self, name: str) -> CacheInstance:
        self.check_name(name)
        free = [i for i in self.instances.get(name, []) if not i.in_use and not i.purge]
        if free:
            inst = max(free, key=lambda i: i.last_used)
        else:
            created = time.time()
            path = self.root / name / f"{int(created * 1000)}-{uuid.uuid4()}"
            path.mkdir(parents=True)
            os.chmod(path, 0o777)  # containers run as any user; the directory is theirs to fill
            inst = CacheInstance(name, path, created=created)
            self.instances.setdefault(name, []).append(inst)
        inst.in_use = True
        inst.last_used = time.time()
        return inst

    def release(self, inst: CacheInstance, *, purge: bool) -> Path | None:
        """Give ``inst`` back; when purged it leaves the pool and its path is returned for deletion."""
        inst.in_use = False
        inst.last_used = time.time()
        if purge or inst.purge:
            self._detach(inst)
            return inst.path
        return None

    def _detach(self, inst: CacheInstance) -> None:
        pool = self.instances.get(inst.name, [])
        if inst in pool:
            pool.remove(inst)

    def detach_idle(self) -> list[Path]:
        """Take every instance no task holds out of the pool (disk pressure); returns paths to delete."""
        paths = []
        for pool in list(self.instances.values()):
            for inst in list(pool):
                if not inst.in_use:
                    self._detach(inst)
                    paths.append(inst.path)
        return paths

    def mark_purged(self, name: str, before: float) -> list[Path]:
        """docker-worker's ``purge``: instances of ``name`` created before ``before`` go; idle ones at once.

        Returns the idle instances' paths to delete; instances in use are marked and leave on release.
        """
        paths = []
        for inst in list(self.instances.get(name, [])):
            if inst.created < before:
                inst.purge = True
                if not inst.in_use:
                    self._detach(inst)
                    paths.append(inst.path)
        return paths


PurgeRequests = Callable[[str, str], Awaitable[dict[str, Any]]]


class PurgePoller:
    """Asks the purge-cache service which of this pool's caches to drop (docker-worker's ``purgeCaches``).

    ``fetch(workerPoolId, since)`` is ``purgeCache.purgeRequests(workerPoolId, query={"since": since})``.
    """

    def __init__(self, pool: CachePool, worker_pool_id: str, fetch: PurgeRequests) -> None:
        self.pool = pool
        self.worker_pool_id = worker_pool_id
        self.fetch = fetch
        # docker-worker starts from its own start time because it forgets its caches at exit; instances
        # adopted from disk may predate a request made while the worker was down, so the first poll asks
        # for every open request (each only purges instances created before it).
        self.since = dt.datetime.fromtimestamp(0, dt.UTC)
        self._lock = asyncio.Lock()

    def _advance(self) -> None:
        self.since = dt.datetime.now(dt.UTC) - PURGE_SKEW

    async def poll(self) -> list[Path]:
        """Mark and detach what the service says; return the idle paths to delete (the caller deletes)."""
        async with self._lock:  # concurrent task starts share one request
            if not any(self.pool.instances.values()):
                self._advance()
                return []
            since = self.since.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            try:
                answer = await self.fetch(self.worker_pool_id, since)
            except (TimeoutError, TaskclusterFailure, aiohttp.ClientError) as exc:
                # docker-worker: an unreachable service must not turn every worker into a zombie
                log.warning("could not fetch purge-cache requests for %s: %s", self.worker_pool_id, exc)
                return []
            self._advance()
            paths: list[Path] = []
            for request in answer.get("requests", []):
                before = dt.datetime.fromisoformat(str(request["before"]).replace("Z", "+00:00")).timestamp()
                doomed = self.pool.mark_purged(str(request["cacheName"]), before)
                if doomed:
                    log.info("purge-cache request: dropping %d idle %s cache(s)", len(doomed), request["cacheName"])
                paths.extend(doomed)
            return paths


def delete_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
