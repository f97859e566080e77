"""Worker configuration: generic-worker's JSON config file, key for key, validated by pydantic.

A pool switching from generic-worker keeps its config file: the same key names, types and defaults
(NOTES.md section 8).  Unknown keys are rejected, as generic-worker does, so a typo never silently falls
back to a default.  Plugins add their own keys through the ``megalodon_config_fields`` hook.

Deliberate differences from generic-worker, each because the key's premise does not hold here:
- ``ed25519SigningKeyLocation`` is optional: it is only needed for chain of trust.  When it is unset the
  chain-of-trust feature is off (tasks requesting it get malformed-payload naming this key); when it is
  set, the worker refuses to start if the key is missing, invalid or readable by others (exit 82).
- ``executor`` is new: the executor plugin to use (``auto`` picks by payload shape: a payload with
  ``image`` is a docker-worker payload).
- ``stateDir`` is new: where the files generic-worker keeps in its working directory go
  (``tasks-resolved-count.txt``, ``generic-worker-metadata.json``) plus ``worker-status.json`` and the
  claim journal.  Default ``.``, generic-worker's place.
- ``metricsPort`` / ``metricsAddress`` (Prometheus ``/metrics`` and ``/healthz``) and ``logFormat``
  (``text`` or ``json`` worker log lines) are new.
- ``requiredFreeInodes``, ``selfCheckExecutors``, ``maxClockSkewSeconds``, ``credentialsExpiryMarginSeconds``
  (self-checks before each claim) and ``watchdogTimeoutSecs`` are new, each off by default.

Keys generic-worker has but megalodon has no use for are accepted, with a warning naming them
(:data:`NOT_APPLICABLE`), so a complete generic-worker config file loads unchanged.
"""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import json
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator


