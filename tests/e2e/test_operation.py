"""Production operation: capacity, crash recovery, persisted task count, idle timeout, disk gate, status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import megalodon_core
from megalodon_core.config import parse_config
from megalodon_core.contracts import Feature, FeatureInfo, TaskFeature
from megalodon_core.double import TaskclusterDouble
from megalodon_core.plugins import PluginHost
from megalodon_core.task import TaskRun
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker, running_task_ids

from ..helpers.procs import MEGALODON, create_task, sh, wait_for, write_worker_config
from ..helpers.runner import RecordingRunner


async def test_capacity_four_runs_tasks_concurrently_and_a_slow_one_blocks_nobody(
    harness: Harness, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_type = harness.worker_type()
    slow = await harness.create(
        {"command": [sh(f"sleep 4; date +%s.%N > {marks}/slow")], "maxRunTime": 30}, worker_type
    )
    quick = [
        await harness.create(
            {"command": [sh(f'echo "$TASK_WORKDIR" > {marks}/q{i}; sleep 0.5')], "maxRunTime": 30}, worker_type
        )
        for i in range(5)
    ]
    worker = Worker(parse_config(harness.config(worker_type, capacity=4, numberOfTasksToRun=6)), PluginHost())
    started = time.monotonic()
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: all((marks / f"q{i}").exists() for i in range(5)), 30)
    quick_done = time.monotonic() - started
    assert not (marks / "slow").exists(), "the quick tasks waited for the slow one"
    assert await asyncio.wait_for(run, 60) == 0
    assert quick_done < 4
    workdirs = {(marks / f"q{i}").read_text() for i in range(5)}
    assert len(workdirs) == 5, "tasks shared a task directory"
    for task_id in [slow, *quick]:
        assert harness.double.task_state(task_id)["runs"][0]["state"] == "completed"


async def test_kill_9_then_restart_resolves_worker_shutdown_not_claim_expired(
    double: TaskclusterDouble, tmp_path: Path
) -> None:
    cfg = write_worker_config(double, tmp_path, "crash", idleTimeoutSecs=2)
    marker = tmp_path / "still-running"
    script = f"while true; do date > {marker}; sleep 0.2; done"
    task_id = await create_task(double, {"command": [sh(script)], "maxRunTime": 300}, "crash", retries=0)
    proc = await asyncio.create_subprocess_exec(*MEGALODON, "run", "--config", str(cfg), cwd=tmp_path)
    await wait_for(marker.exists, 30)
    assert running_task_ids(tmp_path / "state") == [task_id]
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert double.task_state(task_id)["runs"][0]["state"] == "running"
    # The task's processes survive their worker (own session): the restart must kill them.
    before = marker.stat().st_mtime
    await asyncio.sleep(0.5)
    assert marker.stat().st_mtime > before
    proc = await asyncio.create_subprocess_exec(*MEGALODON, "run", "--config", str(cfg), cwd=tmp_path)
    assert await asyncio.wait_for(proc.wait(), 60) == 68  # recovered, then idle
    run0 = double.task_state(task_id)["runs"][0]
    assert (run0["state"], run0["reasonResolved"]) == ("exception", "worker-shutdown")
    assert len(double.task_state(task_id)["runs"]) == 1  # retries 0, so the restart has nothing to claim
    settled = marker.stat().st_mtime
    await asyncio.sleep(0.6)
    assert marker.stat().st_mtime == settled, "the lost run's processes were not killed"
    assert not any((tmp_path / "tasks").glob("task_*")), "the lost run's directory was left behind"
    assert not any((tmp_path / "state" / "megalodon-claims").iterdir())


async def test_number_of_tasks_to_run_is_persisted_across_restarts(harness: Harness) -> None:
    worker_type = harness.worker_type()
    for _ in range(3):
        await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    config = harness.config(worker_type, numberOfTasksToRun=2)
    assert await Worker(parse_config({**config, "numberOfTasksToRun": 1}), PluginHost()).run() == 0
    state = Path(config["stateDir"])
    assert (state / "tasks-resolved-count.txt").read_text().strip() == "1"
    # The count survives: with numberOfTasksToRun 2, one more task and the worker is done.
    assert await Worker(parse_config(config), PluginHost()).run() == 0
    assert (state / "tasks-resolved-count.txt").read_text().strip() == "2"
    assert json.loads((state / "generic-worker-metadata.json").read_text())["lastTaskUrl"].startswith(
        harness.double.root_url + "/tasks/"
    )


async def test_idle_timeout_exits_68(harness: Harness) -> None:
    worker_type = harness.worker_type()
    worker = Worker(parse_config(harness.config(worker_type, idleTimeoutSecs=1, numberOfTasksToRun=0)), PluginHost())
    started = time.monotonic()
    assert await asyncio.wait_for(worker.run(), 30) == 68
    assert time.monotonic() - started < 10


class _DiskKeeper(Feature):
    name = "diskKeeper"
    calls = 0

    def is_requested(self, run: TaskRun) -> bool:
        return False

    def new_task_feature(self, run: TaskRun) -> TaskFeature:  # pragma: no cover - never requested
        raise AssertionError

    async def free_disk_space(self) -> None:
        type(self).calls += 1


class _DiskKeeperPlugin:
    @megalodon_core.hookimpl
    def megalodon_register_features(self) -> list[FeatureInfo]:
        return [FeatureInfo(name="diskKeeper", factory=_DiskKeeper, summary="test")]


async def test_short_disk_evicts_then_never_claims(harness: Harness) -> None:
    worker_type = harness.worker_type()
    task_id = await harness.create({"command": [["true"]], "maxRunTime": 30}, worker_type)
    config = harness.config(worker_type, requiredDiskSpaceMegabytes=1 << 40, idleTimeoutSecs=2)
    _DiskKeeper.calls = 0
    host = PluginHost(plugins=[_DiskKeeperPlugin()])
    assert await asyncio.wait_for(Worker(parse_config(config), host).run(), 30) == 68
    assert _DiskKeeper.calls >= 1, "the worker did not ask features to free disk space first"
    assert harness.double.task_state(task_id)["runs"][0]["state"] == "pending", "claimed a task it could not run"
    assert harness.double.calls["claimWork"] == 0


async def test_worker_manager_terminate_exits_70_and_asks_runner_to_shut_down(harness: Harness) -> None:
    worker_type = harness.worker_type()
    runner = RecordingRunner(capable_of_everything=True)
    worker = Worker(parse_config(harness.config(worker_type, numberOfTasksToRun=0)), PluginHost(), runner=runner)
    harness.double.worker_manager.set_should_terminate(
        f"megalodon-test/{worker_type}", "test-group", harness.worker_id, True
    )
    assert await asyncio.wait_for(worker.run(), 30) == 70
    assert runner.shutdowns == 1


async def test_idle_with_runner_only_exits_when_worker_manager_agrees(harness: Harness) -> None:
    worker_type = harness.worker_type()
    runner = RecordingRunner(capable_of_everything=True)
    config = harness.config(worker_type, numberOfTasksToRun=0, idleTimeoutSecs=1, shutdownMachineOnIdle=True)
    worker = Worker(parse_config(config), PluginHost(), runner=runner)
    run = asyncio.create_task(worker.run())
    await asyncio.sleep(3)
    assert not run.done(), "exited on idle although worker-manager wants the worker kept"
    harness.double.worker_manager.set_should_terminate(
        f"megalodon-test/{worker_type}", "test-group", harness.worker_id, True
    )
    code = await asyncio.wait_for(run, 30)
    assert code in (68, 70)
    assert runner.shutdowns == 1


def test_status_command_reports_running_tasks(tmp_path: Path) -> None:
    import subprocess

    state = tmp_path / "state"
    state.mkdir()
    proc = subprocess.run(
        [*MEGALODON, "status", "--state-dir", str(state)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"currentTaskIds": []}
    (state / "worker-status.json").write_text(json.dumps({"currentTaskIds": ["abc"]}))
    proc = subprocess.run(
        [*MEGALODON, "status", "--state-dir", str(state)], capture_output=True, text=True, check=False
    )
    assert json.loads(proc.stdout) == {"currentTaskIds": ["abc"]}


def test_complete_generic_worker_config_is_accepted_with_warnings(tmp_path: Path) -> None:
    import subprocess

    full = {
        "accessToken": "t", "allowedHighMemoryDurationSecs": 5, "availabilityZone": "", "cachesDir": "caches",
        "capacity": 1, "certificate": "", "cleanUpTaskDirs": True, "clientId": "c", "createObjectArtifacts": False,
        "d2gConfig": {"enableD2G": False}, "disableNativePayloads": False, "disableOOMProtection": False,
        "disableReboots": False, "downloadsDir": "downloads", "ed25519SigningKeyLocation": "/k",
        "enableChainOfTrust": True, "enableInteractive": True, "enableLiveLog": True, "enableLoopbackAudio": True,
        "enableLoopbackVideo": True, "enableMetadata": True, "enableMounts": True, "enableOSGroups": True,
        "enableResourceMonitor": True, "enableRunTaskAsCurrentUser": True, "enableTaskclusterProxy": True,
        "headlessTasks": False, "idleTimeoutSecs": 0, "instanceId": "", "instanceType": "", "interactivePort": 53654,
        "livelogExecutable": "livelog", "livelogExposePort": 0, "livelogPortBase": 60098,
        "loopbackAudioDeviceNumber": 16, "loopbackVideoDeviceNumber": 0, "maxMemoryUsagePercent": 90,
        "maxTaskRunTime": 86400, "minAvailableMemoryBytes": 524288000, "numberOfTasksToRun": 0,
        "privateIP": "87.65.43.21", "provisionerId": "p", "publicIP": "12.34.56.78", "region": "",
        "requiredDiskSpaceMegabytes": 10240, "rootURL": "https://tc.example.com", "runAfterUserCreation": "",
        "sentryProject": "generic-worker", "shutdownMachineOnIdle": False, "shutdownMachineOnInternalError": False,
        "taskclusterProxyExecutable": "taskcluster-proxy", "taskclusterProxyPort": 80, "tasksDir": "tasks",
        "workerGroup": "g", "workerId": "w", "workerLocation": "", "workerType": "wt", "workerTypeMetadata": {},
        "wstAudience": "", "wstServerURL": "",
    }  # fmt: skip
    cfg = tmp_path / "generic-worker.config"
    cfg.write_text(json.dumps(full))
    proc = subprocess.run(
        [*MEGALODON, "config", "explain", "--config", str(cfg), "--json"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["key"]: r for r in json.loads(proc.stdout)}
    assert rows["workerType"]["source"] == "file" and rows["workerType"]["value"] == "wt"
    assert rows["executor"]["source"] == "default"
    assert rows["accessToken"]["value"] == "<set>"
    assert '"livelogExecutable" is accepted for generic-worker compatibility but has no effect' in proc.stderr
    assert '"wstServerURL"' in proc.stderr
    cfg.write_text(json.dumps({**full, "notAKey": 1}))
    proc = subprocess.run(
        [*MEGALODON, "config", "explain", "--config", str(cfg)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 73
    assert '"notAKey"' in proc.stderr


async def test_json_worker_log_lines(double: TaskclusterDouble, tmp_path: Path) -> None:
    cfg = write_worker_config(double, tmp_path, "jsonlog", executor="auto", idleTimeoutSecs=1, logFormat="json")
    proc = await asyncio.create_subprocess_exec(
        *MEGALODON,
        "-v",
        "run",
        "--config",
        str(cfg),
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 68
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("idle" in line["message"] for line in lines)


async def test_internal_error_exits_69_and_reports_to_the_runner(harness: Harness, monkeypatch: Any) -> None:
    worker_type = harness.worker_type()
    runner = RecordingRunner(capable_of_everything=True)
    config = harness.config(worker_type, numberOfTasksToRun=0, shutdownMachineOnInternalError=True)
    worker = Worker(parse_config(config), PluginHost(), runner=runner)

    async def broken_loop() -> int:
        raise RuntimeError("simulated worker bug")

    monkeypatch.setattr(worker, "_loop", broken_loop)
    assert await asyncio.wait_for(worker.run(), 30) == 69
    assert [r.description for r in runner.reports] == ["RuntimeError: simulated worker bug"]
    assert runner.shutdowns == 1
