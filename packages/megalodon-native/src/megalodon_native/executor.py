"""generic-worker's insecure posix engine: payloads run on the host as the worker's own user.

The log lines, environment, exit-code rules and error texts follow NOTES.md sections 1.5, 2 and 4, because
pools switching from generic-worker keep their tasks and the tools that read their logs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any, ClassVar

from megalodon_core import cgroup as cgroups
from megalodon_core.artifacts import check_artifact_name, check_expiry
from megalodon_core.contracts import Artifacts, ExecutorRun, NoArtifacts, TaskExecutor
from megalodon_core.errors import Failure, IntermittentTask, MalformedPayload
from megalodon_core.rundata import FeatureRequest, ProxyPlacement
from megalodon_core.scopes import ScopeCheck, describe
from megalodon_core.spawner import Spawner
from megalodon_core.timefmt import go_duration, parse_iso

from .artifacts import NativeArtifacts
from .payload import PayloadError, payload_json_schema, published_schema, validate_payload
from .process import CommandResult, TaskProcesses, memory_limit_message, run_command
from .proxy_interface import TaskNetwork, create_task_network, remove_task_network, sweep_orphan_networks
from .shell import NativeShellLauncher

log = logging.getLogger(__name__)

#: Payload flags naming a feature plugin; requesting one that is absent is malformed-payload.
_PLUGIN_FEATURES = {
    "taskcluster_proxy": "taskclusterProxy",
    "interactive": "interactive",
}
#: generic-worker's loopback device features: (payload flag, feature name, device kind, config key).
_LOOPBACK = (
    ("loopback_video", "loopbackVideo", "video", "enableLoopbackVideo"),
    ("loopback_audio", "loopbackAudio", "audio", "enableLoopbackAudio"),
)


#: File a task may write to add data to its chain-of-trust certificate (chain_of_trust_feature.go).
COT_ADDITIONAL = "chain-of-trust-additional-data.json"


def _rows(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"{label + ':':>33} {value}" for label, value in rows)


def result_block(result: CommandResult, extra: list[tuple[str, str]] | None = None) -> str:
    """generic-worker's per-command summary (``process.Result.String``), labels right-aligned.

    ``extra`` rows (the resource monitor's memory figures) go between Wall Time and Result, as there.
    """
    extra = extra or []
    if result.aborted:
        tail = "\n" + _rows(extra) if extra else ""
        return f"Command ABORTED after {go_duration(result.duration)}: process aborted{tail}"
    if result.system_error is not None:
        return f"System error executing command: {result.system_error}"
    rows = [
        ("Exit Code", str(result.exit_code)),
        ("User Time", go_duration(result.user_time)),
        ("Kernel Time", go_duration(result.kernel_time)),
        ("Wall Time", go_duration(result.duration)),
        *extra,
        ("Result", "SUCCEEDED" if result.succeeded else "FAILED"),
    ]
    return _rows(rows)


#: The last settings block written and its text: the same for every task of a worker, and ``json.dumps`` with
#: an indent runs the pure-Python encoder (a tenth of a millisecond per task).
_SETTINGS: list[tuple[dict[str, Any], str]] = []


def _settings_text(meta: dict[str, Any]) -> str:
    if not _SETTINGS or _SETTINGS[0][0] != meta:
        _SETTINGS[:] = [(copy.deepcopy(meta), "  " + json.dumps(meta, indent=2, sort_keys=True).replace("\n", "\n  "))]
    return _SETTINGS[0][1]


class NativeRun(ExecutorRun[Any]):
    """One generic-worker payload on the host (the insecure engine: commands run as the worker's user)."""

    executor: NativeExecutor

    def __init__(self, executor: NativeExecutor, task_run: Any) -> None:
        super().__init__(executor, task_run)
        #: The run's process boundary (its cgroup): every process the task started dies with the run.
        self.processes: TaskProcesses | None = None
        #: ``taskclusterProxyInterface: docker-bridge``: the run's own Docker network (removed at cleanup).
        self.task_network: TaskNetwork | None = None

    # -- validation --------------------------------------------------------------------------------------
    def write_header(self) -> None:
        run = self.task_run
        meta = dict(run.data.worker_metadata)
        # The engine is this executor's business, so the header says it, not the core's metadata.
        meta["megalodon"] = {
            **meta.get("megalodon", {}),
            "engine": self.worker.config.extra("nativeEngine", "insecure"),
        }
        # One write of the four messages: the same lines, each with its prefix, masked once.
        run.log.info(
            f"Worker Type ({self.worker.config.task_queue_id}) settings:\n{_settings_text(meta)}\n"
            f"Task ID: {run.task_id}\n=== Task Starting ==="
        )

    def parse_payload(self, raw: Any) -> Any:
        run = self.task_run
        if self.worker.config.disableNativePayloads:
            raise MalformedPayload("Native payloads are disabled on this worker pool (disableNativePayloads)")
        try:
            payload = self.executor.parse_model(raw)
        except PayloadError as exc:
            # generic-worker's validateJSON: its *published* schema, not this worker's pydantic model.
            run.log.error(
                "Task payload for this worker type must conform to the following jsonschema:\n"
                + published_schema(self.executor.published_schema_file)
            )
            run.log.error("TASK FAIL since the task payload is invalid. See errors:")
            for field, message in exc.errors:
                run.log.error(f"- {field}: {message}")
            raise MalformedPayload(
                f"Validation of payload failed for task {run.task_id}: " + "; ".join(f"{f}: {m}" for f, m in exc.errors)
            ) from None
        for i, artifact in enumerate(payload.artifacts):
            # Paths may be absolute or climb out (generic-worker's schema): what may be read is decided by who
            # reads it (the multiuser engine reads as the task user), see megalodon_native.artifacts.
            check_artifact_name(artifact.name or artifact.path, f"artifacts.{i}.name")
            if artifact.expires is not None:
                check_expiry(artifact.name or artifact.path, parse_iso(artifact.expires), run.deadline, run.expires)
        check_artifact_name(payload.logs.live, "logs.live")
        check_artifact_name(payload.logs.backing, "logs.backing")
        return payload

    async def command_identity(self) -> dict[str, Any]:
        """``run_command`` keyword arguments choosing who a command runs as: the worker itself here."""
        return {}

    def requested_features(self) -> list[FeatureRequest]:
        payload = self.payload
        requests = [FeatureRequest(name) for attr, name in _PLUGIN_FEATURES.items() if getattr(payload.features, attr)]
        if payload.features.live_log:
            requests.append(FeatureRequest("liveLog", required=False))
        if payload.features.resource_monitor:
            requests.append(FeatureRequest("resourceMonitor", required=False))
        if payload.mounts:
            mounts = {"mounts": list(payload.mounts), "purge_caches": list(payload.on_exit_status.purge_caches)}
            requests.append(FeatureRequest("mounts", options=mounts))
        if payload.os_groups:
            options: dict[str, Any] = {"groups": list(payload.os_groups), "join": self.executor.per_task_user}
            requests.append(FeatureRequest("osGroups", options=options))
        return requests

    def max_run_time(self) -> int:
        return int(self.payload.max_run_time)

    def log_artifact_names(self) -> tuple[str | None, str | None]:
        payload = self.payload
        live = payload.logs.live if payload.features.live_log else None
        backing = payload.logs.backing if payload.features.backing_log else None
        return live, backing

    # -- preparing ---------------------------------------------------------------------------------------
    async def check_loopback(self) -> None:
        """generic-worker's loopback features, in its order: enabled, then the scope (named as generic-worker
        names it, so a task author learns what to add), then the device, which this host never has."""
        run = self.task_run
        config = self.worker.config
        pool = config.task_queue_id
        scopes = ScopeCheck(run.scopes, self.worker.expand_scopes)
        for attr, name, kind, key in _LOOPBACK:
            if not getattr(self.payload.features, attr, False):
                continue
            if not getattr(config, key, True):
                raise MalformedPayload(
                    f'this task is attempting to use feature "{name}", but it\'s not enabled on this worker pool '
                    f"({pool})"
                )
            required = [[f"generic-worker:loopback-{kind}:{pool}"], [f"generic-worker:loopback-{kind}"]]
            if not await scopes.satisfies(required):
                raise MalformedPayload(
                    f'Feature "{name}" requires scopes:\n\n{describe(required)}\n\nbut task only has scopes:\n\n'
                    + "\n".join(f"  {s}" for s in run.scopes)
                    + "\n\nYou probably should add some scopes to your task definition."
                )
            raise MalformedPayload(
                f'feature "{name}": this worker has no loopback {kind} device (it needs a kernel module this host '
                "does not provide)"
            )

    async def prepare(self) -> None:
        run = self.task_run
        await self.check_loopback()
        if self.payload.features.taskcluster_proxy:
            run.data.proxy = await self.proxy_placement()
        run.data.chain_of_trust_additions = self.chain_of_trust_additions()
        # Shells run as the task's commands do: same directory, environment (read at each start, after the
        # features added theirs) and identity.
        run.data.interactive = NativeShellLauncher(
            run.task_dir,
            self.environment,
            self.command_identity,
            lambda: self.processes.cgroup if self.processes is not None else None,
        )

    async def proxy_placement(self) -> ProxyPlacement:
        """generic-worker's ``taskclusterProxyInterface``: loopback, or the gateway of a Docker network of the
        run's own (so containers the task starts on it reach the proxy, and no neighbour's container does);
        the configured port first, the next free one otherwise."""
        port = int(self.worker.config.taskclusterProxyPort)
        if self.payload.taskcluster_proxy_interface != "docker-bridge":
            return ProxyPlacement(host="127.0.0.1", port=port)
        run = self.task_run
        await self.executor.sweep_task_networks_once()
        self.task_network = await create_task_network(run.task_id, run.run_id)
        return ProxyPlacement(host=self.task_network.gateway, port=port)

    def chain_of_trust_additions(self) -> Path | None:
        """The insecure engine's task runs as the worker's user: reading its additions as the worker reads
        exactly what the task could."""
        return self.task_run.task_dir / COT_ADDITIONAL

    # -- running -----------------------------------------------------------------------------------------
    def base_environment(self) -> dict[str, str]:
        """The insecure engine's starting point: the worker's environment minus its access token."""
        return self.executor.worker_environment()

    def environment(self) -> dict[str, str]:
        """Base environment, then payload env, then feature env, then the variables the worker forces."""
        run = self.task_run
        config = self.worker.config
        env = self.base_environment()
        env.update(self.payload.env)
        env.update(run.data.env)
        env.update(
            {
                "TASK_ID": run.task_id,
                "RUN_ID": str(run.run_id),
                "TASK_WORKDIR": str(run.task_dir),
                "TASK_GROUP_ID": run.task.get("taskGroupId", ""),
                "TASKCLUSTER_ROOT_URL": config.rootURL,
            }
        )
        if self.task_network is not None:  # generic-worker's variables for `docker run --network ...`
            env["TASKCLUSTER_DOCKER_NETWORK"] = self.task_network.name
            env["TASKCLUSTER_PROXY_GATEWAY"] = self.task_network.gateway
        if config.workerLocation:
            env["TASKCLUSTER_WORKER_LOCATION"] = config.workerLocation
        if config.instanceType:
            env["TASKCLUSTER_INSTANCE_TYPE"] = config.instanceType
        return env

    async def run(self) -> None:
        run = self.task_run
        payload = self.payload
        env = self.environment()
        processes = self.processes = TaskProcesses(
            run.task_id, run.run_id, self.worker.config, shells=payload.features.interactive
        )
        await processes.create()
        started = time.monotonic()
        try:
            for i, argv in enumerate(payload.command):
                run.log.info(f"Executing command {i}: {shlex.join(argv)}")
                identity = await self.command_identity()
                result = await run_command(
                    argv,
                    cwd=run.task_dir,
                    env=env,
                    output=run.log.write,
                    abort=run.aborted,
                    started=processes.started,
                    cgroup=processes.cgroup,
                    spawner=self.executor.spawner,
                    **identity,
                )
                extra = [row for rows in run.result_rows for row in rows()]
                run.log.info(result_block(result, extra))
                run.data.exit_code = None if result.aborted else result.exit_code
                if result.aborted or run.aborted.is_set():
                    return  # the abort error is already recorded and decides
                if result.system_error is not None:
                    raise Failure(result.system_error)
                if result.exit_code != 0 and await processes.hit_memory_limit():
                    run.log.error(memory_limit_message(self.worker.config))
                    raise Failure("task exceeded the per-task memory limit")
                if result.exit_code != 0:
                    if result.exit_code in payload.on_exit_status.retry:
                        raise IntermittentTask(
                            "task appears to have failed intermittently - exit code "
                            f"{result.exit_code} found in task payload.onExitStatus list"
                        )
                    if result.signalled is not None:
                        raise Failure(f"signal: {result.signalled}")
                    raise Failure(f"exit status {result.exit_code}")
        finally:
            await processes.kill()  # daemons the commands left: nothing outlives the commands
            run.log.info(f"=== Task Finished ===\nTask Duration: {go_duration(time.monotonic() - started)}")

    def artifacts(self) -> Artifacts:
        if not self.parsed:  # malformed payload: nothing ran
            return NoArtifacts()
        run = self.task_run
        return NativeArtifacts(run.task_dir, list(self.payload.artifacts), run.expires)

    async def cleanup(self) -> None:
        """Kill whatever the task's commands left running (its cgroup, detached daemons included) and remove it."""
        if self.processes is not None:
            await self.processes.remove()
        network, self.task_network = self.task_network, None
        if network is not None:  # after the features stopped: the proxy no longer listens on its gateway
            await remove_task_network(network.name)


class NativeExecutor(TaskExecutor):
    """generic-worker's insecure engine: no worker-lifetime state beyond the payload model it parses."""

    name = "native"
    run_class: ClassVar[type[ExecutorRun[Any]]] = NativeRun
    #: Whether each task runs as an OS account of its own (the multiuser engine), which features like
    #: osGroups may change for the task.
    per_task_user: ClassVar[bool] = False

    #: The sweep of networks killed workers left (docker-bridge), once per worker, before its first such run:
    #: a worker that never runs one never calls the engine.
    _network_sweep: asyncio.Future[list[str]] | None = None

    async def sweep_task_networks_once(self) -> None:
        if self._network_sweep is None:
            self._network_sweep = asyncio.ensure_future(sweep_orphan_networks())
        await asyncio.shield(self._network_sweep)

    #: Forks the task commands (megalodon_core.spawner): started by the first command, ended by close().
    spawner: Spawner

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        self.spawner = Spawner()
        self._worker_env: dict[str, str] | None = None

    def worker_environment(self) -> dict[str, str]:
        """The worker's environment minus its access token (a copy), as at the first task.

        Read once: nothing in the worker changes its own environment while it runs, and reading
        ``os.environ`` decodes every variable again, a few hundred calls on every task (issue 13).
        """
        if self._worker_env is None:
            self._worker_env = {k: v for k, v in os.environ.items() if k != "TASKCLUSTER_ACCESS_TOKEN"}
        return dict(self._worker_env)

    async def close(self) -> None:
        """Worker stop: end the spawner process (every task's processes were killed before)."""
        await self.spawner.close()

    async def initialise(self) -> None:
        """Worker start: remove the empty task cgroups that workers killed without a later recovery run left."""
        removed = await asyncio.to_thread(cgroups.sweep_orphan_cgroups)
        if removed:
            log.info("removed %d leftover task cgroup(s) of no live worker", len(removed))

    def parse_model(self, raw: Any) -> Any:
        """The engine's payload model (the multiuser engine's schema adds two feature flags)."""
        return validate_payload(raw)

    def payload_schema(self) -> dict[str, Any]:
        return payload_json_schema()

    #: generic-worker's published schema for this engine (package data), shown for a malformed payload.
    published_schema_file: ClassVar[str] = "insecure_posix.yml"
