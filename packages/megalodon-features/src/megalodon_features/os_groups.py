"""osGroups: a task may only ask for groups it will actually have.

Selected by name like every feature: the executor's ``osGroups`` request carries ``{"groups": [...],
"join": bool}`` (``join``: the task gets an account of its own that joins them, as the multiuser engine).

In generic-worker's insecure engine (``os_groups_insecure.go``) tasks run as the worker's own user, so
nothing is added to any group: a task listing ``osGroups`` is accepted when the worker's user already
belongs to every one of them, and refused as malformed-payload otherwise, with generic-worker's message
naming the missing groups and the ones that would be accepted.

Multiuser engine (``nativeEngine: multiuser``, ``os_groups_multiuser*.go``): each group needs scope
``generic-worker:os-group:<provisionerId>/<workerType>/<group>``; the task user (``run.data.task_user``,
set by the executor's prepare) is added with ``gpasswd -a`` before the commands and removed with
``gpasswd -d`` after, so membership lasts exactly one task.

The groups checked are the worker *process's* (effective gid plus supplementary groups): task commands
inherit exactly those, whereas the group database may list memberships the running process never got
(added after login).  Unlike generic-worker, a group named after the user is accepted too: generic-worker
drops it because a multiuser task user's own group is unpredictable, but the insecure engine's user is the
pool's fixed account, so its group is as predictable as any other.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
from typing import TYPE_CHECKING

from megalodon_core.contracts import Feature, TaskFeature
from megalodon_core.errors import ExecutionErrors, InternalError, MalformedPayload

if TYPE_CHECKING:
    from megalodon_core.task import TaskRun

log = logging.getLogger(__name__)


def current_groups() -> set[str]:
    """Names of the groups this process (hence every task command) runs with.  Blocking: NSS may be remote."""
    gids = {os.getegid(), *os.getgroups()}
    names: set[str] = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            log.warning("osGroups: group id %d has no name; it cannot be requested by name", gid)
    return names


def go_list(values: list[str]) -> str:
    """Go's ``%v`` of a ``[]string``: ``[a b c]``."""
    return "[" + " ".join(values) + "]"


class OSGroupsFeature(Feature):
    """Config gate ``enableOSGroups``; requested when ``payload.osGroups`` is not empty."""

    name = "osGroups"

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableOSGroups)

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return OSGroupsTask(run)


async def _gpasswd(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "gpasswd",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


class OSGroupsTask(TaskFeature):
    def __init__(self, run: TaskRun) -> None:
        self.run = run
        self.added: list[str] = []
        request = run.data.request(OSGroupsFeature.name)
        options = dict(request.options or {}) if request is not None else {}
        #: The groups the payload lists (the executor's ``osGroups`` request: ``{"groups": [...], "join": bool}``).
        self.groups: list[str] = list(options.get("groups", []))
        #: ``join``: the task runs as an account of its own (multiuser engine), added to the groups for the
        #: task (scopes needed); otherwise it runs as the worker's user, which must already have them.
        self.multiuser = bool(options.get("join", False))

    def required_scopes(self) -> list[list[str]]:
        if not self.multiuser:
            return []
        pool = self.run.worker.config.task_queue_id
        return [[f"generic-worker:os-group:{pool}/{group}" for group in self.groups]]

    async def start(self) -> None:
        if self.multiuser:
            await self._add_task_user()
            return
        requested: list[str] = list(self.groups)
        try:
            groups = await asyncio.to_thread(current_groups)
        except OSError as exc:
            raise InternalError(f"failed to get user groups: {exc}") from None
        missing = [name for name in requested if name not in groups]
        if missing:
            raise MalformedPayload(
                f"task payload contains unsupported osGroups: {go_list(missing)}\n"
                f"allowed values (on this worker pool): {go_list(sorted(groups))}"
            )

    async def _add_task_user(self) -> None:
        user = self.run.data.task_user
        if user is None:
            raise InternalError("osGroups: the executor created no task user")
        for group in self.groups:
            code, out = await _gpasswd("-a", user.name, group)
            if code != 0:
                raise MalformedPayload(f"osGroups: could not add task user {user.name} to group {group}: {out}")
            self.added.append(group)

    async def stop(self, errors: ExecutionErrors) -> None:
        user = self.run.data.task_user
        for group in self.added:
            code, out = await _gpasswd("-d", user.name if user else "", group)
            if code != 0:
                errors.add(InternalError(f"osGroups: could not remove task user from group {group}: {out}"))
        self.added.clear()
