"""Chain of trust: a signed statement of what a run produced, so downstream tasks can verify it.

After the payload artifacts are uploaded, the feature publishes three artifacts (generic-worker's
``chain_of_trust_feature.go``, docker-worker's ``features/chain_of_trust.js``):

- ``public/logs/certified.log``: a copy of the task log as it stands at that moment;
- ``public/chain-of-trust.json``: ``chainOfTrustVersion`` 1, the sha256 of every artifact whose content
  was uploaded (certified.log included), the task definition, ids and the host's environment (docker tasks
  also record the image id as ``imageHash`` and, for artifact images, ``imageArtifactHash``);
- ``public/chain-of-trust.json.sig``: the raw 64-byte ed25519 signature of the exact JSON bytes.

The signing key is the file named by config ``ed25519SigningKeyLocation``: base64 of the 32-byte ed25519
seed, the format ``generic-worker new-ed25519-keypair`` writes (``megalodon new-ed25519-keypair`` writes
the same).  The worker refuses to start (exit code 82, generic-worker's MISSING_ED25519_PRIVATE_KEY) when
chain of trust is enabled and the key is missing or invalid; a key other users may read is set to 0600
with a warning, as generic-worker does.

Security note for the insecure engine: tasks run as the worker's own user, so a task can always read a key
file the worker can read; file modes only keep *other* users out.  Pools that need the key hidden from
tasks must use the docker executor (the key is never mounted into containers) or a multiuser engine.

Requesting it: docker tasks set ``features.chainOfTrust: true`` (docker-worker's schema).  generic-worker's
*insecure* payload schema has no ``features.chainOfTrust`` (chain of trust is multiuser-only there), so a
native task cannot ask for it through that schema; the multiuser engine's payload has the flag.  Like every
feature it is selected by name: any executor that declares a ``chainOfTrust`` request gets it; the image
fields come from ``run.data.image`` and the task's additions from ``run.data.chain_of_trust_additions``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from megalodon_core.contracts import Feature, FeatureInitError, TaskFeature
from megalodon_core.errors import ExecutionError, ExecutionErrors, InternalError
from megalodon_core.task import UploadedArtifact
from megalodon_core.tasklog import LOG_CONTENT_TYPE

if TYPE_CHECKING:
    from megalodon_core.task import TaskRun

log = logging.getLogger(__name__)

#: generic-worker's exit codes for a missing/unusable key and for a failed ``new-ed25519-keypair``.
EXIT_MISSING_ED25519_PRIVATE_KEY = 82
EXIT_CANT_CREATE_ED25519_KEYPAIR = 75

CERTIFIED_LOG_NAME = "public/logs/certified.log"
UNSIGNED_CERT_NAME = "public/chain-of-trust.json"
SIGNED_CERT_NAME = "public/chain-of-trust.json.sig"
ADDITIONAL_DATA_FILE = "chain-of-trust-additional-data.json"
#: The task-written additional data is read into memory whole; past this size it is refused.
MAX_ADDITIONAL_DATA_BYTES = 8 << 20
#: Any group/other bit means a user other than the worker's may read (or replace) the key.
_READABLE_BY_OTHERS = stat.S_IRWXG | stat.S_IRWXO


# -- the key -----------------------------------------------------------------------------------------------
class SigningKeyError(Exception):
    """The signing key file cannot be used; the message names the file and the reason."""


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read generic-worker's key format (base64 of the 32-byte seed), then lock the file down to its owner.

    As generic-worker's ``fileutil.SecureFiles`` does after reading the key: a key other users may read, or
    one owned by another user, is chowned to the worker's uid/gid and chmodded 0600, with a warning naming
    the file, and the worker runs (generic-worker's own test suite starts with a 0644 key).  A missing or
    invalid key, or one whose mode cannot be fixed, is refused.  Blocking (file system): call it in a
    worker thread.
    """
    try:
        raw = path.read_bytes()
        info = path.stat()
    except OSError as exc:
        raise SigningKeyError(f"cannot read ed25519 signing key file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SigningKeyError(f"ed25519 signing key {path} is not a regular file")
    try:
        # Go's base64 decoder skips CR and LF; any other whitespace is as invalid there as here.
        seed = base64.b64decode(raw.replace(b"\r", b"").replace(b"\n", b""), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"ed25519 signing key file {path} does not hold valid base64") from None
    if len(seed) != 32:
        raise SigningKeyError(
            f"ed25519 signing key file {path} holds {len(seed)} bytes, not a 32-byte ed25519 seed "
            "(create one with `megalodon new-ed25519-keypair --file PATH`)"
        )
    key = Ed25519PrivateKey.from_private_bytes(seed)
    secure_key_file(path, info)
    return key


def secure_key_file(path: Path, info: os.stat_result) -> None:
    """Make the worker's uid/gid own the key with mode 0600 when it does not already (generic-worker's rule)."""
    uid, gid = os.getuid(), os.getgid()
    mode = stat.S_IMODE(info.st_mode)
    if not (mode & _READABLE_BY_OTHERS or info.st_uid != uid or info.st_gid != gid):
        return
    log.warning(
        "ed25519 signing key file %s had mode %04o and owner %d:%d; setting it to 0600 and %d:%d (as "
        "generic-worker does): fix the provisioning so other users never see the key",
        path,
        mode,
        info.st_uid,
        info.st_gid,
        uid,
        gid,
    )
    try:
        os.chown(path, uid, gid)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise SigningKeyError(
            f"could not change owner/mode of ed25519 signing key file {path} to {uid}/{gid} 0600: {exc.strerror or exc}"
        ) from None


def public_key_base64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def write_new_keypair(path: Path) -> str:
    """Create a key file (mode 0600, replacing any existing file) and return the base64 public key."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, base64.b64encode(seed))
    finally:
        os.close(fd)
    return public_key_base64(key)


def new_ed25519_keypair(
    file: Annotated[Path, typer.Option("--file", help="Where to write the new private key (base64 seed, mode 0600).")],
) -> None:
    """Create an ed25519 key for config ed25519SigningKeyLocation and print its base64 public key."""
    try:
        public = write_new_keypair(file)
    except OSError as exc:
        print(f"megalodon: cannot create ed25519 keypair in {file}: {exc.strerror or exc}", file=sys.stderr)
        raise typer.Exit(EXIT_CANT_CREATE_ED25519_KEYPAIR) from None
    # generic-worker prints the key without a newline; one is added so shells show it on its own line.
    print(public)


# -- the document ------------------------------------------------------------------------------------------
def go_json(value: Any) -> bytes:
    """``json.MarshalIndent(v, "", "  ")`` as Go writes it: UTF-8 as is, ``<>&`` and U+2028/9 escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode()


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: objects merge key by key, anything else from ``over`` wins."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _sorted_keys(value: Any) -> Any:
    """Go marshals maps with sorted keys: a merged document (a map there) comes out sorted."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def build_document(run: TaskRun, hashes: dict[str, str]) -> dict[str, Any]:
    """The certified fields, in generic-worker's field order (docker-worker's plus its image fields)."""
    config = run.worker.config
    environment: dict[str, Any] = {}
    if config.publicIP:
        environment["publicIpAddress"] = config.publicIP
    environment["privateIpAddress"] = config.privateIP or ""
    environment["instanceId"] = config.instanceId
    environment["instanceType"] = config.instanceType
    environment["region"] = config.region
    image = run.data.image
    if image is not None:  # a container task: the image identity the executor recorded
        if image.image_id:
            environment["imageHash"] = image.image_id
        if image.artifact_hash:
            environment["imageArtifactHash"] = image.artifact_hash
    return {
        "chainOfTrustVersion": 1,
        "artifacts": {name: {"sha256": sha} for name, sha in sorted(hashes.items())},
        "task": run.task,
        "taskId": run.task_id,
        "runId": run.run_id,
        "workerGroup": config.workerGroup,
        "workerId": config.workerId,
        "environment": environment,
    }


def read_additional_data(path: Path) -> dict[str, Any] | None:
    """The task's optional ``chain-of-trust-additional-data.json`` at ``path`` (blocking: run it in a thread).

    ``path`` is the executor's ``run.data.chain_of_trust_additions``: a file the worker may read once the run
    ended (the insecure engine's task runs as the worker's user, so the worker reads exactly what the task
    could; the multiuser engine replaces it by a copy read as the task user first).
    """
    try:
        # O_NONBLOCK: a FIFO the task left under that name would otherwise block this thread for ever (no
        # writer remains once the task ended) and the run would never resolve; only a regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InternalError(f"cannot read {ADDITIONAL_DATA_FILE}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InternalError(f"{ADDITIONAL_DATA_FILE} written by the task is not a regular file")
        try:
            data = fh.read(MAX_ADDITIONAL_DATA_BYTES + 1)
        except OSError as exc:
            raise InternalError(f"cannot read {ADDITIONAL_DATA_FILE}: {exc.strerror or exc}") from None
    if len(data) > MAX_ADDITIONAL_DATA_BYTES:
        raise InternalError(f"{ADDITIONAL_DATA_FILE} is larger than {MAX_ADDITIONAL_DATA_BYTES} bytes")
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InternalError(f"{ADDITIONAL_DATA_FILE} written by the task is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InternalError(f"{ADDITIONAL_DATA_FILE} written by the task must hold a JSON object")
    return parsed


def render_document(document: dict[str, Any], additional: dict[str, Any] | None) -> bytes:
    """The exact bytes that are uploaded and signed; certified fields win over the task's additions."""
    if additional is None:
        return go_json(document)
    return go_json(_sorted_keys(deep_merge(additional, document)))


