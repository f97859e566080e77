"""Operator mistakes get one line naming the problem (and the key, and the fix) and the documented exit
code: never a traceback.  Every test runs the real ``megalodon`` command."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from ..helpers.cli import columns, megalodon

BASE = {"rootURL": "http://127.0.0.1:1", "clientId": "c", "accessToken": "t", "workerId": "w", "workerType": "wt"}


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "Error" not in proc.stderr.split(":", 1)[0], proc.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"\xef\xbb\xbf" + json.dumps(BASE).encode(), "byte-order mark"),
        (b"\x00" * 128, "contains NUL bytes"),
        (b'{"workerId": "\xe9"}', "is not UTF-8"),
        (b"workerId: w\n", "is not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
    ],
)
@pytest.mark.parametrize("command", [("run",), ("config", "explain")])
def test_undecodable_config_is_one_line_and_exit_64(
    tmp_path: Path, content: bytes, problem: str, command: tuple[str, ...]
) -> None:
    cfg = tmp_path / "generic-worker.config"
    cfg.write_bytes(content)
    proc = megalodon(*command, "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 64, proc.stderr
    assert_clean(proc)
    assert proc.stderr.strip().count("\n") == 0
    assert problem in proc.stderr and str(cfg) in proc.stderr


def test_invalid_values_name_the_key_and_exit_73(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        "tasksDir": ({"tasksDir": "tasks\u0000evil"}, "NUL byte"),
        "rootURL": ({"rootURL": "tc.example.com"}, "not an http(s) URL"),
        "certificate": ({"certificate": "not json"}, "JSON certificate"),
        "stateDir": ({"stateDir": str(a_file)}, "is not a directory"),
        "tasksDir ": ({"tasksDir": "/proc/megalodon-tasks"}, "cannot create /proc/megalodon-tasks"),
    }
    for key, (override, fix) in cases.items():
        cfg = tmp_path / f"{key}.json"
        cfg.write_text(json.dumps({**BASE, "stateDir": str(tmp_path / "state"), **override}))
        proc = megalodon("run", "--config", str(cfg), cwd=tmp_path)
        assert proc.returncode == 73, (key, proc.stderr)
        assert_clean(proc)
        assert f'Config setting "{key.strip()}" is invalid' in proc.stderr and fix in proc.stderr, proc.stderr


def test_a_busy_metrics_port_names_the_key(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "worker.json"
        cfg.write_text(
            json.dumps(
                {
                    **BASE,
                    "metricsPort": port,
                    "stateDir": str(tmp_path / "state"),
                    "tasksDir": str(tmp_path / "tasks"),
                    "requiredDiskSpaceMegabytes": 0,
                }
            )
        )
        proc = megalodon("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 73, proc.stderr
    assert_clean(proc)
    assert f'Config setting "metricsPort" is invalid: cannot listen on 127.0.0.1:{port}' in proc.stderr
    assert "choose a free port" in proc.stderr


def test_unknown_keys_suggest_the_nearest(tmp_path: Path) -> None:
    cfg = tmp_path / "worker.json"
    cfg.write_text(json.dumps({**BASE, "idleTimeoutSec": 5}))
    proc = megalodon("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 73
    assert '"idleTimeoutSec" is not a recognised config key (did you mean "idleTimeoutSecs"?)' in proc.stderr


def test_validate_payload_prints_a_yaml_error_verbatim(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("payload:\n  command: [/bin/echo [hi]\n  maxRunTime: 5\n")
    proc = megalodon("validate-payload", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert_clean(proc)
    assert "command: [/bin/echo [hi]" in proc.stderr  # the markup-looking text is printed as it is
    assert f'in "{bad}", line 2' in proc.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"command": [["true"]], "maxRunTime": 5, "env": ' + '{"a": ' * 600 + "1" + "}" * 600 + "}", "depth limit"),
        ("a: &a [1, 2]\nb: [" + ", ".join(["*a"] * 1500) + "]\n", "more than 1000 aliases"),
        ("\n".join([f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * 9) + "]" for i in range(9)]), "size"),
    ],
    ids=["deep", "aliases", "alias-bomb"],
)
def test_hostile_task_files_are_refused_naming_the_limit(tmp_path: Path, content: str, message: str) -> None:
    task = tmp_path / "task.yml"
    task.write_text(content)
    for command in (("validate-payload",), ("run-task", "--json")):
        proc = megalodon(*command, str(task), cwd=tmp_path)
        assert proc.returncode in (2, 64), (command, proc.stderr)
        assert_clean(proc)
        assert message in proc.stderr, proc.stderr


def test_validate_payload_with_a_non_object_payload(tmp_path: Path) -> None:
    task = tmp_path / "task.yml"
    task.write_text("payload: [1, 2]\n")
    proc = megalodon("validate-payload", str(task), cwd=tmp_path)
    assert proc.returncode == 1
    assert_clean(proc)
    assert "- payload: must be an object" in proc.stdout


def test_run_task_config_must_be_an_object(tmp_path: Path) -> None:
    task = tmp_path / "task.yml"
    task.write_text("command: [[true]]\nmaxRunTime: 5\n")
    for content, message in (("[1]", "not a JSON array"), ("{", "is not valid JSON"), ("", "is empty")):
        cfg = tmp_path / "overrides.json"
        cfg.write_text(content)
        proc = megalodon("run-task", str(task), "--config", str(cfg), cwd=tmp_path)
        assert proc.returncode == 64, proc.stderr
        assert_clean(proc)
        assert message in proc.stderr


def test_status_of_a_missing_state_dir_is_an_error(tmp_path: Path) -> None:
    proc = megalodon("status", "--state-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and proc.stdout == ""
    proc = megalodon("status", "--state-dir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"currentTaskIds": []}


def test_list_plugins_never_truncates_names_at_80_columns(tmp_path: Path) -> None:
    proc = megalodon("list-plugins", cwd=tmp_path, columns=80)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    listed = json.loads(megalodon("list-plugins", "--json", cwd=tmp_path).stdout)
    name_column, dist_column = columns(proc.stdout)[:2]
    for record in listed:
        assert record["name"] in name_column
        assert record["distribution"] in dist_column


def test_run_task_with_an_unwritable_out_dir(tmp_path: Path) -> None:
    task = tmp_path / "task.yml"
    task.write_text("command: [[true]]\nmaxRunTime: 5\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = megalodon("run-task", str(task), "--out", str(blocker / "out"), cwd=tmp_path)
    assert proc.returncode == 64, proc.stderr
    assert_clean(proc)
    assert "run-task cannot write" in proc.stderr and "(see --out)" in proc.stderr


def test_tc_double_on_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = megalodon("tc-double", "--port", str(port), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert_clean(proc)
    assert f"cannot serve the Taskcluster double on 127.0.0.1:{port}" in proc.stderr
