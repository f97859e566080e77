"""``megalodon run-task`` shows the run it ran: retries, rejected definitions, failures with their log,
tables that keep paths whole at 80 columns.  Every test runs the real command."""

from __future__ import annotations

import json
from pathlib import Path

from ..helpers.cli import columns, megalodon


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_retried_task_reports_the_run_the_worker_ran(tmp_path: Path) -> None:
    task = write(
        tmp_path / "retry.json",
        {
            "command": [["/bin/sh", "-c", "echo attempt-output; exit 3"]],
            "maxRunTime": 10,
            "onExitStatus": {"retry": [3]},
        },
    )
    proc = megalodon("run-task", str(task), "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["runId"], summary["state"], summary["reasonResolved"]) == (0, "exception", "intermittent-task")
    assert summary["retryRunId"] == 1
    names = {a["name"] for a in summary["artifacts"]}
    assert "public/logs/live_backing.log" in names
    assert "attempt-output" in (tmp_path / summary["log"]).read_text()

    proc = megalodon("run-task", str(task), cwd=tmp_path)
    assert proc.returncode == 2
    assert "run 0: exception (intermittent-task)" in proc.stdout
    assert "The queue scheduled run 1 (a retry); shown here is run 0, the run the worker ran." in proc.stdout
    assert "Reason: exception/intermittent-task" in proc.stdout
    tail = proc.stdout.split("lines of the task log:", 1)[1]
    assert "attempt-output" in tail and "found in task payload.onExitStatus list" in tail


def test_a_failed_task_prints_its_reason_and_log_tail(tmp_path: Path) -> None:
    task = write(
        tmp_path / "fail.json", {"command": [["/bin/sh", "-c", "echo why-it-broke >&2; exit 7"]], "maxRunTime": 10}
    )
    proc = megalodon("run-task", str(task), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Reason: failed/failed" in proc.stdout
    tail = proc.stdout.split("lines of the task log:", 1)[1]
    assert "why-it-broke" in tail and "Exit Code: 7" in tail
    ok = write(tmp_path / "ok.json", {"command": [["true"]], "maxRunTime": 10})
    proc = megalodon("run-task", str(ok), cwd=tmp_path)
    assert proc.returncode == 0
    assert "Reason:" not in proc.stdout and "lines of the task log" not in proc.stdout


def test_a_definition_the_queue_rejects_exits_3_with_its_message(tmp_path: Path) -> None:
    task = tmp_path / "rejected.yml"
    task.write_text("priority: bogus\npayload:\n  command: [[true]]\n  maxRunTime: 5\n")
    proc = megalodon("run-task", str(task), cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"the queue rejected the task definition in {task}" in proc.stderr
    assert "priority" in proc.stderr


def test_tables_keep_artifact_paths_whole_at_80_columns(tmp_path: Path) -> None:
    name = "public/a-rather-long-directory-name/with-a-long-file-name-that-does-not-fit.txt"
    task = write(
        tmp_path / "long.json",
        {
            "command": [["/bin/sh", "-c", "echo x > out.txt"]],
            "maxRunTime": 10,
            "artifacts": [{"type": "file", "path": "out.txt", "name": name}],
        },
    )
    proc = megalodon("run-task", str(task), cwd=tmp_path, columns=80)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert all(len(line) <= 80 for line in proc.stdout.splitlines() if "│" in line)
    artifact_column, _, _, path_column = columns(proc.stdout)[:4]
    task_id = proc.stdout.split()[1]
    summary = json.loads((tmp_path / "megalodon-out" / task_id / "summary.json").read_text())
    local = next(a["path"] for a in summary["artifacts"] if a["name"] == name)
    assert local == f"megalodon-out/{task_id}/{name}"
    assert name in artifact_column
    assert local in path_column
    # --json is not affected by the terminal width.
    proc = megalodon("run-task", str(task), "--json", cwd=tmp_path, columns=80)
    assert any(a["name"] == name for a in json.loads(proc.stdout)["artifacts"])


def test_run_task_does_not_need_the_pools_fixed_ports(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 53654))  # generic-worker's interactivePort
            holder.listen()
        except OSError:
            pass  # already held by something else: the same situation
        task = write(tmp_path / "ok.json", {"command": [["true"]], "maxRunTime": 10})
        proc = megalodon("run-task", str(task), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "53654" not in proc.stderr
