"""The docker-worker payload, as a pydantic model that accepts exactly what the official schema accepts.

docker-worker validated payloads with ajv against ``payload.yml`` (JSON Schema draft-06); a drop-in
replacement must reject the same payloads with ``malformed-payload`` and accept all the others, so every
rule of that schema is mirrored here and a corpus test compares the two verdicts payload by payload.

Points where JSON Schema and pydantic disagree by default, and how they are reconciled:

* JSON has no ``null`` anywhere in this schema, but pydantic treats ``X | None`` as nullable: every
  optional field is typed ``X | None`` only so that *absent* can be told apart from *present*; an explicit
  ``null`` is rejected by :class:`_SchemaModel`'s before-validator.
* draft-06 ``integer`` accepts ``5.0`` (an integral number), never ``true`` nor ``"5"``: see
  :data:`JsonInt`.
* Schema defaults apply only inside objects that are present (ajv ``useDefaults``): ``features``,
  ``capabilities`` and ``onExitStatus`` stay ``None`` when absent, and ``model_fields_set`` tells which
  feature flags the task actually mentioned (docker-worker refuses a payload that merely *mentions* a
  feature the worker has disabled).
* Field attributes are snake_case with the schema's names as aliases; :func:`validate_payload` accepts
  only the schema's names, so ``{"max_run_time": 5}`` is as invalid as it is for the schema.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from megalodon_core import payloads

__all__ = [
    "Artifact",
    "Capabilities",
    "Devices",
    "DockerImage",
    "DockerPayload",
    "Features",
    "ImageSpec",
    "IndexedImage",
    "JsonInt",
    "OnExitStatus",
    "PayloadError",
    "TaskImage",
    "is_rfc3339_datetime",
    "parse_rfc3339_datetime",
    "payload_json_schema",
    "validate_payload",
]

# -- scalar rules ------------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
    r"[Tt](?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?P<frac>\.\d+)?"
    r"(?P<tz>[Zz]|(?P<sign>[+-])(?P<tzh>\d{2}):(?P<tzm>\d{2}))",
    re.ASCII,
)


def parse_rfc3339_datetime(value: str) -> dt.datetime | None:
    """Parse an RFC 3339 ``date-time`` strictly, or return None when it is not one.

    Python's ``fromisoformat`` accepts far more than RFC 3339 (dates alone, spaces, no offset), so the
    grammar is checked by hand; leap seconds (``:60``) are refused like the common validators do.
    """
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day = int(m["year"]), int(m["month"]), int(m["day"])
    hour, minute, second = int(m["hour"]), int(m["minute"]), int(m["second"])
    if not (1 <= month <= 12) or not (1 <= day <= calendar.monthrange(max(year, 1), month)[1]):
        return None
    if year == 0 or hour > 23 or minute > 59 or second > 59:
        return None
    offset = dt.timedelta(0)
    if m["sign"] is not None:
        tzh, tzm = int(m["tzh"]), int(m["tzm"])
        if tzh > 23 or tzm > 59:
            return None
        offset = dt.timedelta(hours=tzh, minutes=tzm) * (-1 if m["sign"] == "-" else 1)
    micro = int((m["frac"] or ".0")[1:7].ljust(6, "0"))
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=dt.timezone(offset))


def is_rfc3339_datetime(value: str) -> bool:
    return parse_rfc3339_datetime(value) is not None


def _check_datetime(value: str) -> str:
    if not is_rfc3339_datetime(value):
        raise PydanticCustomError("date_time_format", "Input should be an RFC 3339 date-time")
    return value


def _json_integer(value: object) -> object:
    """Let integral floats through as ints, as draft-06 ``integer`` (and JavaScript) do.

    Everything else is left for pydantic's strict ``int``, which refuses bools and strings.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: A JSON Schema draft-06 ``integer``: ints and integral floats, never bools or numeric strings.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]

_DateTime = Annotated[str, BeforeValidator(lambda v: _check_datetime(v) if isinstance(v, str) else v)]


# -- models --------------------------------------------------------------------------------------------------


