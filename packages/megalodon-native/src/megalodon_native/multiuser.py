"""generic-worker's *multiuser* posix engine: every task runs as a fresh OS user (``nativeEngine: multiuser``).

What isolates one task from the worker and from other tasks, and why it is done here:

- ``prepare`` creates ``task_<digits>`` whose home is the task directory (as generic-worker with its
  default ``tasksDir`` ``/home``), owned by the user and mode 0700, so concurrent tasks cannot read each
  other's files; ``generic-worker/`` (the task log) stays root's.
- Commands get the user's uid, gid and supplementary groups between fork and exec, and a clean environment
  (HOME, PATH, USER, payload env, forced TASK_ID...): nothing of the worker's environment leaks in.
- When the commands end (success, failure or abort) every process of the uid is killed, detached or not,
  *before* anything the task could have tampered with is read: artifacts, the task log, and
  ``chain-of-trust-additional-data.json``.
- Artifact content is read by ``cat`` running as the task user into a worker-private staging directory:
  a symlink to a file the user cannot read becomes a ``file-not-readable-on-worker`` error artifact, never
  an upload of the worker's file (a root ``os.access`` check would say yes to everything).
- ``cleanup`` removes the account (and, with ``cleanUpTaskDirs``, what it left in /tmp-like directories,
  since a later task user may get the same uid).

Start-up checks (config file and signing key unreadable by task users, tasksDir reachable by them, no
desktop sessions) and the sweep of stale task users live in :class:`MultiuserEngineFeature`, because a
feature's ``initialise`` is where the core lets a plugin refuse to start the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from megalodon_core.contracts import ArtifactEntry, Artifacts, Feature, FeatureInitError, TaskFeature
from megalodon_core.errors import Failure, InternalError, MalformedPayload
from megalodon_core.scopes import describe, satisfies
from megalodon_core.task import TaskRun

from .artifacts import NativeArtifacts
from .executor import NativeExecutor
from .payload_multiuser import multiuser_payload_json_schema, validate_multiuser_payload
from .users import TASK_PATH, TaskUser, UserError, create_user, delete_user, kill_user_processes, sweep_stale_users

#: Config key choosing the engine, and its values.
ENGINE_KEY = "nativeEngine"
#: Config key naming the worker's config file, so the start-up check can prove tasks cannot read it.
CONFIG_FILE_KEY = "workerConfigFile"
#: File a task may write to add data to its chain-of-trust certificate (chain_of_trust_feature.go).
COT_ADDITIONAL = "chain-of-trust-additional-data.json"
#: An identity no account has: probes run as it see exactly what "other users" may see.
PROBE_ID = 2**31 - 7
#: Concurrent ``cat`` processes copying artifacts.
COPY_PARALLELISM = 8
#: generic-worker's feature name, used in its disabled reason.
RUN_AS_CURRENT_USER_NAME = "Run Task As Current User"


def is_multiuser(config: Any) -> bool:
    return bool(config.extra(ENGINE_KEY, "insecure") == "multiuser")


# -- running something as another identity ------------------------------------------------------------------
async def copy_as(uid: int, gid: int, groups: list[int], source: Path, dest: Path) -> str | None:
    """Copy ``source`` to the new file ``dest`` reading it as ``uid``; returns the error text or None.

    ``dest`` is created by the worker (0600, in its private directory) and handed to ``cat`` as stdout, so
    the only thing decided with the task user's rights is whether ``source`` can be opened and read.
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/cat",
            "--",
            str(source),
            user=uid,
            group=gid,
            extra_groups=groups,
            cwd="/",
            env={"PATH": TASK_PATH},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=fd,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(fd)
    _, err = await proc.communicate()
    if proc.returncode == 0:
        return None
    return err.decode(errors="replace").strip() or f"cat exited with code {proc.returncode}"


