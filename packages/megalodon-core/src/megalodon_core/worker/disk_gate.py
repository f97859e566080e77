"""The disk gate before each claim: ``requiredDiskSpaceMegabytes`` free, after evicting what can be evicted.

generic-worker checks free space before claiming and refuses to claim when short; megalodon first asks
features (download and cache stores) and executors (unused images) to free what they keep, one owner at a
time, stopping as soon as enough is free — so the worker never claims a task it could not run.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class DiskSpaceOwner(Protocol):
    """A feature or executor that keeps evictable data on disk."""

    async def free_disk_space(self) -> None: ...


#: Tasks directories whose shortage was already logged; cleared once there is enough space again.
_short: set[str] = set()


def free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


async def ensure_disk_space(tasks_dir: str, required_mb: int, owners: Sequence[DiskSpaceOwner]) -> bool:
    """True when ``required_mb`` megabytes are free on ``tasks_dir``'s filesystem, evicting if needed."""
    required = required_mb * 1024 * 1024
    # The check before every claim: one statvfs of the local tasks filesystem, answered from its superblock in
    # microseconds; a thread hop here cost a millisecond of wall per task on a loaded machine (issue 13).
    free = free_bytes(tasks_dir)
    if free >= required:
        _short.discard(tasks_dir)
        return True
    for owner in owners:
        try:
            await owner.free_disk_space()
        except Exception:
            log.exception("%s failed to free disk space", type(owner).__name__)
        free = await asyncio.to_thread(free_bytes, tasks_dir)
        if free >= required:
            _short.discard(tasks_dir)
            return True
    # The check runs before every claim (every few seconds while short): say it once per episode, the
    # self-checks' quarantine line and /healthz carry it from then on.
    level = logging.DEBUG if tasks_dir in _short else logging.WARNING
    _short.add(tasks_dir)
    log.log(
        level,
        "not able to free up enough disk space - require %d bytes, but only have %d bytes - and nothing "
        "left to delete: not claiming",
        required,
        free,
    )
    return False
