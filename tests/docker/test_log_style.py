"""docker-worker's task log lines, as the docker executor declares them (no engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

from megalodon_core.tasklog import TaskLog
from megalodon_docker.executor import DOCKER_WORKER, DockerExecutor


def test_docker_worker_log_lines(tmp_path: Path) -> None:
    assert DockerExecutor.log_style is DOCKER_WORKER
    log = TaskLog(tmp_path / "log", style=DOCKER_WORKER)
    log.info("hello")
    log.warn("careful")
    log.error("bad")
    log.close()
    text = (tmp_path / "log").read_text()
    assert re.match(r"\[taskcluster \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z\] hello\n", text)
    assert re.search(r"\n\[taskcluster \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z\] careful\n", text)
    assert text.endswith("\n\n[taskcluster:error] bad\n")
