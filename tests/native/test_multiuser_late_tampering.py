"""The multiuser engine against a task-user process that is still alive after the commands ended.

Such processes exist: an interactive shell session stays open (and can start new processes as the task user)
until the features stop, which is after the artifact upload; a ``setsid`` daemon from that shell survives
the session kill until the run's cleanup.  Whatever they do to the task directory then must not make the
worker, as root, publish a file the task user cannot read: neither through the task log (uploaded after
cleanup) nor through ``chain-of-trust-additional-data.json`` (read when the chain-of-trust feature stops).

The late process is simulated deterministically: the run's artifact collection (the window in question)
first runs the tampering script as the task user.  Skipped unless run as root (CI runs these as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from megalodon_core.contracts import ArtifactEntry, Artifacts, NoArtifacts
from megalodon_core.testing import Harness
from megalodon_core.testing.conformance import write_signing_key
from megalodon_native.multiuser import MultiuserRun

from ..helpers.multiuser import multiuser_config, task_user_dirs
from ..helpers.procs import sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the multiuser engine creates OS users: needs root")


@pytest.fixture
def shared() -> Iterator[dict[str, Path]]:
    with task_user_dirs() as dirs:
        yield dirs


class _TamperFirst(NoArtifacts):
    """Runs ``script`` as the run's task user in its task directory, then collects nothing."""

    def __init__(self, run: MultiuserRun, script: str) -> None:
        self.run = run
        self.script = script

    async def collect(self) -> list[ArtifactEntry]:
        user = self.run.user
        assert user is not None
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            self.script,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd=self.run.task_run.task_dir,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert await proc.wait() == 0, "the tampering script failed"
        return []


async def test_late_task_user_process_cannot_publish_root_only_files(
    harness: Harness, shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = f"TOPSECRET-{uuid.uuid4().hex}"
    secret = tmp_path / "secret.json"  # root-only: pytest's tmp_path is 0700 root
    secret.write_text(json.dumps({"stolen": token}))
    secret.chmod(0o600)
    key_file = tmp_path / "cot.key"
    write_signing_key(key_file)
    key_file.chmod(0o600)
    target = shlex.quote(str(secret))
    tamper = (
        "set -e; mv generic-worker gw-moved; mkdir generic-worker; "
        f"ln -s {target} generic-worker/live_backing.log; "
        f"rm -f chain-of-trust-additional-data.json; ln -s {target} chain-of-trust-additional-data.json"
    )

    def artifacts(self: MultiuserRun) -> Artifacts:
        return _TamperFirst(self, tamper)

    monkeypatch.setattr(MultiuserRun, "artifacts", artifacts)
    payload: dict[str, Any] = {
        "command": [sh("""echo '{"legit": "yes"}' > chain-of-trust-additional-data.json; echo task-output""")],
        "maxRunTime": 60,
        "features": {"chainOfTrust": True},
    }
    out = await harness.run(
        payload, **multiuser_config(shared, cleanUpTaskDirs=True, ed25519SigningKeyLocation=str(key_file))
    )
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "task-output" in out.log, out.log
    assert token not in out.log, "the task log upload followed a symlink the task planted after its commands"
    document, _ = harness.double.artifact_content(out.task_id, 0, "public/chain-of-trust.json")
    assert token.encode() not in document, "chain-of-trust embedded a root-only file the task linked to"
    assert json.loads(document)["legit"] == "yes"  # the additions the commands wrote are kept
