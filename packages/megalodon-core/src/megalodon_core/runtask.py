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
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import taskcluster.aio
import taskcluster.aio.download
from taskcluster.exceptions import TaskclusterArtifactError, TaskclusterFailure, TaskclusterRestFailure

from .artifacts import check_artifact_name
from .config import parse_config
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


#: ``run-task``'s exit code when the queue refuses the task definition (no run ever existed).
EXIT_TASK_REJECTED = 3
#: Lines of the task log shown under the summary of a run that did not complete.
LOG_TAIL_LINES = 20
#: Where ``run-task`` writes the public half of an ephemeral chain-of-trust key, next to the artifacts.
PUBLIC_KEY_FILE = "chain-of-trust-ed25519-public-key.txt"


class TaskRejected(Exception):
    """The queue refused to create the task (its definition is invalid); the message is the queue's."""


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
    #: The run the worker ran (the queue may have scheduled a retry after it).
    run_id: int = 0
    #: The run the queue scheduled after it (a retry), if any.
    next_run_id: int | None = None
    #: The base64 public key of the ephemeral chain-of-trust key made for this run, if one was.
    public_key: str | None = None
    public_key_path: str | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "failed": 1}.get(self.state, 2)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "taskId": self.task_id,
            "runId": self.run_id,
            "state": self.state,
            "reasonResolved": self.reason,
            "duration": round(self.duration, 3),
            "outDir": str(self.out_dir),
            "log": self.log_path,
            "artifacts": [a.as_json() for a in self.artifacts],
        }
        if self.next_run_id is not None:
            out["retryRunId"] = self.next_run_id
        if self.public_key is not None:
            out["chainOfTrustPublicKey"] = self.public_key
            out["chainOfTrustPublicKeyFile"] = self.public_key_path
        return out


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


def requests_chain_of_trust(task: dict[str, Any]) -> bool:
    payload = task.get("payload")
    features = payload.get("features") if isinstance(payload, dict) else None
    return isinstance(features, dict) and features.get("chainOfTrust") is True


def make_ephemeral_key(plugins: PluginHost, path: Path) -> str | None:
    """Create a signing key at ``path`` with the ``new-ed25519-keypair`` command a plugin provides (the core
    has no ed25519 code of its own); its base64 public key, or None when no installed plugin provides it."""
    command = next((c for c in plugins.commands() if c.name == "new-ed25519-keypair"), None)
    if command is None:
        return None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        command.load()(file=path)
    return printed.getvalue().strip() or None


def _tail(path: Path, lines: int) -> list[str]:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64 * 1024))
        data = fh.read()
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def _worked_run(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], int | None]:
    """The last run a worker resolved, and the run the queue scheduled after it (a retry), if any."""
    worked = [r for r in runs if r.get("state") not in ("pending", "running", None)]
    run = worked[-1] if worked else (runs[-1] if runs else {})
    later = [r for r in runs if int(r.get("runId", -1)) > int(run.get("runId", 0))]
    return run, (int(later[0]["runId"]) if later else None)


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
                # Any free port: a worker on this machine (or another run-task) may hold generic-worker's.
                "interactivePort": 0,
            }
            if worker_creds.get("certificate"):
                raw_config["certificate"] = worker_creds["certificate"]
            overrides = config_overrides or {}
            public_key: str | None = None
            wants_key = overrides.get("enableChainOfTrust", True) is not False
            if requests_chain_of_trust(task) and wants_key and not overrides.get("ed25519SigningKeyLocation"):
                # run-task shows what the task does on a real pool: sign with a key made for this run only.
                key_path = Path(tmp) / "ed25519-signing-key"
                public_key = await asyncio.to_thread(make_ephemeral_key, plugins, key_path)
                if public_key is not None:
                    raw_config["enableChainOfTrust"] = True
                    raw_config["ed25519SigningKeyLocation"] = str(key_path)
            raw_config.update(overrides)
            config = parse_config(raw_config, plugins.config_fields())
            async with aiohttp.ClientSession() as session:
                root = taskcluster.aio.Queue(
                    {"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session
                )
                task_id = taskcluster.slugId()
                try:
                    await root.createTask(task_id, task)
                except TaskclusterRestFailure as exc:
                    raise TaskRejected(_queue_message(exc)) from None
                worker = Worker(config, plugins)
                exit_code = await worker.run()
                status = (await root.status(task_id))["status"]
                run, next_run_id = _worked_run(status.get("runs", []))
                run_id = int(run.get("runId", 0))
                state = run.get("state", status.get("state", "unknown"))
                reason = run.get("reasonResolved", state)
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
        run_id=run_id,
        next_run_id=next_run_id,
    )
    if public_key is not None:
        key_file = out_dir / PUBLIC_KEY_FILE
        await asyncio.to_thread(key_file.write_text, public_key + "\n")
        result.public_key, result.public_key_path = public_key, str(key_file)
    if log_path and state != "completed":
        result.log_tail = await asyncio.to_thread(_tail, Path(log_path), LOG_TAIL_LINES)
    (out_dir / "summary.json").write_text(json.dumps(result.as_json(), indent=2) + "\n")
    return result


def _queue_message(exc: TaskclusterRestFailure) -> str:
    """The queue's own explanation (its ``message``), without the request dump the client appends."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc)
    return message.split("\n---\n", maxsplit=1)[0].strip()
