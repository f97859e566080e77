"""docker-worker's ``cache: {name: path}``: persistent host directories bind-mounted into containers.

Each cache name has a pool of instances (``<cachesDir>/docker-worker/<name>/<uuid>``).  A task gets the
most recently used instance that no running task holds and that is not marked for purge, or a fresh one;
two running tasks never share an instance.  Instances on disk are adopted again after a restart (unlike
docker-worker, which forgot them), so caches survive worker restarts.

All bookkeeping happens on the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from megalodon_core.errors import Failure


@dataclass
class CacheInstance:
    name: str
    path: Path
    last_used: float = 0.0
    in_use: bool = False
    purge: bool = False


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
                        CacheInstance(name_dir.name, inst, last_used=inst.stat().st_mtime)
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
            path = self.root / name / str(uuid.uuid4())
            path.mkdir(parents=True)
            os.chmod(path, 0o777)  # containers run as any user; the directory is theirs to fill
            inst = CacheInstance(name, path)
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


def delete_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
