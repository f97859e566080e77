"""Request-body schemas (hand-written subsets of the services' JSON schemas).

Only what changes behaviour is modelled: required fields, enums, identifier
patterns and bounds. Errors are reported in ajv's wording so that messages look
like the real ``InputValidationError`` bodies.
"""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import jsonschema.exceptions  # type: ignore[import-untyped]

from .errors import TaskclusterError
from .timeutil import parse_iso

SLUGID = "^[A-Za-z0-9_-]{8}[Q-T][A-Za-z0-9_-][CGKOSWaeimquy26-][A-Za-z0-9_-]{10}[AQgw]$"
IDENTIFIER = {"type": "string", "minLength": 1, "maxLength": 38, "pattern": "^([a-zA-Z0-9-_]*)$"}
PROJECT_ID = {"type": "string", "minLength": 1, "maxLength": 500, "pattern": "^([a-zA-Z0-9._/-]*)$"}
DATE_TIME = {"type": "string", "format": "date-time"}
SCOPE = {"type": "string", "pattern": "^[\x20-\x7e]*$"}
PRIORITIES = ["highest", "very-high", "high", "medium", "low", "very-low", "lowest", "normal"]
EXCEPTION_REASONS = [
    "worker-shutdown",
    "malformed-payload",
    "resource-unavailable",
    "internal-error",
    "intermittent-task",
]
ERROR_ARTIFACT_REASONS = [
    "file-missing-on-worker",
    "invalid-resource-on-worker",
    "too-large-file-on-worker",
    "file-not-readable-on-worker",
]


def _obj(properties: dict[str, Any], required: list[str], extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": extra,
    }


CREATE_TASK = _obj(
    {
        "provisionerId": {"type": "string", "pattern": "^[a-zA-Z0-9-_]{1,38}$"},
        "workerType": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,36}[a-z0-9])?$"},
        "taskQueueId": {
            "type": "string",
            "pattern": "^[a-zA-Z0-9-_]{1,38}/[a-z]([-a-z0-9]{0,36}[a-z0-9])?$",
        },
        "schedulerId": IDENTIFIER,
        "projectId": PROJECT_ID,
        "taskGroupId": {"type": "string", "pattern": SLUGID},
        "dependencies": {
            "type": "array",
            "items": {"type": "string", "pattern": SLUGID},
            "maxItems": 10000,
            "uniqueItems": True,
        },
        "requires": {"type": "string", "enum": ["all-completed", "all-resolved"]},
        "routes": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 249},
            "maxItems": 64,
            "uniqueItems": True,
        },
        "priority": {"type": "string", "enum": PRIORITIES},
        "retries": {"type": "integer", "minimum": 0, "maximum": 49},
        "created": DATE_TIME,
        "deadline": DATE_TIME,
        "expires": DATE_TIME,
        "scopes": {"type": "array", "items": SCOPE},
        "payload": {"type": "object"},
        "metadata": _obj(
            {
                "name": {"type": "string", "maxLength": 255},
                "description": {"type": "string", "maxLength": 32768},
                "owner": {"type": "string", "maxLength": 255},
                "source": {
                    "type": "string",
                    "maxLength": 4096,
                    "pattern": "^(https?://|ssh://|git@)",
                },
            },
            ["name", "description", "owner", "source"],
        ),
        "tags": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 4096}},
        "extra": {"type": "object"},
    },
    ["created", "deadline", "payload", "metadata"],
)

CLAIM_WORK = _obj(
    {
        "workerGroup": IDENTIFIER,
        "workerId": IDENTIFIER,
        "tasks": {"type": "integer", "minimum": 1, "maximum": 32},
    },
    ["workerGroup", "workerId", "tasks"],
)

TASK_EXCEPTION = _obj({"reason": {"type": "string", "enum": EXCEPTION_REASONS}}, ["reason"])