class ConfigError(Exception):
    """The config cannot be used; the message names the offending key (or the file's problem).

    ``unreadable`` distinguishes generic-worker's two exit codes: 64 (the file cannot be read or decoded)
    and 73 (it decodes, but a key is missing or invalid).
    """

    def __init__(self, message: str, *, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable


#: The keys of a temporary credentials certificate (Taskcluster's ``auth`` service format).
CERTIFICATE_FIELDS = frozenset({"version", "scopes", "start", "expiry", "seed", "signature"})


class WorkerConfig(BaseModel):
    """generic-worker's config keys (posix) plus megalodon's ``executor``."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    # credentials and identity (required)
    rootURL: str = Field(min_length=1)
    clientId: str = Field(min_length=1)
    accessToken: str = Field(min_length=1)
    certificate: str = ""
    workerId: str = Field(min_length=1)
    workerType: str = Field(min_length=1)
    provisionerId: str = Field(default="test-provisioner", min_length=1)
    workerGroup: str = Field(default="test-worker-group", min_length=1)

    # megalodon
    executor: str = "auto"
    stateDir: str = Field(default=".", min_length=1)
    metricsPort: int | None = Field(default=None, ge=0, le=65535)
    metricsAddress: str = "127.0.0.1"
    logFormat: Literal["text", "json"] = "text"
    # self-checks before each claim and the watchdog (worker/self_checks.py, worker/watchdog.py): all off
    requiredFreeInodes: int = Field(default=0, ge=0)
    selfCheckExecutors: bool = False
    maxClockSkewSeconds: int = Field(default=0, ge=0)
    credentialsExpiryMarginSeconds: int = Field(default=0, ge=0)
    watchdogTimeoutSecs: int = Field(default=0, ge=0)

    # directories
    tasksDir: str = Field(default="tasks", min_length=1)
    cachesDir: str = Field(default="caches", min_length=1)
    downloadsDir: str = Field(default="downloads", min_length=1)
    cleanUpTaskDirs: bool = True

    # limits and lifecycle
    capacity: int = Field(default=1, ge=1, le=255)
    maxTaskRunTime: int = Field(default=86400, ge=0)
    numberOfTasksToRun: int = Field(default=0, ge=0)
    idleTimeoutSecs: int = Field(default=0, ge=0)
    requiredDiskSpaceMegabytes: int = Field(default=10240, ge=0)
    shutdownMachineOnIdle: bool = False
    shutdownMachineOnInternalError: bool = False
    disableReboots: bool = False

    # artifacts
    createObjectArtifacts: bool = False

    # features (gates)
    enableChainOfTrust: bool = True
    enableInteractive: bool = True
    enableLiveLog: bool = True
    enableMetadata: bool = True
    enableMounts: bool = True
    enableOSGroups: bool = True
    enableResourceMonitor: bool = True
    enableTaskclusterProxy: bool = True
    enableLoopbackAudio: bool = True
    enableLoopbackVideo: bool = True
    enableRunTaskAsCurrentUser: bool = True
    headlessTasks: bool = False
    disableNativePayloads: bool = False
    d2gConfig: dict[str, Any] = Field(default_factory=dict)
    ed25519SigningKeyLocation: str = ""
    livelogExecutable: str = "livelog"
    livelogExposePort: int = Field(default=0, ge=0, le=65535)
    livelogPortBase: int = Field(default=60098, ge=0, le=65535)
    interactivePort: int = Field(default=53654, ge=0, le=65535)
    taskclusterProxyExecutable: str = "taskcluster-proxy"
    taskclusterProxyPort: int = Field(default=80, ge=0, le=65535)
    loopbackAudioDeviceNumber: int = Field(default=16, ge=0, le=31)
    loopbackVideoDeviceNumber: int = Field(default=0, ge=0, le=255)
    runAfterUserCreation: str = ""

    # resource monitor
    maxMemoryUsagePercent: int = Field(default=90, ge=0, le=100)
    minAvailableMemoryBytes: int = Field(default=524288000, ge=0)
    allowedHighMemoryDurationSecs: int = Field(default=5, ge=0)
    disableOOMProtection: bool = False

    # host metadata
    availabilityZone: str = ""
    instanceId: str = ""
    instanceType: str = ""
    privateIP: str | None = None
    publicIP: str | None = None
    region: str = ""
    workerLocation: str = ""
    workerTypeMetadata: dict[str, Any] = Field(default_factory=dict)

    # accepted for compatibility; megalodon has no use for them
    sentryProject: str = "generic-worker"
    wstAudience: str = ""
    wstServerURL: str = ""

    @field_validator("tasksDir", "cachesDir", "downloadsDir", "stateDir", "ed25519SigningKeyLocation")
    @classmethod
    def _path(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("a path cannot contain a NUL byte; write the directory's path")
        return value

    @field_validator("rootURL")
    @classmethod
    def _root_url(cls, value: str) -> str:
        parsed = urllib.parse.urlsplit(value)
        try:
            port_ok = parsed.port is None or parsed.port > 0
        except ValueError:
            port_ok = False
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or not port_ok
            or any(c.isspace() or c == "\x00" for c in value)
        ):
            raise ValueError(
                f"{value!r} is not an http(s) URL; write your deployment's root URL, e.g. https://tc.example.com"
            )
        return value

    @field_validator("certificate")
    @classmethod
    def _certificate(cls, value: str) -> str:
        if not value:
            return value
        try:
            cert = json.loads(value)
        except (ValueError, RecursionError):
            cert = None
        missing = CERTIFICATE_FIELDS - set(cert) if isinstance(cert, dict) else CERTIFICATE_FIELDS
        if missing:
            raise ValueError(
                "must be the JSON certificate of temporary credentials (with "
                + ", ".join(sorted(CERTIFICATE_FIELDS))
                + "), or empty for permanent credentials"
            )
        return value

    @field_validator("privateIP", "publicIP")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None and value != "":
            ipaddress.ip_address(value)
        return value

    @property
    def task_queue_id(self) -> str:
        return f"{self.provisionerId}/{self.workerType}"

    @property
    def credentials(self) -> dict[str, str]:
        creds = {"clientId": self.clientId, "accessToken": self.accessToken}
        if self.certificate:
            creds["certificate"] = self.certificate
        return creds

    def extra(self, key: str, default: Any = None) -> Any:
        """A plugin-declared key (absent from the base model), or ``default``."""
        return getattr(self, key, default)


#: generic-worker keys accepted for compatibility that change nothing in megalodon, and why.
NOT_APPLICABLE: dict[str, str] = {
    "livelogExecutable": "megalodon serves the live log itself",
    "taskclusterProxyExecutable": "megalodon runs the taskcluster proxy in-process",
    "sentryProject": "megalodon reports crashes to worker-runner, not Sentry",
    "wstAudience": "websocktunnel is not supported; the live log is exposed directly",
    "wstServerURL": "websocktunnel is not supported; the live log is exposed directly",
    "disableReboots": "megalodon never reboots the machine",
    "d2gConfig": "docker-worker payloads run on the docker executor, not through d2g",
    "loopbackAudioDeviceNumber": "loopback audio is not supported",
    "loopbackVideoDeviceNumber": "loopback video is not supported",
    "availabilityZone": "megalodon reports it nowhere (generic-worker only reads it into its config)",
}


def config_warnings(data: dict[str, Any]) -> list[str]:
    """A warning for each key of the file that megalodon accepts but does not use."""
    return [
        f'Config setting "{key}" is accepted for generic-worker compatibility but has no effect: {why}'
        for key, why in NOT_APPLICABLE.items()
        if key in data
    ]


SECRET_KEYS = frozenset({"accessToken", "certificate"})


def explain(
    data: dict[str, Any], plugin_fields: dict[str, tuple[Any, Any]] | None = None, runtime: dict[str, Any] | None = None
) -> list[tuple[str, Any, str]]:
    """(key, effective value, source) for every key: ``file``, ``default`` or ``worker-runner``.

    ``runtime`` holds values a running worker received from worker-runner (new credentials); secrets are
    shown masked.
    """
    config = parse_config(data, plugin_fields)
    rows = []
    for key in sorted(type(config).model_fields):
        value = getattr(config, key)
        source = "file" if key in data else "default"
        if runtime and key in runtime:
            value, source = runtime[key], "worker-runner"
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        if key in SECRET_KEYS and value:
            value = "<set>"
        rows.append((key, value, source))
    return rows


def config_model(plugin_fields: dict[str, tuple[Any, Any]] | None = None) -> type[WorkerConfig]:
    """The config model extended with the keys installed plugins declare."""
    if not plugin_fields:
        return WorkerConfig
    model: type[WorkerConfig] = create_model(  # type: ignore[call-overload]
        "WorkerConfigWithPlugins", __base__=WorkerConfig, **plugin_fields
    )
    return model


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the nearest known key, or ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[key.lower()]] if key.lower() in lowered else []
    return f' (did you mean "{close[0]}"?)' if close else ""


def format_validation_error(exc: ValidationError, known: Iterable[str] = ()) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "missing":
            lines.append(f'Config setting "{key}" has not been defined')
        elif err["type"] == "extra_forbidden":
            lines.append(f'Config setting "{key}" is not a recognised config key{did_you_mean(key, known)}')
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f'Config setting "{key}" is invalid: {msg}')
    return "\n".join(lines)


def parse_config(data: Any, plugin_fields: dict[str, tuple[Any, Any]] | None = None) -> WorkerConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"config must be a JSON object of generic-worker keys, not a JSON {json_kind(data)}", unreadable=True
        )
    model = config_model(plugin_fields)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model.model_fields)) from None


def json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


NUL = b"\x00"


def read_config_data(path: Path) -> Any:
    """The decoded JSON of a config file; :class:`ConfigError` (``unreadable``) with one line naming the
    problem and the fix: a missing or unreadable file, an empty one, a byte-order mark, NUL bytes, text that is
    not UTF-8 or not JSON."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}", unreadable=True) from None
    problem = ""
    if not raw.strip():
        problem = "is empty; write a JSON object of generic-worker config keys"
    elif raw.startswith(codecs.BOM_UTF8):
        problem = "starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM"
    elif NUL in raw:
        problem = f"contains NUL bytes (first at byte {raw.index(NUL)}); it is not a JSON text file"
    if problem:
        raise ConfigError(f"config file {path} {problem}", unreadable=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {exc.start}); save it as UTF-8 JSON", unreadable=True
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            unreadable=True,
        ) from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid JSON: nested too deeply", unreadable=True) from None