async def _probe(script: str, path: Path) -> bool:
    """Run ``script`` (with ``$1`` = path) as a user with no account, no group and no privilege."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        script,
        "probe",
        str(path),
        user=PROBE_ID,
        group=PROBE_ID,
        extra_groups=[],
        cwd="/",
        env={"PATH": TASK_PATH},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0


async def readable_by_others(path: Path) -> bool:
    """Whether such an outsider could open ``path`` for reading."""
    return await _probe('test -r "$1"', path)


async def reachable_by_others(path: Path) -> bool:
    """Whether such an outsider could traverse ``path`` (needed for tasksDir: task dirs live below it)."""
    return await _probe('cd "$1"', path)


async def check_worker_secrets(config: Any) -> list[str]:
    """Problems that make running tasks as other users unsafe or impossible, each naming its path/key."""
    problems: list[str] = []
    if not config.headlessTasks:
        problems.append(
            'Config setting "headlessTasks" is false: generic-worker would run each task in a desktop session '
            "(auto-login, DISPLAY=:0, XDG_RUNTIME_DIR); megalodon's multiuser engine does not support desktop "
            "sessions. Set headlessTasks to true."
        )
    secrets = [(CONFIG_FILE_KEY, config.extra(CONFIG_FILE_KEY, "")), ("ed25519SigningKeyLocation", "")]
    if config.enableChainOfTrust:
        secrets[1] = ("ed25519SigningKeyLocation", config.ed25519SigningKeyLocation)
    for key, location in secrets:
        if location and await readable_by_others(Path(location)):
            problems.append(
                f"{location} (config {key}) is readable by task users; it holds worker secrets. Restrict it, "
                f"e.g. `chown root:root {location} && chmod 600 {location}`"
            )
    tasks_dir = await asyncio.to_thread(Path(config.tasksDir).absolute)
    await asyncio.to_thread(tasks_dir.mkdir, parents=True, exist_ok=True)
    if not await reachable_by_others(tasks_dir):
        problems.append(
            f"tasksDir {tasks_dir} cannot be reached by task users (a parent directory is not searchable by "
            "others): task commands could not enter their task directories"
        )
    return problems


# -- artifacts ------------------------------------------------------------------------------------------
class MultiuserArtifacts(NativeArtifacts):
    """Finds artifacts as the insecure engine does, then reads their content as the task user."""

    def __init__(self, run: TaskRun, artifacts: list[Any], user: TaskUser | None, staging: Path) -> None:
        super().__init__(run.task_dir, artifacts, run.expires)
        self.user = user
        self.staging = staging

    async def collect(self) -> list[ArtifactEntry]:
        entries = await super().collect()
        if self.user is None:  # runTaskAsCurrentUser: the commands ran as the worker; nothing to protect
            return entries
        user = self.user
        groups = await asyncio.to_thread(user.supplementary_gids)
        gate = asyncio.Semaphore(COPY_PARALLELISM)

        async def stage(index: int, entry: ArtifactEntry) -> ArtifactEntry:
            if entry.is_error or not isinstance(entry.source, Path):
                return entry
            dest = self.staging / f"{index}"
            async with gate:
                error = await copy_as(user.uid, user.gid, groups, entry.source, dest)
            if error is None:
                return dataclasses.replace(entry, source=dest)
            return ArtifactEntry(
                name=entry.name,
                expires=entry.expires,
                optional=entry.optional,
                error_reason="file-not-readable-on-worker",
                error_message=(f"Could not copy file '{entry.source}' to temporary location as task user: {error}"),
                content_type="application/binary",
            )

        return list(await asyncio.gather(*(stage(i, e) for i, e in enumerate(entries))))


# -- the executor -----------------------------------------------------------------------------------------
class MultiuserExecutor(NativeExecutor):
    """The native executor with generic-worker's multiuser engine semantics (see module docstring)."""

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        self._users: dict[str, TaskUser] = {}
        self._staging: dict[str, Path] = {}
        self._log_inodes: dict[str, tuple[int, int]] = {}

    @staticmethod
    def _key(run: TaskRun) -> str:
        return f"{run.task_id}/{run.run_id}"

    # -- payload ------------------------------------------------------------------------------------------
    def parse_payload(self, raw: Any) -> Any:
        return validate_multiuser_payload(raw)

    def payload_schema(self) -> dict[str, Any]:
        return multiuser_payload_json_schema()

    def validate_payload(self, run: TaskRun) -> None:
        super().validate_payload(run)
        if run.payload.features.run_task_as_current_user:
            self._check_run_as_current_user(run)

    def _check_run_as_current_user(self, run: TaskRun) -> None:
        config = self.worker.config
        if config.capacity > 1:
            raise MalformedPayload(
                f'feature "{RUN_AS_CURRENT_USER_NAME}" is not compatible with capacity > 1 (current capacity: '
                f"{config.capacity}) because it would bypass per-task user isolation"
            )
        if not config.enableRunTaskAsCurrentUser:
            raise MalformedPayload(
                'this task is attempting to use feature "runTaskAsCurrentUser", but it\'s not enabled on this '
                f"worker pool ({config.task_queue_id})"
            )
        required = [[f"generic-worker:run-task-as-current-user:{config.task_queue_id}"]]
        if not satisfies(run.scopes, required):
            raise MalformedPayload(
                f'Feature "runTaskAsCurrentUser" requires scopes:\n\n{describe(required)}\n\nbut task only has '
                "scopes:\n\n" + "\n".join(f"  {s}" for s in run.scopes) + "\n\nYou probably should add "
                "some scopes to your task definition."
            )

    def requested_features(self, run: TaskRun) -> list[str]:
        names = super().requested_features(run)
        if run.payload.features.chain_of_trust:
            names.append("chainOfTrust")
        return names

    def _as_current_user(self, run: TaskRun) -> bool:
        return bool(run.payload is not None and run.payload.features.run_task_as_current_user)

    # -- preparing ----------------------------------------------------------------------------------------
    async def prepare(self, run: TaskRun) -> None:
        key = self._key(run)
        try:
            user = await create_user(run.task_dir)
        except UserError as exc:
            raise InternalError(f"could not create the task user: {exc}") from None
        self._users[key] = user
        run.facts["task_user"] = user.fact()
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="megalodon-artifacts-"))
        self._staging[key] = staging
        self._log_inodes[key] = await asyncio.to_thread(self._own_task_dir, run, user)
        run.log.info(f"Running task as user {user.name} (uid {user.uid})")

    @staticmethod
    def _own_task_dir(run: TaskRun, user: TaskUser) -> tuple[int, int]:
        """Task dir: the user's, 0700.  ``generic-worker/`` (the log): root's, 0700.  Returns the log's inode."""
        os.chown(run.task_dir, user.uid, user.gid)
        os.chmod(run.task_dir, 0o700)
        logs = run.log.path.parent
        os.chown(logs, 0, 0)
        os.chmod(logs, 0o700)
        info = os.stat(run.log.path)
        return info.st_dev, info.st_ino

    # -- running ------------------------------------------------------------------------------------------
    def base_environment(self, run: TaskRun) -> dict[str, str]:
        """multiuser_posix.go's EnvVars: a clean environment, never the worker's own."""
        user = self._users.get(self._key(run))
        if self._as_current_user(run) or user is None:
            me = pwd.getpwuid(os.getuid())
            return {"HOME": me.pw_dir, "PATH": TASK_PATH, "USER": me.pw_name}
        return {"HOME": str(user.home), "PATH": TASK_PATH, "USER": user.name}

    async def command_identity(self, run: TaskRun) -> dict[str, Any]:
        user = self._users.get(self._key(run))
        if self._as_current_user(run):
            return {}
        if user is None:
            raise InternalError("multiuser engine: no task user was created for this run")
        groups = await asyncio.to_thread(user.supplementary_gids)
        return {"user": user.uid, "group": user.gid, "extra_groups": groups}

    async def run(self, run: TaskRun) -> None:
        try:
            await super().run(run)
        finally:
            await self._after_commands(run)

    async def _after_commands(self, run: TaskRun) -> None:
        """Stop everything the task user runs, then undo what it may have done to files the worker reads."""
        key = self._key(run)
        user = self._users.get(key)
        if user is None:
            return
        await kill_user_processes(user)
        inode = self._log_inodes.get(key)
        if inode is not None and not await asyncio.to_thread(self._log_intact, run, inode):
            run.log.error("The task replaced or moved the task log directory; the worker's copy is kept")
            await asyncio.to_thread(self._restore_log, run)
        await self._secure_cot_additional_data(run, user)

    @staticmethod
    def _log_intact(run: TaskRun, inode: tuple[int, int]) -> bool:
        try:
            parent = os.lstat(run.log.path.parent)
            info = os.lstat(run.log.path)
        except OSError:
            return False
        return (
            stat.S_ISDIR(parent.st_mode)
            and parent.st_uid == 0
            and stat.S_ISREG(info.st_mode)
            and (info.st_dev, info.st_ino) == inode
        )

    @staticmethod
    def _restore_log(run: TaskRun) -> None:
        """Put the worker's open log file back at its path (the task moved or replaced the directory).

        The worker still holds the original file open; ``/proc/self/fd/N`` reaches that inode whatever the
        task did to the names, so it is copied to a fresh root-owned directory at the expected path.
        """
        logs = run.log.path.parent
        if os.path.lexists(logs):
            if os.path.isdir(logs) and not os.path.islink(logs):
                shutil.rmtree(logs, ignore_errors=True)
            else:
                os.unlink(logs)
        os.mkdir(logs, 0o700)
        run.log.flush()
        handle = getattr(run.log, "_file", None)
        if handle is None:
            raise InternalError("the task tampered with its log and the worker's copy is not reachable")
        with open(f"/proc/self/fd/{handle.fileno()}", "rb") as src, open(run.log.path, "xb") as dst:
            shutil.copyfileobj(src, dst)
        # Later writes go to the original inode: swap the log's handle to the restored file.
        new = open(run.log.path, "ab", buffering=1 << 20)  # noqa: SIM115 - replaces the log's long-lived handle
        handle.close()
        run.log._file = new

    async def _secure_cot_additional_data(self, run: TaskRun, user: TaskUser) -> None:
        """Replace the task's chain-of-trust additions by a copy read as the task user (symlink escapes)."""
        path = run.task_dir / COT_ADDITIONAL
        if not await asyncio.to_thread(os.path.lexists, path):
            return
        staging = self._staging[self._key(run)]
        copy = staging / COT_ADDITIONAL
        groups = await asyncio.to_thread(user.supplementary_gids)
        error = await copy_as(user.uid, user.gid, groups, path, copy)
        await asyncio.to_thread(os.unlink, path)
        if error is not None:
            raise Failure(f"Could not copy file '{path}' to temporary location as task user: {error}")
        await asyncio.to_thread(shutil.move, copy, path)

    # -- after ----------------------------------------------------------------------------------------------
    def result(self, run: TaskRun) -> Artifacts:
        if run.payload is None:
            return super().result(run)
        key = self._key(run)
        staging = self._staging.get(key)
        if staging is None:  # prepare never ran (malformed payload): nothing was produced
            return super().result(run)
        user = None if self._as_current_user(run) else self._users.get(key)
        return MultiuserArtifacts(run, list(run.payload.artifacts), user, staging)

    async def cleanup(self, run: TaskRun) -> None:
        await super().cleanup(run)
        key = self._key(run)
        user = self._users.pop(key, None)
        self._log_inodes.pop(key, None)
        staging = self._staging.pop(key, None)
        if staging is not None:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        if user is not None:
            await delete_user(user, remove_files=bool(self.worker.config.cleanUpTaskDirs))