# -- the feature -------------------------------------------------------------------------------------------
class ChainOfTrustFeature(Feature):
    """Worker-lifetime half: loads and checks the key once, before the first claim."""

    name = "chainOfTrust"

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        self.key: Ed25519PrivateKey | None = None
        self._warned_no_key = False

    @property
    def key_location(self) -> str:
        return str(self.worker.config.ed25519SigningKeyLocation)

    async def initialise(self) -> None:
        if not self.worker.config.enableChainOfTrust:
            return
        if not self.key_location:
            # No warning here: on most pools no installed executor can even request chain of trust.  The
            # first task that does gets malformed-payload naming the key, and the worker log a warning then.
            return
        try:
            self.key = await asyncio.to_thread(load_signing_key, Path(self.key_location))
        except SigningKeyError as exc:
            raise FeatureInitError(f"Missing ED25519 Private Key: {exc}", EXIT_MISSING_ED25519_PRIVATE_KEY) from None

    def is_enabled(self) -> bool:
        return bool(self.worker.config.enableChainOfTrust and self.key_location)

    def disabled_reason(self) -> str | None:
        if self.worker.config.enableChainOfTrust and not self.key_location:
            if not self._warned_no_key:
                self._warned_no_key = True
                log.warning(
                    "a task requested chainOfTrust but config ed25519SigningKeyLocation is not set: such tasks "
                    "are refused (malformed-payload); create a key with `megalodon new-ed25519-keypair --file PATH`"
                )
            return (
                'this task is attempting to use feature "chainOfTrust", but this worker pool '
                f"({self.worker.config.task_queue_id}) has no signing key (config ed25519SigningKeyLocation)"
            )
        return None

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        if self.key is None:
            raise InternalError("chain of trust requested but the signing key was never loaded")
        return ChainOfTrustTask(run, self.key)


