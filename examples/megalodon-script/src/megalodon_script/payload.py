"""The ``script`` payload: a pydantic model (unknown fields refused), its JSON schema and field errors.

It follows the executors' convention (``validate_payload`` raising the core's
:class:`~megalodon_core.payloads.PayloadError`, ``payload_json_schema``), so ``hooks.py`` gets the
``validate-payload`` and ``show-payload-schema`` callables from
:func:`~megalodon_core.contracts.payload_module_hooks`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from megalodon_core.artifacts import check_artifact_name, check_artifact_path
from megalodon_core.errors import MalformedPayload
from megalodon_core.payloads import PayloadError, payload_schema

__all__ = ["PayloadError", "ScriptPayload", "payload_json_schema", "validate_payload"]


class Artifact(BaseModel):
    """A file the script leaves in the task directory, published as ``name``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Artifact name, e.g. public/build/out.txt")
    path: str = Field(description="File path relative to the task directory")


class ScriptPayload(BaseModel):
    """What a task of the ``script`` executor asks for."""

    model_config = ConfigDict(extra="forbid")

    script: str = Field(min_length=1, description="Run by /bin/sh -c in the task directory")
    maxRunTime: int = Field(ge=1, le=86400, description="Seconds before the script is killed and the task fails")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for the script")
    artifacts: list[Artifact] = Field(default_factory=list)
    features: dict[str, bool] = Field(
        default_factory=dict,
        description="megalodon features by name (taskclusterProxy, liveLog, chainOfTrust...); liveLog is on "
        "unless set to false",
    )


def validate_payload(raw: Any) -> ScriptPayload:
    """Validate ``raw``; raise :class:`PayloadError` naming every offending field."""
    try:
        payload = ScriptPayload.model_validate(raw)
    except ValidationError as exc:
        raise PayloadError([(".".join(str(p) for p in e["loc"]) or "(root)", e["msg"]) for e in exc.errors()]) from None
    problems: list[tuple[str, str]] = []
    for i, artifact in enumerate(payload.artifacts):
        for check, value, field in (
            (check_artifact_name, artifact.name, f"artifacts.{i}.name"),
            (check_artifact_path, artifact.path, f"artifacts.{i}.path"),
        ):
            try:
                check(value, field)
            except MalformedPayload as exc:
                problems.append((field, exc.message))
    if problems:
        raise PayloadError(problems)
    return payload


def payload_json_schema() -> dict[str, Any]:
    return payload_schema(ScriptPayload)
