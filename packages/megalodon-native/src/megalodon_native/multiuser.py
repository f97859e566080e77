"""generic-worker's *multiuser* posix engine: every task runs as a fresh OS user (``nativeEngine: multiuser``).

What isolates one task from the worker and from other tasks, and why it is done here:

- ``prepare`` creates ``task_<digits>`` whose home is the task directory (as generic-worker with its
  default ``tasksDir`` ``/home``), owned by the user and mode 0700, so concurrent tasks cannot read each
  other's files; ``generic-worker/`` (the task log) stays root's.
- Commands get the user's uid, gid and supplementary groups between fork and exec, and a clean environment
  (HOME, PATH, USER, payload env, forced TASK_ID...): nothing of the worker's environment leaks in.
- When the commands end (success, failure or abort) every process of the uid is killed, detached or not,
  *before* anything the task could have tampered with is read: artifacts, the task log, and
  ``chain-of-trust-additional-data.json``.  Task-user processes can still start after that (an interactive
  shell stays open until the features stop), so the additions are read from a copy in the staging
  directory, and cleanup kills the uid's processes again and re-checks the log, which is uploaded last.
- Artifact content is read by ``cat`` running as the task user into a worker-private staging directory:
  a symlink to a file the user cannot read becomes a ``file-not-readable-on-worker`` error artifact, never
  an upload of the worker's file (a root ``os.access`` check would say yes to everything).
- ``cleanup`` removes the account (and, with ``cleanUpTaskDirs``, what it left in /tmp-like directories,
  since a later task user may get the same uid).

Start-up checks (config file and signing key unreadable by task users, tasksDir reachable by them, no
desktop sessions) and the sweep of stale task users are :meth:`MultiuserExecutor.initialise`, the executor's
start hook, which refuses to start the worker (exit 77) when tasks could read its secrets.
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

from megalodon_core.contracts import ArtifactEntry, Artifacts, ExecutorInitError, NoArtifacts
from megalodon_core.errors import Failure, InternalError, MalformedPayload
from megalodon_core.rundata import ProxyPlacement
from megalodon_core.rundata import TaskUser as TaskUserData
from megalodon_core.scopes import ScopeCheck, describe
from megalodon_core.task import TaskRun

from .artifacts import NativeArtifacts
from .executor import COT_ADDITIONAL, NativeExecutor, NativeRun
from .payload_multiuser import multiuser_payload_json_schema, validate_multiuser_payload
from .users import (
    TASK_PATH,
    TaskUser,
    UserError,
    create_user,
    delete_user,
    kill_user_processes,
    read_as_user,
    sweep_stale_users,
)

#: Worker credentials that must not reach the runAfterUserCreation script with the worker's environment.
_WORKER_CREDENTIAL_ENV = frozenset({"TASKCLUSTER_ACCESS_TOKEN", "TASKCLUSTER_CERTIFICATE", "TASKCLUSTER_CLIENT_ID"})

#: Config key choosing the engine, and its values.
ENGINE_KEY = "nativeEngine"
#: Config key naming the worker's config file, so the start-up check can prove tasks cannot read it.
CONFIG_FILE_KEY = "workerConfigFile"
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

    ``dest`` is created by the worker (0600, in its private directory) and handed to the helper as stdout,
    so the only thing decided with the task user's rights is whether ``source`` can be opened and read;
    the helper never blocks on a FIFO or device (:func:`megalodon_native.users.read_as_user`).
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        code, err = await read_as_user(uid, gid, groups, source, fd)
    finally:
        os.close(fd)
    if code == 0:
        return None
    return err or f"copy helper exited with code {code}"


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


async def check_worker_secrets(config: Any, config_file: Path | None = None) -> list[str]:
    """Problems that make running tasks as other users unsafe or impossible, each naming its path/key.

    ``config_file`` is the file the worker was started with (``WorkerContext.config_file``); config key
    ``workerConfigFile`` names it instead when set.
    """
    problems: list[str] = []
    if not config.headlessTasks:
        problems.append(
            'Config setting "headlessTasks" is false: generic-worker would run each task in a desktop session '
            "(auto-login, DISPLAY=:0, XDG_RUNTIME_DIR); megalodon's multiuser engine does not support desktop "
            "sessions. Set headlessTasks to true."
        )
    started_with = config.extra(CONFIG_FILE_KEY, "") or (str(config_file) if config_file is not None else "")
    secrets = [(CONFIG_FILE_KEY, started_with), ("ed25519SigningKeyLocation", "")]
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
class MultiuserRun(NativeRun):
    """One run under the multiuser engine: its task user, staging directory and log inode as attributes."""

    executor: MultiuserExecutor

    def __init__(self, executor: MultiuserExecutor, task_run: TaskRun) -> None:
        super().__init__(executor, task_run)
        self.user: TaskUser | None = None
        #: Worker-private directory artifact content is copied to (as the task user) before upload.
        self.staging: Path | None = None
        #: (device, inode) of the task log: a task that replaced it is detected after the commands.
        self.log_inode: tuple[int, int] | None = None

    # -- payload ------------------------------------------------------------------------------------------
    def parse_payload(self, raw: Any) -> Any:
        payload = super().parse_payload(raw)
        if payload.features.run_task_as_current_user:
            self._check_run_as_current_user()
        return payload

    def _check_run_as_current_user(self) -> None:
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

    async def _check_run_as_current_user_scopes(self) -> None:
        """The feature's scope, literal first and then with roles expanded (generic-worker's Satisfies)."""
        run = self.task_run
        required = [[f"generic-worker:run-task-as-current-user:{self.worker.config.task_queue_id}"]]
        if not await ScopeCheck(run.scopes, self.worker.expand_scopes).satisfies(required):
            raise MalformedPayload(
                f'Feature "runTaskAsCurrentUser" requires scopes:\n\n{describe(required)}\n\nbut task only has '
                "scopes:\n\n" + "\n".join(f"  {s}" for s in run.scopes) + "\n\nYou probably should add "
                "some scopes to your task definition."
            )

    def requested_features(self) -> list[Any]:
        requests = super().requested_features()
        if self.payload.features.chain_of_trust:
            from megalodon_core.rundata import FeatureRequest

            requests.append(FeatureRequest("chainOfTrust"))
        return requests

    def _as_current_user(self) -> bool:
        return bool(self.parsed and self.payload.features.run_task_as_current_user)

    # -- preparing ----------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        run = self.task_run
        if self.payload.features.run_task_as_current_user:
            await self._check_run_as_current_user_scopes()
        try:
            user = await create_user(run.task_dir)
        except UserError as exc:
            raise InternalError(f"could not create the task user: {exc}") from None
        self.user = user
        run.data.task_user = TaskUserData(user.name, user.uid, user.gid, user.home, per_task=True)
        self.staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="megalodon-artifacts-"))
        self.log_inode = await asyncio.to_thread(self._own_task_dir, run, user)
        run.log.info(f"Running task as user {user.name} (uid {user.uid})")
        if self.worker.config.runAfterUserCreation:
            await self._run_after_user_creation(self.worker.config.runAfterUserCreation, user)
        await super().prepare()

    async def _run_after_user_creation(self, script: str, user: TaskUser) -> None:
        """generic-worker's ``runAfterUserCreation`` (``PostRebootSetup``): after the task user and its task
        directory exist, before anything of the task runs, ``[script]`` is executed (one argument, no shell)
        as the *task user* even when the task runs as the current user (bugzil.la/1559210), in the task
        directory, with the worker's environment (Go's nil ``Env``) less the worker's Taskcluster
        credentials, its output going to the worker's stdout.  A failure is the worker's, not the task's:
        generic-worker panics; here the run is resolved exception/internal-error naming the script.
        """
        run = self.task_run
        env = {k: v for k, v in os.environ.items() if k not in _WORKER_CREDENTIAL_ENV}
        groups = await asyncio.to_thread(user.supplementary_gids)
        try:
            proc = await asyncio.create_subprocess_exec(
                script,
                cwd=run.task_dir,
                env=env,
                user=user.uid,
                group=user.gid,
                extra_groups=groups,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise InternalError(
                f"runAfterUserCreation: could not run {script!r} as task user {user.name}: {exc.strerror or exc}"
            ) from None
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # the run was aborted meanwhile: nothing of it may outlive the run
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        if code != 0:
            raise InternalError(f"runAfterUserCreation: {script!r} exited with code {code} as task user {user.name}")

    async def proxy_placement(self) -> ProxyPlacement:
        """As the insecure engine's, and only the task user's processes may connect (H2's access control)."""
        placement = await super().proxy_placement()
        if self.user is None or self._as_current_user():
            return placement
        # Containers the task starts (docker-bridge) connect from the run's own network, from a socket the
        # host's tables do not list: generic-worker's --allowed-network fallback, that subnet alone.
        sources = (self.task_network.subnet,) if self.task_network is not None else ()
        return dataclasses.replace(placement, allowed_uids=frozenset({self.user.uid}), allowed_sources=sources)

    def chain_of_trust_additions(self) -> Path | None:
        """The copy read as the task user after the commands (:meth:`_secure_cot_additional_data`), kept in the
        worker-private staging directory: the chain-of-trust feature reads it when it stops, after the artifact
        upload, and a task-user process alive by then (an interactive shell) could swap the task directory's
        file for a symlink to a root-only file."""
        return self.staging / COT_ADDITIONAL if self.staging is not None else None

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
    def base_environment(self) -> dict[str, str]:
        """multiuser_posix.go's EnvVars: a clean environment, never the worker's own."""
        user = self.user
        if self._as_current_user() or user is None:
            me = pwd.getpwuid(os.getuid())
            return {"HOME": me.pw_dir, "PATH": TASK_PATH, "USER": me.pw_name}
        return {"HOME": str(user.home), "PATH": TASK_PATH, "USER": user.name}

    async def command_identity(self) -> dict[str, Any]:
        user = self.user
        if self._as_current_user():
            return {}
        if user is None:
            raise InternalError("multiuser engine: no task user was created for this run")
        groups = await asyncio.to_thread(user.supplementary_gids)
        return {"user": user.uid, "group": user.gid, "extra_groups": groups}

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self._after_commands()

    async def _after_commands(self) -> None:
        """Stop everything the task user runs, then undo what it may have done to files the worker reads."""
        user = self.user
        if user is None:
            return
        await kill_user_processes(user)
        await self._check_log()
        await self._secure_cot_additional_data(user)

    async def _check_log(self) -> None:
        """Put the worker's copy of the task log back at its path if the task moved or replaced it."""
        run = self.task_run
        inode = self.log_inode
        if inode is not None and not await asyncio.to_thread(self._log_intact, run, inode):
            run.log.error("The task replaced or moved the task log directory; the worker's copy is kept")
            await asyncio.to_thread(self._restore_log, run)

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
        """Put a fresh root-owned log directory back at its path (the task moved or replaced it), then have
        the task log copy its content there from the handle it still holds and write on there."""
        logs = run.log.path.parent
        if os.path.lexists(logs):
            if os.path.isdir(logs) and not os.path.islink(logs):
                shutil.rmtree(logs, ignore_errors=True)
            else:
                os.unlink(logs)
        os.mkdir(logs, 0o700)
        try:
            run.log.reopen_at_path()
        except ValueError as exc:
            raise InternalError(
                f"the task tampered with its log and the worker's copy is not reachable: {exc}"
            ) from None

    async def _secure_cot_additional_data(self, user: TaskUser) -> None:
        """Copy the task's chain-of-trust additions, read as the task user (symlink escapes), to staging."""
        run = self.task_run
        path = run.task_dir / COT_ADDITIONAL
        if self.staging is None or not await asyncio.to_thread(os.path.lexists, path):
            return
        copy = self.staging / COT_ADDITIONAL
        groups = await asyncio.to_thread(user.supplementary_gids)
        error = await copy_as(user.uid, user.gid, groups, path, copy)
        if error is not None:
            await asyncio.to_thread(copy.unlink, True)
            raise Failure(f"Could not copy file '{path}' to temporary location as task user: {error}")

    # -- after ----------------------------------------------------------------------------------------------
    def artifacts(self) -> Artifacts:
        if not self.parsed or self.staging is None:  # prepare never ran: nothing was produced
            return NoArtifacts()
        user = None if self._as_current_user() else self.user
        return MultiuserArtifacts(self.task_run, list(self.payload.artifacts), user, self.staging)

    async def cleanup(self) -> None:
        if self.user is not None:
            # The task log is uploaded after cleanup, as root, from its path in the task user's directory:
            # task-user processes started after the commands (an interactive shell's, open until the features
            # stopped, and what it left running) are stopped first, then the log is checked again.
            await kill_user_processes(self.user)
            await self._check_log()
        await super().cleanup()
        user, self.user = self.user, None
        staging, self.staging = self.staging, None
        if staging is not None:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        if user is not None:
            await delete_user(user, remove_files=bool(self.worker.config.cleanUpTaskDirs))


class MultiuserExecutor(NativeExecutor):
    """The native executor with generic-worker's multiuser engine semantics (see module docstring).

    :meth:`initialise` refuses to start the worker (exit 77, generic-worker's code for failing to secure its
    config) when tasks could read the worker's secrets, then removes task users a crashed worker left.
    """

    run_class = MultiuserRun
    per_task_user = True

    def parse_model(self, raw: Any) -> Any:
        return validate_multiuser_payload(raw)

    def payload_schema(self) -> dict[str, Any]:
        return multiuser_payload_json_schema()

    published_schema_file = "multiuser_posix.yml"

    async def initialise(self) -> None:
        config = self.worker.config
        if os.geteuid() != 0:
            raise ExecutorInitError(
                'Config setting "nativeEngine" is "multiuser", which creates an OS user per task: the worker '
                "must run as root",
                77,
            )
        problems = await check_worker_secrets(config, self.worker.config_file)
        if problems:
            raise ExecutorInitError("multiuser engine cannot start:\n" + "\n".join(problems), 77)
        for directory in (config.cachesDir, config.downloadsDir):
            path = await asyncio.to_thread(Path(directory).absolute)
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(os.chmod, path, 0o700)
        # Task users may enter tasksDir (their task directories are below it) but never list it: a
        # directory name would tell a task its neighbours' task ids.
        tasks_dir = await asyncio.to_thread(Path(config.tasksDir).absolute)
        await asyncio.to_thread(os.chown, tasks_dir, 0, 0)
        await asyncio.to_thread(os.chmod, tasks_dir, 0o711)
        with contextlib.suppress(UserError):
            await sweep_stale_users(remove_files=bool(config.cleanUpTaskDirs))
        await super().initialise()  # the engines' common start-up: leftover task cgroups
