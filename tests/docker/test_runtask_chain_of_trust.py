"""``megalodon run-task`` signs a chainOfTrust docker task with an ephemeral key made for the run."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: Built by .ci/docker-setup.sh (the name in conftest.py; test modules are not a package).
BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
MEGALODON = [str(Path(sys.executable).with_name("megalodon"))]


def test_chain_of_trust_task_is_signed_with_an_ephemeral_key(tmp_path: Path, busybox_id: str) -> None:
    task = tmp_path / "cot.json"
    task.write_text(
        json.dumps(
            {
                "image": BUSYBOX_IMAGE,
                "command": ["/bin/sh", "-c", "echo signed > /out.txt"],
                "maxRunTime": 60,
                "features": {"chainOfTrust": True},
                "artifacts": {"public/out.txt": {"type": "file", "path": "/out.txt"}},
            }
        )
    )
    proc = subprocess.run(
        [*MEGALODON, "run-task", str(task), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    key_file = tmp_path / summary["chainOfTrustPublicKeyFile"]
    assert key_file.parent == tmp_path / "megalodon-out" / summary["taskId"]
    public = key_file.read_text().strip()
    assert public == summary["chainOfTrustPublicKey"]
    out = tmp_path / "megalodon-out" / summary["taskId"]
    document = (out / "public" / "chain-of-trust.json").read_bytes()
    signature = (out / "public" / "chain-of-trust.json.sig").read_bytes()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(signature, document)
    assert json.loads(document)["artifacts"]["public/out.txt"]["sha256"]

    human = subprocess.run(
        [*MEGALODON, "run-task", str(task)], cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
    )
    assert human.returncode == 0, human.stderr
    assert "Chain of trust: signed with an ephemeral ed25519 key made for this run; public key" in human.stdout


def test_ephemeral_key_summary_is_honest_when_nothing_was_signed(tmp_path: Path) -> None:
    task = tmp_path / "malformed.json"
    task.write_text(
        json.dumps({"image": BUSYBOX_IMAGE, "command": ["true"], "maxRunTime": -1, "features": {"chainOfTrust": True}})
    )
    proc = subprocess.run(
        [*MEGALODON, "run-task", str(task)], cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "an ephemeral ed25519 key was made for this run but signed nothing" in proc.stdout
    # --config turning chain of trust off: no key is made.
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"enableChainOfTrust": False}))
    proc = subprocess.run(
        [*MEGALODON, "run-task", str(task), "--json", "--config", str(overrides)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert "chainOfTrustPublicKey" not in json.loads(proc.stdout)
