"""The example third-party feature (examples/megalodon-hello-feature), requested by name through the example
third-party executor (whose payload takes any feature name), and absent from tasks that do not ask.

generic-worker's and docker-worker's payload schemas list their features and refuse other names, so the
native and docker executors cannot request it: that is their payload format, not the feature.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from megalodon_core.testing import Harness

SCRIPT = 'echo "greeting=[$MEGALODON_HELLO]"'


def payload(features: dict[str, bool]) -> dict[str, Any]:
    return {"script": SCRIPT, "maxRunTime": 30, "features": features}


async def test_requested_by_name_it_sets_the_env_and_publishes_its_artifact(harness: Harness) -> None:
    out = await harness.run(payload({"hello": True}), executor="script", helloGreeting="ahoy")
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    greeting = f"ahoy from test-group/{harness.worker_id}"
    assert f"greeting=[{greeting}]" in out.log.splitlines()
    data, meta = harness.double.artifact_content(out.task_id, 0, "public/hello.txt")
    assert data.decode() == f"{greeting}\ntask {out.task_id} run 0: completed so far\n"
    assert meta["contentType"] == "text/plain; charset=utf-8"


async def test_a_failed_run_is_reported_in_its_artifact(harness: Harness) -> None:
    out = await harness.run({**payload({"hello": True}), "script": "exit 4"}, executor="script")
    assert (out.state, out.reason) == ("failed", "failed"), out.log
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/hello.txt")
    assert data.decode().endswith(f"task {out.task_id} run 0: failed so far\n")


async def test_not_requested_not_there(harness: Harness) -> None:
    out = await harness.run(payload({}), executor="script")
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "greeting=[]" in out.log.splitlines()
    assert "public/hello.txt" not in out.artifacts


async def test_a_symlink_planted_by_the_task_is_never_written_through(harness: Harness, tmp_path: Path) -> None:
    """The feature writes its file as the worker: a task that left ``hello-feature.txt`` as a symlink (under the
    multiuser engine, a task user pointing it at a root-owned file) must not get that file overwritten."""
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    script = f"ln -s {shlex.quote(str(victim))} hello-feature.txt"
    out = await harness.run({**payload({"hello": True}), "script": script}, executor="script")
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert victim.read_text() == "precious\n"
    data, _ = harness.double.artifact_content(out.task_id, 0, "public/hello.txt")
    assert data.decode().endswith(f"task {out.task_id} run 0: completed so far\n")
