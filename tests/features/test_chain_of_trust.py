"""Chain of trust: signed chain-of-trust.json, certified.log, the signing key's checks, new-ed25519-keypair.

The docker tests need the engine (``.ci/docker-setup.sh``) and fail, never skip, without it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from megalodon_core.config import parse_config
from megalodon_core.errors import InternalError
from megalodon_core.plugins import PluginHost
from megalodon_core.rundata import ImageIdentity, RunData
from megalodon_core.testing import Harness
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker import Worker
from megalodon_features.chain_of_trust import (
    ChainOfTrustTask,
    build_document,
    go_json,
    load_signing_key,
    public_key_base64,
    write_new_keypair,
)

BUSYBOX = "megalodon-test/busybox:latest"
COT_NAMES = {"public/chain-of-trust.json", "public/chain-of-trust.json.sig", "public/logs/certified.log"}


def new_key(path: Path) -> Ed25519PublicKey:
    write_new_keypair(path)
    return load_signing_key(path).public_key()


def image_id(name: str) -> str:
    client = docker.from_env()
    try:
        return str(client.images.get(name).id)
    finally:
        client.close()


# -- end to end (docker) -------------------------------------------------------------------------------------
@pytest.mark.parametrize("object_storage", [False, True], ids=["s3", "object"])
async def test_docker_task_gets_a_verifiable_chain_of_trust(
    harness: Harness, tmp_path: Path, object_storage: bool
) -> None:
    key_file = tmp_path / "cot.key"
    public = new_key(key_file)
    expires = iso(utcnow() + dt.timedelta(hours=2))
    payload = {
        "image": BUSYBOX,
        "command": ["/bin/sh", "-c", "echo certified-output; printf 'one\\n' > /a.txt; printf 'two' > /b.bin"],
        "maxRunTime": 60,
        "artifacts": {
            "public/a.txt": {"type": "file", "path": "/a.txt", "expires": expires},
            "public/b.bin": {"type": "file", "path": "/b.bin", "expires": expires},
        },
        "features": {"chainOfTrust": True},
    }
    out = await harness.run(
        payload,
        executor="docker",
        requiredDiskSpaceMegabytes=0,
        ed25519SigningKeyLocation=str(key_file),
        createObjectArtifacts=object_storage,
        publicIP="203.0.113.7",
        privateIP="10.1.2.3",
        instanceId="i-123",
        instanceType="m5.large",
        region="us-east-1",
    )
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert set(out.artifacts) >= COT_NAMES, sorted(out.artifacts)

    def content(name: str) -> tuple[bytes, dict[str, Any]]:
        return harness.double.artifact_content(out.task_id, 0, name)

    document_bytes, doc_meta = content("public/chain-of-trust.json")
    signature, sig_meta = content("public/chain-of-trust.json.sig")
    assert len(signature) == 64
    public.verify(signature, document_bytes)  # raises InvalidSignature if not signed by the key
    with pytest.raises(InvalidSignature):
        public.verify(signature, document_bytes + b" ")
    assert doc_meta["contentType"] == "text/plain; charset=utf-8"
    assert sig_meta["contentType"] == "application/octet-stream"
    assert doc_meta["storageType"] == ("object" if object_storage else "s3")

    document = json.loads(document_bytes)
    assert document_bytes.startswith(b'{\n  "chainOfTrustVersion": 1,\n  "artifacts": {')  # 2-space indent
    assert document["taskId"] == out.task_id and document["runId"] == 0
    assert document["workerGroup"] == "test-group" and document["workerId"] == harness.worker_id
    assert document["task"]["payload"] == payload
    assert set(document["artifacts"]) == {"public/a.txt", "public/b.bin", "public/logs/certified.log"}
    for name, entry in document["artifacts"].items():
        data, _ = content(name)
        assert entry == {"sha256": hashlib.sha256(data).hexdigest()}, name
    assert content("public/a.txt")[0] == b"one\n"
    assert document["environment"] == {
        "publicIpAddress": "203.0.113.7",
        "privateIpAddress": "10.1.2.3",
        "instanceId": "i-123",
        "instanceType": "m5.large",
        "region": "us-east-1",
        "imageHash": image_id(BUSYBOX),
    }
    certified, log_meta = content("public/logs/certified.log")
    assert log_meta["contentType"] == "text/plain; charset=utf-8"
    assert b"certified-output" in certified
    assert out.log.encode().startswith(certified), "certified.log is not the task log as it stood at stop time"
    for name in COT_NAMES:
        assert content(name)[1]["expires"] == iso(harness.double.queue.task(out.task_id).expires), name


async def test_docker_chain_of_trust_without_a_key_is_refused_by_name(harness: Harness) -> None:
    payload = {"image": BUSYBOX, "command": ["true"], "maxRunTime": 30, "features": {"chainOfTrust": True}}
    out = await harness.run(payload, executor="docker", requiredDiskSpaceMegabytes=0)
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'feature "chainOfTrust"' in out.log and "ed25519SigningKeyLocation" in out.log
    assert not COT_NAMES & set(out.artifacts)


# -- the key at start-up -------------------------------------------------------------------------------------
async def start_worker(harness: Harness, **config: Any) -> int:
    worker = Worker(parse_config(harness.config(harness.worker_type(), idleTimeoutSecs=1, **config)), PluginHost())
    return await worker.run()


async def test_missing_key_stops_the_worker_with_exit_82(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-key"
    assert await start_worker(harness, ed25519SigningKeyLocation=str(missing)) == 82
    err = capsys.readouterr().err
    assert "Missing ED25519 Private Key" in err and str(missing) in err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
async def test_key_readable_by_others_is_set_to_0600_and_the_worker_runs(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    key_file = tmp_path / "cot.key"
    public = new_key(key_file)
    key_file.chmod(mode)
    assert await start_worker(harness, ed25519SigningKeyLocation=str(key_file)) == 68  # idle timeout: it ran
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"ed25519 signing key file {key_file} had mode {mode:04o}" in w for w in warnings), warnings
    assert load_signing_key(key_file).public_key() == public


@pytest.mark.parametrize("content", [b"not base64!", base64.b64encode(b"x" * 31), b""])
async def test_invalid_key_stops_the_worker(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    key_file = tmp_path / "cot.key"
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    assert await start_worker(harness, ed25519SigningKeyLocation=str(key_file)) == 82
    assert str(key_file) in capsys.readouterr().err


async def test_key_is_not_checked_when_chain_of_trust_is_disabled(harness: Harness, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-key")
    assert await start_worker(harness, ed25519SigningKeyLocation=missing, enableChainOfTrust=False) == 68
    key_file = tmp_path / "cot.key"
    new_key(key_file)
    assert await start_worker(harness, ed25519SigningKeyLocation=str(key_file)) == 68  # idle timeout: it ran


def test_key_file_format_is_generic_workers(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    seed = bytes(range(32))
    key_file.write_bytes(base64.b64encode(seed) + b"\n")  # trailing newline tolerated, as Go's decoder does
    key_file.chmod(0o600)
    loaded = load_signing_key(key_file)
    assert public_key_base64(loaded) == public_key_base64(Ed25519PrivateKey.from_private_bytes(seed))


# -- the CLI -------------------------------------------------------------------------------------------------
def test_new_ed25519_keypair_writes_a_usable_private_key(tmp_path: Path) -> None:
    key_file = tmp_path / "new.key"
    key_file.write_text("old content, replaced")
    key_file.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "megalodon_core", "new-ed25519-keypair", "--file", str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.strip()
    assert len(base64.b64decode(printed, validate=True)) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_bytes(), validate=True)) == 32
    key = load_signing_key(key_file)
    assert public_key_base64(key) == printed
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(printed))
    public.verify(key.sign(b"payload"), b"payload")

    proc = subprocess.run(
        [sys.executable, "-m", "megalodon_core", "new-ed25519-keypair", "--file", str(tmp_path / "no/dir/k")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "cannot create ed25519 keypair" in proc.stderr


# -- the document (native: not requestable through the insecure schema, so unit-tested) ----------------------
def fake_run(tmp_path: Path, executor: str = "native", **config: Any) -> Any:
    cfg = parse_config(
        {"rootURL": "http://tc", "clientId": "c", "accessToken": "secret-token", "workerId": "w1", "workerType": "wt"}
        | config
    )
    docker = executor == "docker"
    data = RunData(
        executor=executor,
        style="docker-worker" if docker else "generic-worker",
        image=ImageIdentity("busybox:latest", "sha256:abc", "sha256:def") if docker else None,
        chain_of_trust_additions=None if docker else tmp_path / "chain-of-trust-additional-data.json",
    )
    return SimpleNamespace(
        worker=SimpleNamespace(config=cfg),
        data=data,
        task={"payload": {"command": [["echo", "<b>&"]]}, "metadata": {"name": "n"}, "provisionerId": "p"},
        task_id="TASKID",
        run_id=2,
        task_dir=tmp_path,
    )


def test_native_document_fields_and_order(tmp_path: Path) -> None:
    run = fake_run(tmp_path, privateIP="10.0.0.1")
    document = build_document(run, {"public/z": "1" * 64, "public/a": "2" * 64})
    assert list(document) == [
        "chainOfTrustVersion",
        "artifacts",
        "task",
        "taskId",
        "runId",
        "workerGroup",
        "workerId",
        "environment",
    ]
    assert document["artifacts"] == {"public/a": {"sha256": "2" * 64}, "public/z": {"sha256": "1" * 64}}
    # no public IP: omitted (omitempty); no image fields for native tasks
    assert document["environment"] == {
        "privateIpAddress": "10.0.0.1",
        "instanceId": "",
        "instanceType": "",
        "region": "",
    }
    assert document["workerGroup"] == "test-worker-group" and document["runId"] == 2
    docker_doc = build_document(fake_run(tmp_path, "docker"), {})
    assert docker_doc["environment"]["imageHash"] == "sha256:abc"
    assert docker_doc["environment"]["imageArtifactHash"] == "sha256:def"
    assert go_json({"s": "<b>&\u2028é"}) == '{\n  "s": "\\u003cb\\u003e\\u0026\\u2028é"\n}'.encode()


def test_native_additional_data_is_merged_under_the_certified_fields(tmp_path: Path) -> None:
    run = fake_run(tmp_path, region="eu-west-1")
    (tmp_path / "chain-of-trust-additional-data.json").write_text(
        json.dumps({"zz": {"extra": True}, "environment": {"region": "forged", "gpu": "a100"}, "taskId": "forged"})
    )
    key = Ed25519PrivateKey.generate()
    workdir = tmp_path / "out"
    workdir.mkdir()
    unsigned, signed = ChainOfTrustTask(run, key)._certify({"public/x": "3" * 64}, workdir)
    data = unsigned.read_bytes()
    key.public_key().verify(signed.read_bytes(), data)
    merged = json.loads(data)
    assert merged["taskId"] == "TASKID"
    assert merged["environment"]["region"] == "eu-west-1"
    assert merged["environment"]["gpu"] == "a100"
    assert merged["zz"] == {"extra": True}
    assert list(merged) == sorted(merged), "a merged document is a Go map: keys come out sorted"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_invalid_additional_data_is_an_internal_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "chain-of-trust-additional-data.json").write_text(content)
    task = ChainOfTrustTask(fake_run(tmp_path), Ed25519PrivateKey.generate())
    with pytest.raises(InternalError, match=r"chain-of-trust-additional-data\.json"):
        task._certify({}, tmp_path)


def test_docker_tasks_ignore_additional_data(tmp_path: Path) -> None:
    (tmp_path / "chain-of-trust-additional-data.json").write_text("{not json")
    unsigned, _ = ChainOfTrustTask(fake_run(tmp_path, "docker"), Ed25519PrivateKey.generate())._certify({}, tmp_path)
    assert "imageHash" in json.loads(unsigned.read_bytes())["environment"]


def test_additional_data_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A task (insecure engine: the worker's user) may leave a FIFO under the name; opening it for reading
    would block the worker thread forever (no writer is left once the task ended), so the run never resolves."""
    import os
    import threading

    os.mkfifo(tmp_path / "chain-of-trust-additional-data.json")
    task = ChainOfTrustTask(fake_run(tmp_path), Ed25519PrivateKey.generate())
    outcome: list[BaseException | None] = []

    def certify() -> None:
        try:
            task._certify({}, tmp_path)
            outcome.append(None)
        except BaseException as exc:  # the test inspects it below
            outcome.append(exc)

    thread = threading.Thread(target=certify, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # release the blocked open, so the thread ends with the test
        fd = os.open(tmp_path / "chain-of-trust-additional-data.json", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
        pytest.fail("reading a FIFO left as chain-of-trust-additional-data.json blocked")
    assert isinstance(outcome[0], InternalError)
    assert "not a regular file" in str(outcome[0])
