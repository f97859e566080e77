"""The ``script`` executor: one task run = one ``/bin/sh -c SCRIPT`` (config ``scriptShell``) in the task dir.

Everything megalodon needs from an executor, and nothing more: the worker-lifetime half
(:class:`ScriptExecutor`) checks the shell once at start; the per-run half (:class:`ScriptRun`) parses the
payload, names the features the payload requests, tells them where the task reaches a proxy (typed run
data), runs the script with the core's process helper (output into the task log, the task's cgroup or
process group killed on abort) and lists the artifacts.  The pipeline does the rest: maxRunTime,
cancellation, feature start/stop, uploads, resolution.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from megalodon_core.cgroup import CgroupError, TaskCgroup, task_cgroup_name
from megalodon_core.cgroup import host as cgroup_host
from megalodon_core.contracts import Artifacts, ExecutorRun, ExecutorUnavailable, TaskExecutor
from megalodon_core.errors import Failure, MalformedPayload
from megalodon_core.process import kill_group, run_command
from megalodon_core.rundata import FeatureRequest, ProxyPlacement

from .artifacts import ScriptArtifacts
from .payload import PayloadError, ScriptPayload, validate_payload

log = logging.getLogger(__name__)

#: Variables of the worker's own environment a script gets (everything else, credentials included, stays).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


class ScriptRun(ExecutorRun[ScriptPayload]):
    """One run of a ``script`` payload; its state (the cgroup) lives here, not in a table on the executor."""

    def __init__(self, executor: TaskExecutor, task_run: Any) -> None:
        super().__init__(executor, task_run)
        self.cgroup: TaskCgroup | None = None
        #: The script's process group, killed at cleanup too (the only boundary without cgroups).
        self.groups: set[int] = set()

    def write_header(self) -> None:
        self.task_run.log.info(f"Task ID: {self.task_run.task_id}")
        self.task_run.log.info(f"Executor: script ({self.worker.config.task_queue_id})")

    def parse_payload(self, raw: Any) -> ScriptPayload:
        try:
            return validate_payload(raw)
        except PayloadError as exc:
            for field, message in exc.errors:
                self.task_run.log.error(f"payload.{field}: {message}")
            raise MalformedPayload("invalid script payload: " + "; ".join(f"{f}: {m}" for f, m in exc.errors)) from None

    def requested_features(self) -> list[FeatureRequest]:
        # Features by name only: this executor knows none of them.  An explicit ``true`` is required (a
        # missing or disabled feature is malformed-payload); the live log is on unless turned off, and
        # silently absent when no plugin provides it (as generic-worker's).
        requests = [FeatureRequest(name) for name, on in self.payload.features.items() if on]
        if "liveLog" not in self.payload.features:
            requests.append(FeatureRequest("liveLog", required=False))
        return requests

    def max_run_time(self) -> int:
        return self.payload.maxRunTime

    async def prepare(self) -> None:
        # The script runs on the host: a proxy on loopback, on a port the kernel picks, reaches it.
        self.task_run.data.proxy = ProxyPlacement(host="127.0.0.1", port=0)
        cgroups = cgroup_host()
        if cgroups is not None:
            name = task_cgroup_name(self.task_run.task_id, self.task_run.run_id)
            try:
                self.cgroup = await asyncio.to_thread(cgroups.create, name)
            except CgroupError as exc:
                log.warning("no cgroup for %s: %s; killing by process group only", name, exc)

    def environment(self) -> dict[str, str]:
        run = self.task_run
        env = {k: os.environ[k] for k in INHERITED if k in os.environ}
        env.update(self.payload.env)
        env.update(run.data.env)  # what features add: TASKCLUSTER_PROXY_URL...
        env.update({"TASK_ID": run.task_id, "RUN_ID": str(run.run_id), "TASK_WORKDIR": str(run.task_dir)})
        env["TASKCLUSTER_ROOT_URL"] = self.worker.config.rootURL
        return env

    async def run(self) -> None:
        run = self.task_run
        shell = shell_of(self.worker.config)
        run.log.info(f"Running script with {shell}")
        result = await run_command(
            [shell, "-c", self.payload.script],
            cwd=run.task_dir,
            env=self.environment(),
            output=run.log.write,
            abort=run.aborted,
            cgroup=self.cgroup,
            started=self.groups.add,
        )
        if result.aborted or run.aborted.is_set():
            return  # the abort's error (maxRunTime, cancellation) is recorded and decides
        run.data.exit_code = result.exit_code
        run.log.info(f"Exit code: {result.exit_code}")
        if result.system_error is not None:
            raise Failure(result.system_error)
        if result.exit_code != 0:
            raise Failure(f"exit status {result.exit_code}")

    def artifacts(self) -> Artifacts:
        payload = getattr(self, "payload", None)  # unset when the payload was malformed
        run = self.task_run
        return ScriptArtifacts(run.task_dir, payload.artifacts if payload else [], run.expires)

    async def cleanup(self) -> None:
        # Whatever the script left running in the background dies with the run.
        for pgid in self.groups:
            kill_group(pgid)
        if self.cgroup is not None:
            try:
                await asyncio.to_thread(self.cgroup.remove)  # kills what is left (setsid daemons too), then rmdir
            except CgroupError as exc:
                log.warning("cgroup of %s/%s: %s", self.task_run.task_id, self.task_run.run_id, exc)


class ScriptExecutor(TaskExecutor):
    """The worker-lifetime half: one start-up check; no state kept across runs."""

    name = "script"
    run_class = ScriptRun

    async def initialise(self) -> None:
        # A shell that cannot run would fail every task.  Unavailable, not a plain init error: a worker
        # configured for this executor stops (exit 69, naming the key); an ``auto`` worker that also has
        # other executors runs without this one.
        shell = shell_of(self.worker.config)
        if not await asyncio.to_thread(lambda: os.path.isfile(shell) and os.access(shell, os.X_OK)):
            raise ExecutorUnavailable(f"config scriptShell: {shell} is not an executable file")


def shell_of(config: Any) -> str:
    return str(config.extra("scriptShell", "/bin/sh"))