def _artifact(kind: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return _obj(
        {"storageType": {"type": "string", "enum": [kind]}, "expires": DATE_TIME, **props},
        ["storageType", "expires", *required],
    )


POST_ARTIFACT = {
    "oneOf": [
        _artifact(
            "s3",
            {"contentType": {"type": "string", "maxLength": 255}, "contentLength": {"type": "integer"}},
            ["contentType"],
        ),
        _artifact(
            "object",
            {"contentType": {"type": "string", "maxLength": 255}, "contentLength": {"type": "integer"}},
            ["contentType"],
        ),
        _artifact(
            "reference",
            {"contentType": {"type": "string", "maxLength": 255}, "url": {"type": "string"}},
            ["url", "contentType"],
        ),
        _artifact(
            "link",
            {"contentType": {"type": "string", "maxLength": 255}, "artifact": {"type": "string"}},
            ["artifact"],
        ),
        _artifact(
            "error",
            {
                "reason": {"type": "string", "enum": ERROR_ARTIFACT_REASONS},
                "message": {"type": "string", "maxLength": 4096},
            },
            ["reason", "message"],
        ),
    ]
}

FINISH_ARTIFACT = _obj({"uploadId": {"type": "string", "pattern": SLUGID}}, ["uploadId"])

HASHES = {
    "type": "object",
    "properties": {
        "sha256": {"type": "string", "pattern": "^[a-z0-9]{64}$"},
        "sha512": {"type": "string", "pattern": "^[a-z0-9]{128}$"},
    },
    "additionalProperties": False,
}

CREATE_UPLOAD = _obj(
    {
        "projectId": PROJECT_ID,
        "uploadId": {"type": "string", "pattern": SLUGID},
        "expires": DATE_TIME,
        "hashes": HASHES,
        "proposedUploadMethods": _obj(
            {
                "dataInline": _obj(
                    {"contentType": {"type": "string"}, "objectData": {"type": "string"}},
                    ["contentType", "objectData"],
                ),
                "putUrl": _obj(
                    {
                        "contentType": {"type": "string"},
                        "contentLength": {"type": "integer", "minimum": 0},
                    },
                    ["contentType", "contentLength"],
                ),
            },
            [],
        ),
    },
    ["projectId", "uploadId", "expires", "proposedUploadMethods"],
)

FINISH_UPLOAD = _obj(
    {"projectId": PROJECT_ID, "uploadId": {"type": "string", "pattern": SLUGID}, "hashes": HASHES},
    ["uploadId", "projectId"],
)

START_DOWNLOAD = _obj(
    {
        "acceptDownloadMethods": _obj(
            {"simple": {"type": "boolean", "enum": [True]}, "getUrl": {"type": "boolean", "enum": [True]}},
            [],
        )
    },
    ["acceptDownloadMethods"],
)

INSERT_TASK = _obj(
    {
        "taskId": {"type": "string", "pattern": SLUGID},
        "rank": {"type": "number"},
        "data": {"type": "object"},
        "expires": DATE_TIME,
    },
    ["taskId", "rank", "data", "expires"],
)

SECRET = _obj({"secret": {"type": "object"}, "expires": DATE_TIME}, ["secret", "expires"])

SCOPE_SET = _obj({"scopes": {"type": "array", "items": SCOPE, "uniqueItems": True}}, ["scopes"])

_FORMAT_CHECKER = jsonschema.FormatChecker([])


@_FORMAT_CHECKER.checks("date-time", raises=ValueError)  # type: ignore[untyped-decorator]
def _is_date_time(value: object) -> bool:
    """RFC 3339 check without the optional rfc3339-validator dependency."""
    if isinstance(value, str):
        if "T" not in value.upper():
            return False
        parse_iso(value)
    return True


def _describe(error: jsonschema.exceptions.ValidationError) -> list[str]:
    """Render one jsonschema error the way ajv (used by taskcluster-lib-api) words it."""
    where = "/".join(["data", *(str(p) for p in error.absolute_path)])
    v = error.validator
    if v == "oneOf" and error.context:
        lines = [line for sub in error.context for line in _describe(sub)]
        return [*lines, f"{where} must match exactly one schema in oneOf"]
    if v == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [f"{where} must have required property '{missing}'"]
    if v == "additionalProperties":
        extras = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return [f'{where} must NOT have additional properties: "{e}"' for e in extras]
    if v == "enum":
        return [f"{where} must be equal to one of the allowed values"]
    if v == "type":
        return [f"{where} must be {error.validator_value}"]
    if v == "minimum":
        return [f"{where} must be >= {error.validator_value}"]
    if v == "maximum":
        return [f"{where} must be <= {error.validator_value}"]
    if v == "pattern":
        return [f'{where} must match pattern "{error.validator_value}"']
    if v == "format":
        return [f'{where} must match format "{error.validator_value}"']
    return [f"{where} {error.message}"]


def validate(schema: dict[str, Any], schema_url: str, body: Any) -> None:
    """Raise ``InputValidationError`` (400) if ``body`` does not satisfy ``schema``."""
    validator = jsonschema.Draft7Validator(schema, format_checker=_FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    lines = [line for err in errors for line in _describe(err)]
    text = "\n".join(f"  * {line}" for line in lines)
    raise TaskclusterError(
        "InputValidationError",
        f"\nSchema Validation Failed!\nRejecting Schema: {schema_url}\nErrors:\n{text}",
    )