# -- start-up -------------------------------------------------------------------------------------------
class MultiuserEngineFeature(Feature):
    """Worker-lifetime checks of the multiuser engine; never requested by tasks.

    ``initialise`` refuses to start the worker (exit 77, generic-worker's code for failing to secure its
    config) when tasks could read the worker's secrets, then removes task users a crashed worker left.
    """

    name = "multiuserEngine"
    executors = frozenset({"native"})

    def is_enabled(self) -> bool:
        return is_multiuser(self.worker.config)

    async def initialise(self) -> None:
        config = self.worker.config
        if not is_multiuser(config):
            return
        if os.geteuid() != 0:
            raise FeatureInitError(
                'Config setting "nativeEngine" is "multiuser", which creates an OS user per task: the worker '
                "must run as root",
                77,
            )
        problems = await check_worker_secrets(config)
        if problems:
            raise FeatureInitError("multiuser engine cannot start:\n" + "\n".join(problems), 77)
        for directory in (config.cachesDir, config.downloadsDir):
            path = await asyncio.to_thread(Path(directory).absolute)
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(os.chmod, path, 0o700)
        with contextlib.suppress(UserError):
            await sweep_stale_users(remove_files=bool(config.cleanUpTaskDirs))

    def is_requested(self, run: TaskRun) -> bool:
        return False

    def new_task_feature(self, run: TaskRun) -> TaskFeature:  # pragma: no cover - never requested
        raise InternalError("the multiuserEngine feature is never requested by tasks")
