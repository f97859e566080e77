"""The generic-worker task payload, mirroring the official ``insecure_posix.yml`` schema field for field.

The official schema's root is ``oneOf: [generic-worker payload, docker-worker payload]``. Only the
generic-worker branch is modelled here: a payload with an ``image`` key is a docker-worker payload, and the
docker executor owns that branch (its own model, plus any d2g-style translation). The two branches never
overlap, because the docker branch requires ``image`` and the generic-worker branch forbids unknown keys.

The model is deliberately as strict as the JSON schema and no stricter: JSON schema never coerces, so the
model runs in strict mode (``"5"`` is not an integer, ``true`` is not an integer, ``null`` is not "absent"),
and every keyword of the schema (``minItems``, ``uniqueItems``, ``pattern``, ``format``, ``dependencies``,
``oneOf``...) is enforced. A task whose payload we accept but generic-worker rejects (or the reverse) would
resolve differently on megalodon, which defeats the drop-in promise.

Optional properties without a schema default are ``None`` when absent; an explicit ``null`` is rejected,
as the schema does.
"""

from __future__ import annotations

import calendar
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictStr,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from megalodon_core import payloads

__all__ = [
    "Artifact",
    "ArtifactContent",
    "Base64Content",
    "Content",
    "Features",
    "FileMount",
    "IndexedContent",
    "Logs",
    "Mount",
    "NativePayload",
    "OnExitStatus",
    "PayloadError",
    "RawContent",
    "ReadOnlyDirectory",
    "URLContent",
    "WritableDirectoryCache",
    "payload_json_schema",
    "published_schema",
    "validate_payload",
]

# Patterns are copied verbatim from the schema. Pydantic evaluates them with the Rust regex engine, where
# `$` only matches at the very end, as in ECMA-262 and Go (Python's `re` would also accept a trailing "\n").
TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{8}[Q-T][A-Za-z0-9_-][CGKOSWaeimquy26-][A-Za-z0-9_-]{10}[AQgw]$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
BASE64_PATTERN = r"^[A-Za-z0-9/+]+[=]{0,2}$"

FileFormat = Literal["br", "bz2", "gz", "lz", "lz4", "mz", "sz", "xz", "zst", "zz"]
ArchiveFormat = Literal[
    "7z",
    "rar",
    "tar",
    "tar.br",
    "tar.bz2",
    "tar.gz",
    "tar.lz",
    "tar.lz4",
    "tar.mz",
    "tar.sz",
    "tar.xz",
    "tar.zst",
    "tar.zz",
    "zip",
]


class PayloadError(payloads.PayloadError):
    """A payload that does not conform to the schema; the task resolves as ``exception/malformed-payload``.

    ``errors`` holds ``(field_path, message)`` pairs with generic-worker's dotted paths so the task log reads
    the same as generic-worker's ``[taskcluster:error] - <field>: <msg>`` lines.
    """


# ---------------------------------------------------------------------------------------------------------
# Reusable constrained types


def _integral(value: object) -> object:
    # JSON has a single number type and JSON schema (draft 6+) counts 5.0 as an integer, so accept it;
    # everything else (strings, booleans, fractions) is left for strict int validation to reject.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_null(expected: str) -> BeforeValidator:
    """Reject an explicit ``null`` for a property whose absence is modelled as ``None``."""

    def check(value: object) -> object:
        if value is None:
            raise PydanticCustomError(
                "null_type", "Invalid type. Expected: {expected}, given: null", {"expected": expected}
            )
        return value

    return BeforeValidator(check)


def _canonical(value: object) -> object:
    # A hashable form under which two values are equal exactly when JSON schema calls them equal:
    # 1 == 1.0, but true != 1, and object key order is irrelevant.
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, _canonical(item)) for key, item in value.items()))
    return ("other", repr(value))


def _unique_items(value: object) -> object:
    # Checked on the raw JSON, before defaults are filled in: {"optional": false} and an absent "optional"
    # are different items to JSON schema even though they parse to equal models.
    if isinstance(value, list):
        seen: dict[object, int] = {}
        for index, item in enumerate(value):
            key = _canonical(item)
            if key in seen:
                raise PydanticCustomError(
                    "unique_items",
                    "array items[{first},{second}] must be unique",
                    {"first": seen[key], "second": index},
                )
            seen[key] = index
    return value


_UNIQUE = BeforeValidator(_unique_items)
_UNIQUE_SCHEMA = Field(json_schema_extra={"uniqueItems": True})

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)


