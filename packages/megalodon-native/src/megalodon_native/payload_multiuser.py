"""generic-worker's *multiuser* posix payload (``multiuser_posix.yml``).

It is the insecure payload plus two feature flags: ``chainOfTrust`` (signed artifacts; the chain-of-trust
feature reads ``payload.features.chain_of_trust``) and ``runTaskAsCurrentUser`` (commands run as the
worker's user instead of the fresh task user).  Everything else, including the gojsonschema-worded errors,
is shared with :mod:`megalodon_native.payload`, so both engines judge the common fields identically.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, StrictBool, ValidationError

from .payload import Features, NativePayload, PayloadError, _describe, _drop_default, _SchemaExport


class MultiuserFeatures(Features):
    """The insecure feature flags plus the two only the multiuser engine offers."""

    model_config = ConfigDict(title="Feature flags")

    chain_of_trust: StrictBool = Field(False, alias="chainOfTrust", json_schema_extra=_drop_default)
    run_task_as_current_user: StrictBool = Field(False, alias="runTaskAsCurrentUser", json_schema_extra=_drop_default)


class MultiuserPayload(NativePayload):
    """The generic-worker branch of ``multiuser_posix.yml``."""

    model_config = ConfigDict(title="Generic worker payload")

    features: MultiuserFeatures = Field(default_factory=MultiuserFeatures)


def validate_multiuser_payload(data: object) -> MultiuserPayload:
    """Validate as ``multiuser_posix.yml``'s generic-worker branch would (schema names only, as insecure)."""
    try:
        return MultiuserPayload.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise PayloadError([_describe(error) for error in exc.errors()]) from exc


def multiuser_payload_json_schema() -> dict[str, Any]:
    """The multiuser payload schema derived from the model (printed in the task log on invalid payloads)."""
    return MultiuserPayload.model_json_schema(by_alias=True, schema_generator=_SchemaExport)