class ChainOfTrustTask(TaskFeature):
    """Per-task half: everything happens in :meth:`stop`, after the payload artifacts are uploaded."""

    def __init__(self, run: TaskRun, key: Ed25519PrivateKey) -> None:
        self.run = run
        self.key = key

    def reserved_artifacts(self) -> list[str]:
        return [UNSIGNED_CERT_NAME, SIGNED_CERT_NAME, CERTIFIED_LOG_NAME]

    def _skip_reason(self) -> str | None:
        run = self.run
        if run.canceled:
            return "the run was cancelled"
        # docker-worker skips chain of trust for aborted tasks (maxRunTime, shutdown); generic-worker doesn't.
        if run.data.style == "docker-worker" and run.abort_error is not None:
            return "the task was aborted"
        return None

    def _hashes(self) -> dict[str, str]:
        """Content artifacts published so far, minus the task log (uploaded after this, not certified)."""
        run = self.run
        return {
            name: up.sha256
            for name, up in run.uploaded.items()
            if run.reserved_artifacts.get(name) != "the task log" and name not in self.reserved_artifacts()
        }

    async def stop(self, errors: ExecutionErrors) -> None:
        reason = self._skip_reason()
        if reason is not None:
            log.info("task %s/%s: no chain of trust: %s", self.run.task_id, self.run.run_id, reason)
            return
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="megalodon-cot-"))
        try:
            await self._publish(workdir, errors)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _upload(
        self, errors: ExecutionErrors, name: str, path: Path, content_type: str
    ) -> UploadedArtifact | None:
        run = self.run
        try:
            published = await run.publisher().file(
                run.task_id,
                run.run_id,
                name,
                path,
                content_type=content_type,
                content_encoding="gzip",
                expires=run.expires,
                object_storage=run.worker.config.createObjectArtifacts,
            )
        except ExecutionError as exc:
            run.log.error(exc.message)
            errors.add(exc)
            return None
        uploaded = UploadedArtifact(name, published.sha256, published.size)
        run.uploaded[name] = uploaded
        return uploaded

    async def _publish(self, workdir: Path, errors: ExecutionErrors) -> None:
        run = self.run
        # Private copies (worker-only temp dir): a process the task left behind cannot swap them between
        # hashing, signing and upload, as it could inside the task directory.
        certified = workdir / "certified.log"
        run.log.flush()
        await asyncio.to_thread(shutil.copyfile, run.log.path, certified)
        hashes = self._hashes()
        uploaded_log = await self._upload(errors, CERTIFIED_LOG_NAME, certified, LOG_CONTENT_TYPE)
        if uploaded_log is not None:
            hashes[CERTIFIED_LOG_NAME] = uploaded_log.sha256

        try:
            unsigned, signed = await asyncio.to_thread(self._certify, hashes, workdir)
        except InternalError as exc:
            run.log.error(exc.message)
            errors.add(exc)
            return
        await self._upload(errors, UNSIGNED_CERT_NAME, unsigned, LOG_CONTENT_TYPE)
        await self._upload(errors, SIGNED_CERT_NAME, signed, "application/octet-stream")

    def _certify(self, hashes: dict[str, str], workdir: Path) -> tuple[Path, Path]:
        """Build, sign and write the document (blocking: JSON of a large task definition, disk writes)."""
        run = self.run
        location = run.data.chain_of_trust_additions
        additional = read_additional_data(location) if location is not None else None
        document = render_document(build_document(run, hashes), additional)
        unsigned, signed = workdir / "chain-of-trust.json", workdir / "chain-of-trust.json.sig"
        unsigned.write_bytes(document)
        signed.write_bytes(self.key.sign(document))
        return unsigned, signed
