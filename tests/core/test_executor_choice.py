"""Which executor runs a payload: the documented rule, through an unmodified worker against the double.

A third-party executor registered after native gets the payloads it accepts even when native's predicate
would take them too (megalodon's own executors register ``trylast``); a payload of a kind whose
distribution is not installed says which distribution runs it, in the task log and in ``validate-payload``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from megalodon_core import hookimpl
from megalodon_core.config import parse_config
from megalodon_core.contracts import ExecutorInfo, ExecutorRun, executor_for
from megalodon_core.errors import MalformedPayload
from megalodon_core.plugins import BLOCK_ENV, PluginHost
from megalodon_core.testing import Harness
from megalodon_core.worker import Worker
from megalodon_core.worker.executor_choice import choose_info

NATIVE_PAYLOAD: dict[str, Any] = {"command": [["/bin/true"]], "maxRunTime": 30}
#: Native's predicate accepts this one too (it has maxRunTime and no image): only priority decides.
RECIPE_PAYLOAD: dict[str, Any] = {"recipe": "hello", "maxRunTime": 30}


class RecipeRun(ExecutorRun[dict[str, Any]]):
    def parse_payload(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("recipe"), str):
            raise MalformedPayload("payload.recipe: a string is required")
        return raw

    async def run(self) -> None:
        self.task_run.log.write(f"recipe executor ran: {self.payload['recipe']}\n".encode())


class RecipePlugin:
    __name__ = "recipe-test"

    @hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [
            ExecutorInfo(
                name="recipe",
                factory=executor_for("recipe", RecipeRun),
                summary="runs payload.recipe",
                payload_schema=dict,
                accepts=lambda p: isinstance(p, dict) and "recipe" in p,
            )
        ]


def test_third_party_executor_registered_after_native_has_priority() -> None:
    host = PluginHost(plugins=[RecipePlugin()])
    assert "native" in host.executors
    accepting = [i.name for i in host.executors_accepting(RECIPE_PAYLOAD)]
    assert accepting[0] == "recipe"
    assert "native" in accepting, "native's predicate takes it too: only the priority decides"
    assert (choose_info(host, RECIPE_PAYLOAD) or ExecutorInfo("?", dict, "", dict)).name == "recipe"  # type: ignore[arg-type]
    assert (choose_info(host, NATIVE_PAYLOAD) or ExecutorInfo("?", dict, "", dict)).name == "native"  # type: ignore[arg-type]


async def test_a_worker_gives_the_third_party_executor_its_payload(harness: Harness) -> None:
    worker_type = harness.worker_type()
    task_id = await harness.create(RECIPE_PAYLOAD, worker_type)
    host = PluginHost(plugins=[RecipePlugin()])
    worker = Worker(parse_config(harness.config(worker_type), host.config_fields()), host)
    out = await harness.outcome(task_id, await worker.run())
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "recipe executor ran: hello" in out.log


async def test_docker_only_worker_given_a_native_payload_names_megalodon_native(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BLOCK_ENV, "megalodon-native")
    host = PluginHost()
    assert "native" not in host.executors and "docker" in host.executors
    worker_type = harness.worker_type()
    task_id = await harness.create(NATIVE_PAYLOAD, worker_type)
    worker = Worker(parse_config(harness.config(worker_type), host.config_fields()), host)
    out = await harness.outcome(task_id, await worker.run())
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert "generic-worker payload" in out.log and "install megalodon-native" in out.log


def _validate(tmp_path: Path, payload: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(payload))
    return subprocess.run(
        [sys.executable, "-m", "megalodon_core", "validate-payload", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300", **env},
        check=False,
    )


def test_validate_payload_with_only_docker_names_megalodon_native(tmp_path: Path) -> None:
    proc = _validate(tmp_path, NATIVE_PAYLOAD, {BLOCK_ENV: "megalodon-native"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "install megalodon-native" in " ".join(proc.stderr.split())
    proc = _validate(
        tmp_path, {"image": "busybox", "command": ["true"], "maxRunTime": 30}, {BLOCK_ENV: "megalodon-docker"}
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "install megalodon-docker" in " ".join(proc.stderr.split())
    # With both installed, each goes to its own executor.
    proc = _validate(tmp_path, NATIVE_PAYLOAD, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid native payload" in proc.stdout
