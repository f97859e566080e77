"""docker-worker's task-log lines that users grep for, and its log artifacts with ``localLiveLog: false``.

Read from docker-worker's source: ``features/artifacts.js`` writes ``Artifact "<name>" not found at
"<path>": ...`` to the task log, ``task.js``'s ``writeLogHeader`` lists ``using cache "<name>" -> <path
in the container>``, and with ``localLiveLog: false`` no log artifact is uploaded.  Needs the engine
(``.ci/docker-setup.sh``); fails, never skips, without it.
"""

from __future__ import annotations

from typing import Any

from megalodon_core.testing import Harness

BUSYBOX = "megalodon-test/busybox:latest"


def payload(script: str, **extra: Any) -> dict[str, Any]:
    return {"image": BUSYBOX, "command": ["/bin/sh", "-c", script], "maxRunTime": 60, **extra}


async def test_missing_artifact_is_also_a_task_log_line(harness: Harness) -> None:
    artifacts = {"public/missing.txt": {"type": "file", "path": "/no/such/file"}}
    out = await harness.run(payload("true", artifacts=artifacts), executor="docker")
    assert out.state == "completed", out.log
    line = next(x for x in out.log.splitlines() if 'Artifact "public/missing.txt" not found at "/no/such/file"' in x)
    assert line.startswith("[taskcluster ") and ":error]" not in line  # a plain line, as docker-worker writes it
    assert out.artifacts["public/missing.txt"]["storageType"] == "error"


async def test_cache_header_lines_show_the_container_path(harness: Harness) -> None:
    out = await harness.run(
        payload("echo hi > /mnt/cache/x", cache={"header-cache": "/mnt/cache"}),
        task={"scopes": ["docker-worker:cache:header-cache"]},
        executor="docker",
    )
    assert out.state == "completed", out.log
    header = out.log.split("=== Task Starting ===", 1)[0].splitlines()
    assert header[8].endswith('using cache "header-cache" -> /mnt/cache'), out.log  # right after Hostname
    assert str(harness.tmp_path / "caches") not in out.log  # the host directory is the worker's business


async def test_local_live_log_false_uploads_no_log(harness: Harness) -> None:
    out = await harness.run(payload("echo quiet", features={"localLiveLog": False}), executor="docker")
    assert out.state == "completed"
    assert not {"public/logs/live.log", "public/logs/live_backing.log"} & set(out.artifacts), out.artifacts
    out = await harness.run(payload("echo bulk", features={"localLiveLog": False, "bulkLog": True}), executor="docker")
    assert out.state == "completed"
    assert "public/logs/live_backing.log" in out.artifacts and "public/logs/live.log" not in out.artifacts
