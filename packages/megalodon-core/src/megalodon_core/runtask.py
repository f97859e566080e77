"""``megalodon run-task``: one task, end to end, on the embedded Taskcluster double.

Nothing is short-circuited: the double is started on loopback, the task is created with the real client,
an unmodified worker claims it over HTTP, runs it, uploads its log and artifacts and reports it; then the
artifacts are downloaded back through the queue, as any consumer would, into
``./megalodon-out/<taskId>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import taskcluster.aio
import taskcluster.aio.download
from taskcluster.exceptions import TaskclusterArtifactError, TaskclusterFailure

from .artifacts import check_artifact_name
from .config import ConfigError, parse_config
from .errors import MalformedPayload
from .plugins import PluginHost
from .taskfile import load_task_file
from .timefmt import iso, utcnow
from .worker import Worker

log = logging.getLogger(__name__)

PROVISIONER = "megalodon"
WORKER_TYPE = "run-task"


@dataclass
class ArtifactSummary:
    name: str
    storage_type: str
    content_type: str
    path: str | None = None
    url: str | None = None
    reason: str | None = None
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "storageType": self.storage_type,
            "contentType": self.content_type,
        }
        out["path"] = self.path
        for key in ("url", "reason", "message"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass
class RunTaskResult:
    task_id: str
    state: str
    reason: str
    duration: float
    out_dir: Path
    log_path: str | None
    worker_exit_code: int
    artifacts: list[ArtifactSummary] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "failed": 1}.get(self.state, 2)

    def as_json(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "state": self.state,
            "reasonResolved": self.reason,
            "duration": round(self.duration, 3),
            "outDir": str(self.out_dir),
            "log": self.log_path,
            "artifacts": [a.as_json() for a in self.artifacts],
        }


def task_definition(data: dict[str, Any], task_queue_id: str) -> dict[str, Any]:
    """Fill in what a bare payload or a partial definition lacks, as a decision task would."""
    task: dict[str, Any] = dict(data) if "payload" in data else {"payload": data}
    now = utcnow()
    task.pop("taskQueueId", None)
    task.pop("provisionerId", None)
    task.pop("workerType", None)
    task["taskQueueId"] = task_queue_id
    task.setdefault("created", iso(now))
    task.setdefault("deadline", iso(now + dt.timedelta(days=1)))
    task.setdefault("expires", iso(now + dt.timedelta(days=30)))
    task.setdefault("scopes", [])
    task.setdefault(
        "metadata",
        {
            "name": "megalodon run-task",
            "description": "a task run locally by megalodon run-task",
            "owner": "megalodon@example.com",
            "source": "https://github.com/taskcluster/taskcluster",
        },
    )
    # Values from YAML may be dates already; the queue wants strings.
    for key in ("created", "deadline", "expires"):
        if isinstance(task[key], dt.datetime):
            task[key] = iso(task[key])
    return task


async def _download(queue: Any, task_id: str, run_id: int, artifact: dict[str, Any], out_dir: Path) -> ArtifactSummary:
    name = artifact["name"]
    summary = ArtifactSummary(name, artifact["storageType"], artifact.get("contentType", ""))
    if summary.storage_type == "error":
        content = await queue.artifact(task_id, str(run_id), name)
        summary.reason, summary.message = content.get("reason"), content.get("message")
        return summary
    if summary.storage_type == "reference":
        content = await queue.artifact(task_id, str(run_id), name)
        summary.url = content.get("url")
        return summary
    try:
        check_artifact_name(name, "artifact")
    except MalformedPayload:
        summary.message = "not written locally: the name would escape the output directory"
        return summary
    target = out_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fh = await asyncio.to_thread(target.open, "wb")
    try:
        # run-task is a command-line tool, not the worker: the helper's small synchronous writes are fine here.
        await taskcluster.aio.download.downloadArtifactToFile(
            file=fh, taskId=task_id, runId=run_id, name=name, queueService=queue
        )
    except TaskclusterArtifactError as exc:
        summary.message = str(exc)
    finally:
        await asyncio.to_thread(fh.close)
    summary.path = str(target)
    return summary


async def run_task(
    task_file: Path,
    *,
    out_root: Path,
    plugins: PluginHost,
    config_overrides: dict[str, Any] | None = None,
) -> RunTaskResult:
    from .double import PUBLIC_ARTIFACTS, TaskclusterDouble

    data = load_task_file(task_file)
    started = asyncio.get_running_loop().time()
    async with TaskclusterDouble(claim_work_wait=2.0, anonymous_scopes=PUBLIC_ARTIFACTS) as double:
        task_queue_id = f"{PROVISIONER}/{WORKER_TYPE}"
        task = task_definition(data, task_queue_id)
        worker_creds = double.worker_credentials(PROVISIONER, WORKER_TYPE, "local", "run-task")
        with tempfile.TemporaryDirectory(prefix="megalodon-run-task-") as tmp:
            raw_config: dict[str, Any] = {
                "rootURL": double.root_url,
                "clientId": worker_creds["clientId"],
                "accessToken": worker_creds["accessToken"],
                "provisionerId": PROVISIONER,
                "workerType": WORKER_TYPE,
                "workerGroup": "local",
                "workerId": "run-task",
                "tasksDir": str(Path(tmp) / "tasks"),
                "stateDir": str(Path(tmp) / "state"),
                "requiredDiskSpaceMegabytes": 16,
                "cachesDir": str(Path(tmp) / "caches"),
                "downloadsDir": str(Path(tmp) / "downloads"),
                "numberOfTasksToRun": 1,
                # No signing key exists for a local run; --config can enable it with one.
                "enableChainOfTrust": False,
            }
            if worker_creds.get("certificate"):
                raw_config["certificate"] = worker_creds["certificate"]
            raw_config.update(config_overrides or {})
            try:
                config = parse_config(raw_config, plugins.config_fields())
            except ConfigError:
                raise
            async with aiohttp.ClientSession() as session:
                root = taskcluster.aio.Queue(
                    {"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session
                )
                task_id = taskcluster.slugId()
                await root.createTask(task_id, task)
                worker = Worker(config, plugins)
                exit_code = await worker.run()
                status = (await root.status(task_id))["status"]
                runs = status.get("runs", [])
                last = runs[-1] if runs else {}
                run_id = int(last.get("runId", 0))
                state = last.get("state", status.get("state", "unknown"))
                reason = last.get("reasonResolved", state)
                out_dir = out_root / task_id
                out_dir.mkdir(parents=True, exist_ok=True)
                summaries: list[ArtifactSummary] = []
                with contextlib.suppress(TaskclusterFailure):
                    listing = await root.listArtifacts(task_id, str(run_id))
                    for artifact in listing.get("artifacts", []):
                        summaries.append(await _download(root, task_id, run_id, artifact, out_dir))
    log_path = next((a.path for a in summaries if a.name.endswith("live_backing.log") and a.path), None)
    result = RunTaskResult(
        task_id=task_id,
        state=state,
        reason=reason,
        duration=asyncio.get_running_loop().time() - started,
        out_dir=out_dir,
        log_path=log_path,
        worker_exit_code=exit_code,
        artifacts=sorted(summaries, key=lambda a: a.name),
    )
    (out_dir / "summary.json").write_text(json.dumps(result.as_json(), indent=2) + "\n")
    return result