class _SchemaModel(BaseModel):
    """Common rules of every object in the schema: strict types, no unknown keys, no nulls."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        populate_by_name=True,
        serialize_by_alias=True,
        frozen=True,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        # Runs only for keys present in the input, so "absent" (None default) stays allowed.
        if value is None:
            raise PydanticCustomError("null_not_allowed", "Input should not be null")
        return value


class DockerImage(_SchemaModel):
    """Named docker image (``{"type": "docker-image", "name": ...}``); a bare string means the same."""

    type: Literal["docker-image"]
    name: str


class IndexedImage(_SchemaModel):
    """Image tarball artifact of the task an index namespace points to."""

    type: Literal["indexed-image"]
    namespace: str
    path: str


class TaskImage(_SchemaModel):
    """Image tarball artifact of a given task."""

    type: Literal["task-image"]
    task_id: str = Field(alias="taskId")
    path: str


_IMAGE_TAGS = ("string", "docker-image", "indexed-image", "task-image")


def _image_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "string"
    if isinstance(value, DockerImage | IndexedImage | TaskImage):
        return value.type
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in _IMAGE_TAGS[1:]:
            return kind
    return None


#: The schema's ``image`` ``oneOf``.  The object forms are told apart by ``type`` (their ``enum`` values are
#: disjoint), so the first matching branch is also the only one, exactly as ``oneOf`` requires.
ImageSpec = Annotated[
    Annotated[str, Tag("string")]
    | Annotated[DockerImage, Tag("docker-image")]
    | Annotated[IndexedImage, Tag("indexed-image")]
    | Annotated[TaskImage, Tag("task-image")],
    Discriminator(
        _image_tag,
        custom_error_type="image_type",
        custom_error_message=(
            "Input should be an image name or an object with type docker-image, indexed-image or task-image"
        ),
    ),
]


class Artifact(_SchemaModel):
    type: Literal["file", "directory", "volume"] = Field(title="Artifact upload type.")
    path: str = Field(title="Location of artifact in container, as an absolute path.")
    expires: _DateTime | None = Field(
        default=None,
        title="Date when artifact should expire must be in the future.",
        json_schema_extra={"format": "date-time"},
    )

    @property
    def expires_datetime(self) -> dt.datetime | None:
        return None if self.expires is None else parse_rfc3339_datetime(self.expires)


class Devices(_SchemaModel):
    """Host devices; every key is optional and has no default (docker-worker acts on each key present)."""

    loopback_video: bool | None = Field(default=None, alias="loopbackVideo", title="Loopback Video device")
    loopback_audio: bool | None = Field(default=None, alias="loopbackAudio", title="Loopback Audio device")
    host_shared_memory: bool | None = Field(
        default=None, alias="hostSharedMemory", title="Host shared memory device (Experimental)"
    )
    kvm: bool | None = Field(default=None, title="/dev/kvm device (Experimental)")


class Capabilities(_SchemaModel):
    privileged: bool = Field(default=False, title="Privileged container")
    disable_seccomp: bool = Field(
        default=False,
        alias="disableSeccomp",
        title="Container does not have a seccomp profile set. NO LONGER SUPPORTED IN DOCKER WORKER.",
    )
    devices: Devices | None = Field(default=None, title="Devices to be attached to task containers")


class OnExitStatus(_SchemaModel):
    retry: list[JsonInt] | None = Field(default=None, title="Retriable exit statuses")
    purge_caches: list[JsonInt] | None = Field(default=None, alias="purgeCaches", title="Purge caches exit status")


class Features(_SchemaModel):
    """Feature flags with the schema's defaults (``bulkLog`` defaults to true here, as in the schema)."""

    local_live_log: bool = Field(default=True, alias="localLiveLog", title="Enable live logging (worker local)")
    bulk_log: bool = Field(default=True, alias="bulkLog", title="Bulk upload the task log into a single artifact")
    taskcluster_proxy: bool = Field(default=False, alias="taskclusterProxy", title="Taskcluster auth proxy service")
    artifacts: bool = Field(default=True, title="Artifact uploads")
    interactive: bool = Field(default=False, title="Docker Exec Interactive")
    allow_ptrace: bool = Field(default=False, alias="allowPtrace", title="Allow ptrace within the container")
    chain_of_trust: bool = Field(
        default=False,
        alias="chainOfTrust",
        title="Enable generation of ed25519-signed Chain of Trust artifacts",
    )

    def requested(self) -> dict[str, bool]:
        """The features the payload names explicitly, by schema name, with their values."""
        return {
            (type(self).model_fields[name].alias or name): bool(getattr(self, name)) for name in self.model_fields_set
        }


class DockerPayload(_SchemaModel):
    """``.payload`` of a docker-worker task."""

    model_config = ConfigDict(title="Docker worker payload")

    log: str = Field(default="public/logs/live.log", title="Livelog artifact name")
    image: ImageSpec = Field(title="Docker image.")
    cache: dict[str, str] | None = Field(default=None, title="Caches to mount point mapping.")
    capabilities: Capabilities | None = Field(
        default=None, title="Capabilities that must be available/enabled for the task container."
    )
    command: list[str] = Field(default=[], title="Docker command to run (see docker api).")
    env: dict[str, str] | None = Field(default=None, title="Environment variable mappings.")
    max_run_time: JsonInt = Field(alias="maxRunTime", ge=1, multiple_of=1, title="Maximum run time in seconds")
    on_exit_status: OnExitStatus | None = Field(default=None, alias="onExitStatus", title="Exit status handling")
    artifacts: dict[str, Artifact] | None = Field(default=None, title="Artifacts")
    superseder_url: str | None = Field(default=None, alias="supersederUrl", title="(unused)")
    features: Features | None = Field(default=None, title="Feature flags")

    @property
    def effective_features(self) -> Features:
        """The feature flags with schema defaults, whether or not the payload had a ``features`` object."""
        return self.features if self.features is not None else Features()

    @property
    def normalized_image(self) -> DockerImage | IndexedImage | TaskImage:
        """The image as an object: docker-worker treats a bare string as ``docker-image``."""
        if isinstance(self.image, str):
            return DockerImage(type="docker-image", name=self.image)
        return self.image


# -- public entry points -------------------------------------------------------------------------------------


class PayloadError(payloads.PayloadError):
    """The payload does not satisfy the docker-worker schema.

    ``errors`` holds ``(dotted path, message)`` pairs, e.g. ``("onExitStatus.retry.0", "Input should be a
    valid integer")``; the path of an error about the payload as a whole is ``"(root)"``.
    """

    heading = "payload does not match the docker-worker schema:"


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    # The image union's branch tag is pydantic bookkeeping, not a payload key.
    if len(parts) >= 2 and parts[0] == "image" and parts[1] in _IMAGE_TAGS:
        del parts[1]
    return ".".join(str(p) for p in parts) or "(root)"


def validate_payload(data: object) -> DockerPayload:
    """Validate a decoded JSON payload; raise :class:`PayloadError` listing every problem found."""
    try:
        return DockerPayload.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False, include_input=False):
            item = (_dotted(err["loc"]), err["msg"])
            if item not in errors:
                errors.append(item)
        raise PayloadError(errors) from None


def payload_json_schema() -> dict[str, Any]:
    """The model's JSON Schema (draft 2020-12 as pydantic writes it), for ``show-payload-schema``."""
    return payloads.payload_schema(DockerPayload)