def _check_date_time(value: str) -> str:
    # RFC 3339 section 5.6 `date-time`, as the `date-time` format requires; the offset is mandatory and
    # the day must exist in that month. Kept as the original string so nothing is lost in a round trip.
    match = _RFC3339.fullmatch(value)
    if match is not None:
        year, month, day = int(match[1]), int(match[2]), int(match[3])
        if 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]:
            return value
    raise PydanticCustomError("date_time_format", "Does not match format 'date-time'")


_URI_CHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]]|%[0-9A-Fa-f]{2})"
_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+.\-]*:{_URI_CHAR}*(?:#{_URI_CHAR}*)?")


def _check_uri(value: str) -> str:
    # RFC 3986 `URI`: an absolute reference with a scheme, made only of characters a URI may contain.
    if _URI.fullmatch(value) is None:
        raise PydanticCustomError("uri_format", "Does not match format 'uri'")
    return value


DateTime = Annotated[StrictStr, AfterValidator(_check_date_time), Field(json_schema_extra={"format": "date-time"})]
URI = Annotated[StrictStr, AfterValidator(_check_uri), Field(json_schema_extra={"format": "uri"})]
# Constraints sit on the inner `int` so they are enforced after `_integral` and appear in the exported schema.
RunTime = Annotated[int, Field(ge=1, multiple_of=1), BeforeValidator(_integral)]
RetryExitCode = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
ExitStatus = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
SHA256 = Annotated[StrictStr, Field(pattern=SHA256_PATTERN)]


def _drop_default(schema: dict[str, Any]) -> None:
    # For booleans the schema leaves without a default: absent means false (Go's zero value), but the
    # exported schema should not claim a default the official one does not have.
    schema.pop("default", None)


class _Model(BaseModel):
    """Shared settings: every object in the schema has ``additionalProperties: false`` and no coercion."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_by_name=True,
        validate_by_alias=True,
        # Exported titles read as the schema's property names rather than "Maxruntime".
        field_title_generator=lambda name, info: info.alias or name,
    )


# ---------------------------------------------------------------------------------------------------------
# Content


class ArtifactContent(_Model):
    """Content from an artifact of a task this task depends on (needs ``queue:get-artifact:<name>``)."""

    model_config = ConfigDict(title="Artifact Content")

    task_id: Annotated[StrictStr, Field(alias="taskId", pattern=TASK_ID_PATTERN)]
    artifact: Annotated[StrictStr, Field(max_length=1024)]
    sha256: Annotated[SHA256 | None, _not_null("string")] = None


class IndexedContent(_Model):
    """Content from an artifact of the task an Index namespace points to."""

    model_config = ConfigDict(title="Indexed Content")

    namespace: Annotated[StrictStr, Field(max_length=255)]
    artifact: Annotated[StrictStr, Field(max_length=1024)]


class URLContent(_Model):
    """Content downloaded over HTTP(S)."""

    model_config = ConfigDict(title="URL Content")

    url: URI
    sha256: Annotated[SHA256 | None, _not_null("string")] = None


class RawContent(_Model):
    """Literal inline content, up to 64KB."""

    model_config = ConfigDict(title="Raw Content")

    raw: Annotated[StrictStr, Field(max_length=65536)]


class Base64Content(_Model):
    """Base64 encoded inline content, up to 64KB encoded."""

    model_config = ConfigDict(title="Base64 Content")

    base64: Annotated[StrictStr, Field(max_length=65536, pattern=BASE64_PATTERN)]


def _content_kind(value: object) -> str | None:
    # Same precedence as generic-worker's `FSContentFrom`. Because every kind forbids extra keys, an object
    # valid for one kind can never carry a key that would steer it to another, so this is exactly `oneOf`.
    if isinstance(value, dict):
        for key, tag in (
            ("taskId", "ArtifactContent"),
            ("namespace", "IndexedContent"),
            ("url", "URLContent"),
            ("raw", "RawContent"),
            ("base64", "Base64Content"),
        ):
            if key in value:
                return tag
    if isinstance(value, BaseModel):
        return type(value).__name__
    return None


_ONE_OF_MESSAGE = "Must validate one and only one schema (oneOf)"

Content = Annotated[
    Annotated[ArtifactContent, Tag("ArtifactContent")]
    | Annotated[IndexedContent, Tag("IndexedContent")]
    | Annotated[URLContent, Tag("URLContent")]
    | Annotated[RawContent, Tag("RawContent")]
    | Annotated[Base64Content, Tag("Base64Content")],
    Discriminator(_content_kind, custom_error_type="one_of", custom_error_message=_ONE_OF_MESSAGE),
]


# ---------------------------------------------------------------------------------------------------------
# Mounts


class FileMount(_Model):
    """A single file, optionally decompressed from a one-stream compression format."""

    model_config = ConfigDict(title="File Mount")

    file: StrictStr
    content: Content
    format: Annotated[FileFormat | None, _not_null("string")] = None


class WritableDirectoryCache(_Model):
    """A persistent read/write cache directory, optionally seeded from an archive when first created."""

    model_config = ConfigDict(
        title="Writable Directory Cache",
        json_schema_extra={"dependentRequired": {"content": ["format"], "format": ["content"]}},
    )

    directory: StrictStr
    cache_name: Annotated[StrictStr, Field(alias="cacheName")]
    content: Annotated[Content | None, _not_null("object")] = None
    format: Annotated[ArchiveFormat | None, _not_null("string")] = None

    @model_validator(mode="after")
    def _content_and_format_together(self) -> WritableDirectoryCache:
        # The schema's `dependencies`: seeding content is useless without knowing how to unpack it.
        if self.content is not None and self.format is None:
            raise PydanticCustomError("dependency", "Has a dependency on format")
        if self.format is not None and self.content is None:
            raise PydanticCustomError("dependency", "Has a dependency on content")
        return self


class ReadOnlyDirectory(_Model):
    """A directory unpacked from an archive for this task only."""

    model_config = ConfigDict(title="Read Only Directory")

    directory: StrictStr
    content: Content
    format: ArchiveFormat


def _mount_kind(value: object) -> str | None:
    # Same precedence as generic-worker: `cacheName` marks a cache, else `directory` a read-only directory,
    # else `file`. As with content, forbidden extra keys make this choice coincide with `oneOf`.
    if isinstance(value, dict):
        if "cacheName" in value:
            return "WritableDirectoryCache"
        if "directory" in value:
            return "ReadOnlyDirectory"
        if "file" in value:
            return "FileMount"
    if isinstance(value, BaseModel):
        return type(value).__name__
    return None


Mount = Annotated[
    Annotated[FileMount, Tag("FileMount")]
    | Annotated[WritableDirectoryCache, Tag("WritableDirectoryCache")]
    | Annotated[ReadOnlyDirectory, Tag("ReadOnlyDirectory")],
    Discriminator(_mount_kind, custom_error_type="one_of", custom_error_message=_ONE_OF_MESSAGE),
]

# Tags appear in pydantic error locations but are not payload fields; they are removed from error paths.
_UNION_TAGS = frozenset(
    {
        "ArtifactContent",
        "IndexedContent",
        "URLContent",
        "RawContent",
        "Base64Content",
        "FileMount",
        "WritableDirectoryCache",
        "ReadOnlyDirectory",
    }
)


# ---------------------------------------------------------------------------------------------------------
# The payload


class Artifact(_Model):
    """A file or directory to publish; absent optional properties mean "let the worker decide"."""

    model_config = ConfigDict(title="Artifact")

    type: Literal["file", "directory"]
    path: StrictStr
    name: Annotated[StrictStr | None, _not_null("string")] = None
    expires: Annotated[DateTime | None, _not_null("string")] = None
    content_type: Annotated[StrictStr | None, _not_null("string"), Field(alias="contentType")] = None
    content_encoding: Annotated[
        Literal["identity", "gzip"] | None, _not_null("string"), Field(alias="contentEncoding")
    ] = None
    optional: StrictBool = False


class Features(_Model):
    """Feature flags; the three logging/monitoring features are on unless a task turns them off."""

    model_config = ConfigDict(title="Feature flags")

    taskcluster_proxy: StrictBool = Field(False, alias="taskclusterProxy", json_schema_extra=_drop_default)
    live_log: StrictBool = Field(True, alias="liveLog")
    backing_log: StrictBool = Field(True, alias="backingLog")
    interactive: StrictBool = Field(False, json_schema_extra=_drop_default)
    loopback_video: StrictBool = Field(False, alias="loopbackVideo", json_schema_extra=_drop_default)
    loopback_audio: StrictBool = Field(False, alias="loopbackAudio", json_schema_extra=_drop_default)
    resource_monitor: StrictBool = Field(True, alias="resourceMonitor")


class OnExitStatus(_Model):
    """Exit codes that change how the task resolves; exit code 0 can never mean "retry"."""

    model_config = ConfigDict(title="Exit code handling")

    retry: Annotated[list[RetryExitCode], _UNIQUE, _UNIQUE_SCHEMA] = Field(default_factory=list)
    purge_caches: Annotated[list[ExitStatus], _UNIQUE, _UNIQUE_SCHEMA] = Field(
        default_factory=list, alias="purgeCaches"
    )


class Logs(_Model):
    """Artifact names of the task logs."""

    model_config = ConfigDict(title="Logs")

    live: StrictStr = "public/logs/live.log"
    backing: StrictStr = "public/logs/live_backing.log"


class NativePayload(_Model):
    """The generic-worker branch of the official schema; the docker branch belongs to the docker executor."""

    model_config = ConfigDict(title="Generic worker payload")

    command: Annotated[list[Annotated[list[StrictStr], Field(min_length=1)]], Field(min_length=1)]
    max_run_time: Annotated[RunTime, Field(alias="maxRunTime")]
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    artifacts: Annotated[list[Artifact], _UNIQUE, _UNIQUE_SCHEMA] = Field(default_factory=list)
    features: Features = Field(default_factory=Features)
    mounts: list[Mount] = Field(default_factory=list)
    os_groups: Annotated[list[StrictStr], _UNIQUE, _UNIQUE_SCHEMA] = Field(default_factory=list, alias="osGroups")
    superseder_url: Annotated[StrictStr | None, _not_null("string"), Field(alias="supersederUrl")] = None
    on_exit_status: OnExitStatus = Field(default_factory=OnExitStatus, alias="onExitStatus")
    logs: Logs = Field(default_factory=Logs)
    taskcluster_proxy_interface: Literal["localhost", "docker-bridge"] = Field(
        "localhost", alias="taskclusterProxyInterface"
    )


# ---------------------------------------------------------------------------------------------------------
# Validation entry point and error reporting

_EXPECTED_TYPE = {
    "int_type": "integer",
    "int_from_float": "integer",
    "string_type": "string",
    "bool_type": "boolean",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _dotted(parts: list[str]) -> str:
    return ".".join(parts) if parts else "(root)"


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """Turn one pydantic error into gojsonschema's wording, since that is what users grep task logs for."""
    parts = [str(part) for part in error["loc"] if part not in _UNION_TAGS]
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "missing":
        return _dotted(parts[:-1]), f"{parts[-1]} is required"
    if kind == "extra_forbidden":
        return _dotted(parts[:-1]), f"Additional property {parts[-1]} is not allowed"
    path = _dotted(parts)
    if kind in _EXPECTED_TYPE:
        return path, f"Invalid type. Expected: {_EXPECTED_TYPE[kind]}, given: {_json_type(error['input'])}"
    if kind == "literal_error":
        choices = ", ".join(f'"{choice}"' for choice in re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return path, f"{path} must be one of the following: {choices}"
    if kind in ("greater_than_equal", "greater_than"):
        return path, f"Must be greater than or equal to {ctx.get('ge', ctx.get('gt'))}"
    if kind == "too_short":
        return path, f"Array must have at least {ctx.get('min_length')} items"
    if kind == "string_too_long":
        return path, f"String length must be less than or equal to {ctx.get('max_length')}"
    if kind == "string_pattern_mismatch":
        return path, f"Does not match pattern '{ctx.get('pattern')}'"
    return path, error["msg"]


def validate_payload(data: object) -> NativePayload:
    """Validate a decoded JSON payload exactly as the official schema's generic-worker branch would.

    Only schema (camelCase) names are accepted here, even though the model can also be built from Python
    names: a task payload spelling ``max_run_time`` is malformed for generic-worker, so it must be for us.
    """
    try:
        return NativePayload.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise PayloadError([_describe(error) for error in exc.errors()]) from exc


#: Kept for the multiuser model's export (one implementation, in core).
_SchemaExport = payloads.OptionalAsAbsentSchema


def payload_json_schema() -> dict[str, Any]:
    """The payload schema derived from the model, for ``megalodon show-payload-schema --executor native``."""
    return payloads.payload_schema(NativePayload)


def published_schema(file_name: str) -> str:
    """generic-worker's published payload schema, as its ``JSONSchema()`` text: what a malformed payload's log shows.

    The official YAML (``insecure_posix.yml``, ``multiuser_posix.yml``) ships as package data; core renders
    it as generic-worker's build does (:func:`megalodon_core.payloads.render_published_schema`).
    """
    return payloads.render_published_schema("megalodon_native", f"schemas/{file_name}", "go")
