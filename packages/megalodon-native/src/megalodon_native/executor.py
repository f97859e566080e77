"""generic-worker's insecure posix engine: payloads run on the host as the worker's own user.

The log lines, environment, exit-code rules and error texts follow NOTES.md sections 1.5, 2 and 4, because
pools switching from generic-worker keep their tasks and the tools that read their logs.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from typing import Any

from megalodon_core.artifacts import check_artifact_name, check_artifact_path, check_expiry
from megalodon_core.contracts import Artifacts, TaskExecutor
from megalodon_core.errors import Failure, IntermittentTask, MalformedPayload
from megalodon_core.task import TaskRun
from megalodon_core.timefmt import go_duration, parse_iso

from .artifacts import NativeArtifacts
from .payload import PayloadError, payload_json_schema, validate_payload
from .process import CommandResult, TaskProcesses, memory_limit_message, run_command

#: Payload features that need a feature plugin; requesting one that is absent is malformed-payload.
_PLUGIN_FEATURES = {
    "taskcluster_proxy": "taskclusterProxy",
    "interactive": "interactive",
    "loopback_video": "loopbackVideo",
    "loopback_audio": "loopbackAudio",
}


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


class NativeExecutor(TaskExecutor):
    name = "native"
    log_style = "generic-worker"

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        #: Each run's process boundary (its cgroup): every process the task started dies with the run.
        self._processes: dict[str, TaskProcesses] = {}

    # -- validation --------------------------------------------------------------------------------------
    def write_header(self, run: TaskRun) -> None:
        meta = run.facts.get("worker_metadata", {})
        run.log.info(f"Worker Type ({self.worker.config.task_queue_id}) settings:")
        run.log.info("  " + json.dumps(meta, indent=2, sort_keys=True).replace("\n", "\n  "))
        run.log.info(f"Task ID: {run.task_id}")
        run.log.info("=== Task Starting ===")

    def validate_payload(self, run: TaskRun) -> None:
        raw = run.task.get("payload")
        if self.worker.config.disableNativePayloads:
            raise MalformedPayload("Native payloads are disabled on this worker pool (disableNativePayloads)")
        try:
            payload = self.parse_payload(raw)
        except PayloadError as exc:
            run.log.error("Task payload for this worker type must conform to the following jsonschema:")
            run.log.error(json.dumps(self.payload_schema(), indent=2))
            run.log.error("TASK FAIL since the task payload is invalid. See errors:")
            for field, message in exc.errors:
                run.log.error(f"- {field}: {message}")
            raise MalformedPayload(
                f"Validation of payload failed for task {run.task_id}: " + "; ".join(f"{f}: {m}" for f, m in exc.errors)
            ) from None
        for i, artifact in enumerate(payload.artifacts):
            check_artifact_path(artifact.path, f"artifacts.{i}.path")
            check_artifact_name(artifact.name or artifact.path, f"artifacts.{i}.name")
            if artifact.expires is not None:
                check_expiry(artifact.name or artifact.path, parse_iso(artifact.expires), run.deadline, run.expires)
        check_artifact_name(payload.logs.live, "logs.live")
        check_artifact_name(payload.logs.backing, "logs.backing")
        run.payload = payload

    def parse_payload(self, raw: Any) -> Any:
        """The engine's payload model (the multiuser engine's schema adds two feature flags)."""
        return validate_payload(raw)

    def payload_schema(self) -> dict[str, Any]:
        return payload_json_schema()

    async def command_identity(self, run: TaskRun) -> dict[str, Any]:
        """``run_command`` keyword arguments choosing who a command runs as: the worker itself here."""
        return {}

    def requested_features(self, run: TaskRun) -> list[str]:
        payload = run.payload
        names = [name for attr, name in _PLUGIN_FEATURES.items() if getattr(payload.features, attr)]
        if payload.mounts:
            names.append("mounts")
        if payload.os_groups:
            names.append("osGroups")
        return names

    def max_run_time(self, run: TaskRun) -> int:
        return int(run.payload.max_run_time)

    def log_artifact_names(self, run: TaskRun) -> tuple[str | None, str | None]:
        payload = run.payload
        if payload is None:  # invalid payload: generic-worker's defaults still apply
            return "public/logs/live.log", "public/logs/live_backing.log"
        live = payload.logs.live if payload.features.live_log else None
        backing = payload.logs.backing if payload.features.backing_log else None
        return live, backing

    # -- running -----------------------------------------------------------------------------------------
    def base_environment(self, run: TaskRun) -> dict[str, str]:
        """The insecure engine's starting point: the worker's environment minus its access token."""
        return {k: v for k, v in os.environ.items() if k != "TASKCLUSTER_ACCESS_TOKEN"}

    def environment(self, run: TaskRun) -> dict[str, str]:
        """Base environment, then payload env, then feature env, then the variables the worker forces."""
        config = self.worker.config
        env = self.base_environment(run)
        env.update(run.payload.env)
        env.update(run.env)
        env.update(
            {
                "TASK_ID": run.task_id,
                "RUN_ID": str(run.run_id),
                "TASK_WORKDIR": str(run.task_dir),
                "TASK_GROUP_ID": run.task.get("taskGroupId", ""),
                "TASKCLUSTER_ROOT_URL": config.rootURL,
            }
        )
        if config.workerLocation:
            env["TASKCLUSTER_WORKER_LOCATION"] = config.workerLocation
        if config.instanceType:
            env["TASKCLUSTER_INSTANCE_TYPE"] = config.instanceType
        return env

    async def run(self, run: TaskRun) -> None:
        env = self.environment(run)
        processes = TaskProcesses(run.task_id, run.run_id, self.worker.config)
        self._processes[run.task_id + "/" + str(run.run_id)] = processes
        await processes.create()
        started = time.monotonic()
        try:
            for i, argv in enumerate(run.payload.command):
                run.log.info(f"Executing command {i}: {shlex.join(argv)}")
                identity = await self.command_identity(run)
                result = await run_command(
                    argv,
                    cwd=run.task_dir,
                    env=env,
                    output=run.log.write,
                    abort=run.aborted,
                    started=processes.started,
                    cgroup=processes.cgroup,
                    **identity,
                )
                extra = [row for rows in run.result_rows for row in rows()]
                run.log.info(result_block(result, extra))
                run.facts["exit_code"] = "aborted" if result.aborted else result.exit_code
                if result.aborted or run.aborted.is_set():
                    return  # the abort error is already recorded and decides
                if result.system_error is not None:
                    raise Failure(result.system_error)
                if result.exit_code != 0 and await processes.hit_memory_limit():
                    run.log.error(memory_limit_message(self.worker.config))
                    raise Failure("task exceeded the per-task memory limit")
                if result.exit_code != 0:
                    if result.exit_code in run.payload.on_exit_status.retry:
                        raise IntermittentTask(
                            "task appears to have failed intermittently - exit code "
                            f"{result.exit_code} found in task payload.onExitStatus list"
                        )
                    if result.signalled is not None:
                        raise Failure(f"signal: {result.signalled}")
                    raise Failure(f"exit status {result.exit_code}")
        finally:
            await processes.kill()  # daemons the commands left: nothing outlives the commands
            run.log.info("=== Task Finished ===")
            run.log.info(f"Task Duration: {go_duration(time.monotonic() - started)}")

    def result(self, run: TaskRun) -> Artifacts:
        if run.payload is None:
            return super().result(run)
        return NativeArtifacts(run.task_dir, list(run.payload.artifacts), run.expires)

    async def cleanup(self, run: TaskRun) -> None:
        """Kill whatever the task's commands left running (its cgroup, detached daemons included) and remove it."""
        processes = self._processes.pop(run.task_id + "/" + str(run.run_id), None)
        if processes is not None:
            await processes.remove()