def load_config_and_data(
    path: Path, plugin_fields: dict[str, tuple[Any, Any]] | None = None
) -> tuple[WorkerConfig, dict[str, Any]]:
    """The validated config of ``path`` and the file's keys: :class:`ConfigError` naming the problem or the key."""
    data = read_config_data(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a JSON object of generic-worker keys, not a JSON {json_kind(data)}",
            unreadable=True,
        )
    return parse_config(data, plugin_fields), data


def load_config(path: Path, plugin_fields: dict[str, tuple[Any, Any]] | None = None) -> WorkerConfig:
    """The validated config of ``path``: :class:`ConfigError` naming the problem or the key."""
    return load_config_and_data(path, plugin_fields)[0]


#: The directories the worker creates itself at start (the others belong to plugins, which check their own).
CREATED_AT_START = ("stateDir", "tasksDir")


def check_directories(config: WorkerConfig, *, create: bool = False) -> None:
    """Directories the worker will create or use must be directories (or absent): one error naming the key.

    With ``create``, the directories the worker creates at start (:data:`CREATED_AT_START`) are created now
    and must be writable, so a path the worker cannot use is this one line instead of a crash at first use.
    """
    for key in ("stateDir", "tasksDir", "cachesDir", "downloadsDir"):
        path = Path(getattr(config, key))
        # The first part of the path that exists must be a directory, or the worker could not create it.
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "exists" if existing == path else f"cannot be created: {existing} exists"
            raise ConfigError(
                f'Config setting "{key}" is invalid: {path} {where} and is not a directory; '
                "point it at a directory (or a path that does not exist yet)"
            )
    if not create:
        return
    for key in CREATED_AT_START:
        path = Path(getattr(config, key))
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f'Config setting "{key}" is invalid: cannot create {path} ({exc.strerror or exc}); '
                "point it at a directory the worker can create"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(
                f'Config setting "{key}" is invalid: {path} is not writable by this user; '
                "point it at a directory the worker can write"
            )
