"""Worker plumbing: lifecycle hooks reach plugins, storage faults are survived, the double runs standalone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import taskcluster
import taskcluster.aio

import megalodon_core
from megalodon_core.config import parse_config
from megalodon_core.double import Fault
from megalodon_core.plugins import PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @megalodon_core.hookimpl
    def megalodon_task_claimed(self, task_id: str, run_id: int, task: dict[str, Any]) -> None:
        self.events.append(("claimed", (task_id, run_id, task["payload"]["maxRunTime"])))

    @megalodon_core.hookimpl
    def megalodon_task_started(self, task_id: str, run_id: int, executor: str) -> None:
        self.events.append(("started", (task_id, run_id, executor)))

    @megalodon_core.hookimpl
    def megalodon_task_resolved(self, task_id: str, run_id: int, state: str, reason: str) -> None:
        self.events.append(("resolved", (task_id, run_id, state, reason)))


async def test_lifecycle_hooks_reach_plugins(harness: Harness) -> None:
    recorder = Recorder()
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["true"]], "maxRunTime": 11}, worker_type)
    worker = Worker(parse_config(harness.config(worker_type)), PluginHost(plugins=[recorder]))
    assert await worker.run() == 0
    assert recorder.events == [
        ("claimed", (task_id, 0, 11)),
        ("started", (task_id, 0, "native")),
        ("resolved", (task_id, 0, "completed", "completed")),
    ]


async def test_storage_faults_are_retried(harness: Harness) -> None:
    harness.double.faults.add(Fault(method="putUrl-storage", status=500, times=2))
    harness.double.faults.add(Fault(method="putUrl-storage", reset=True, times=1))
    payload = {
        "command": [["/bin/sh", "-c", "echo data > a.txt"]],
        "maxRunTime": 30,
        "artifacts": [{"type": "file", "path": "a.txt", "name": "public/a.txt"}],
    }
    out = await harness.run(payload)
    assert out.state == "completed", out.log
    assert harness.double.calls["putUrl-storage"] >= 4
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/a.txt")
    assert data == b"data\n"


async def test_persistent_upload_failure_is_resource_unavailable(harness: Harness) -> None:
    harness.double.faults.add(Fault(method="putUrl-storage", status=500, times=-1))
    payload = {
        "command": [["/bin/sh", "-c", "echo data > a.txt"]],
        "maxRunTime": 30,
        "artifacts": [{"type": "file", "path": "a.txt", "name": "public/a.txt"}],
    }
    out = await harness.run(payload)
    assert (out.state, out.reason) == ("exception", "resource-unavailable")


def test_tc_double_runs_standalone_and_answers_hawk(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "megalodon_core", "tc-double"], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["rootUrl"].startswith("http://127.0.0.1:")
        queue = taskcluster.Queue({"rootUrl": info["rootUrl"], "credentials": info["credentials"]})
        task_id = taskcluster.slugId()
        queue.createTask(
            task_id,
            {
                "taskQueueId": "standalone/test",
                "created": taskcluster.stringDate(taskcluster.fromNow("0 seconds")),
                "deadline": taskcluster.stringDate(taskcluster.fromNow("1 hour")),
                "payload": {},
                "metadata": {"name": "n", "description": "d", "owner": "o@example.com", "source": "https://x.org/"},
            },
        )
        assert queue.status(task_id)["status"]["state"] == "pending"
        bad = taskcluster.Queue(
            {
                "rootUrl": info["rootUrl"],
                "credentials": {"clientId": info["credentials"]["clientId"], "accessToken": "wrong"},
            }
        )
        try:
            bad.status(task_id)
        except taskcluster.exceptions.TaskclusterAuthFailure as exc:
            assert exc.status_code == 401
        else:
            raise AssertionError("a wrong access token was accepted")
    finally:
        proc.terminate()
        proc.wait(10)
