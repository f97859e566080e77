"""What every executor's payload model shares: the field-level error class and the JSON-schema export.

Executors validate payloads with their own pydantic models (mirroring the official schemas); these two
pieces are the same for all of them, so they live here once.  ``megalodon validate-payload`` and
:func:`megalodon_core.contracts.payload_module_hooks` rely on the ``errors`` attribute.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["OptionalAsAbsentSchema", "PayloadError", "payload_schema"]


class PayloadError(ValueError):
    """A payload that does not conform to its executor's schema; the task resolves malformed-payload.

    ``errors`` holds ``(dotted field path, message)`` pairs (``"(root)"`` for the payload as a whole), so a
    task log and ``validate-payload`` can name each field.  A subclass may set :attr:`heading` to introduce
    the list (the errors are then indented under it).
    """

    heading: ClassVar[str] = ""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        if self.heading:
            super().__init__(self.heading + "\n" + "\n".join(f"  {path}: {message}" for path, message in errors))
        else:
            super().__init__("\n".join(f"{path}: {message}" for path, message in errors))


class OptionalAsAbsentSchema(GenerateJsonSchema):
    """Exports optional properties as the official schemas have them: absent or typed, never ``null``.

    The models spell "may be absent" as ``X | None = None``; none of the official schemas accepts ``null``,
    so the export drops the ``null`` branch and the ``None`` default.
    """

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        result = super().default_schema(schema)
        if "default" in result and result["default"] is None:
            del result["default"]
        return result


def payload_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a payload model, by schema (alias) names, for ``show-payload-schema``."""
    return model.model_json_schema(by_alias=True, schema_generator=OptionalAsAbsentSchema)
