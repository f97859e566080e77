"""Worker config: generic-worker's keys, defaults, and errors that name the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megalodon_core.config import ConfigError, load_config, parse_config

BASE = {
    "rootURL": "http://127.0.0.1:1",
    "clientId": "c",
    "accessToken": "t",
    "workerId": "w",
    "workerType": "wt",
}


def test_defaults_are_generic_workers() -> None:
    cfg = parse_config(BASE)
    assert cfg.provisionerId == "test-provisioner"
    assert cfg.workerGroup == "test-worker-group"
    assert cfg.maxTaskRunTime == 86400
    assert cfg.capacity == 1
    assert cfg.tasksDir == "tasks"
    assert cfg.createObjectArtifacts is False
    assert cfg.task_queue_id == "test-provisioner/wt"


@pytest.mark.parametrize("missing", ["rootURL", "clientId", "accessToken", "workerId", "workerType"])
def test_missing_required_key_is_named(missing: str) -> None:
    data = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=f'"{missing}" has not been defined'):
        parse_config(data)


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match='"maxTaskRuntime" is not a recognised config key'):
        parse_config({**BASE, "maxTaskRuntime": 5})


def test_wrong_type_is_named_and_not_coerced() -> None:
    with pytest.raises(ConfigError, match='"capacity" is invalid'):
        parse_config({**BASE, "capacity": "2"})
    with pytest.raises(ConfigError, match='"cleanUpTaskDirs" is invalid'):
        parse_config({**BASE, "cleanUpTaskDirs": "true"})


def test_invalid_ip_is_rejected() -> None:
    with pytest.raises(ConfigError, match='"publicIP" is invalid'):
        parse_config({**BASE, "publicIP": "not-an-ip"})


def test_plugin_fields_extend_the_model() -> None:
    cfg = parse_config({**BASE, "dockerAllowPrivileged": True}, {"dockerAllowPrivileged": (bool, False)})
    assert cfg.extra("dockerAllowPrivileged") is True
    with pytest.raises(ConfigError):
        parse_config({**BASE, "dockerAllowPrivileged": True})


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_cli_run_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "generic-worker.config"
    cfg.write_text(json.dumps({**BASE, "capacity": 0}))
    proc = subprocess.run(
        [sys.executable, "-m", "megalodon_core", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 73
    assert '"capacity"' in proc.stderr
    cfg.write_text("[]")
    proc = subprocess.run(
        [sys.executable, "-m", "megalodon_core", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 64  # not a JSON object: generic-worker cannot decode it either
