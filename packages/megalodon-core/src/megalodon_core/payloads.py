"""What every executor's payload model shares: the field-level error class and the schema export.

Executors validate payloads with their own pydantic models (mirroring the official schemas); these
pieces are the same for all of them, so they live here once.  ``megalodon validate-payload`` and
:func:`megalodon_core.contracts.payload_module_hooks` rely on the ``errors`` attribute.  Schema export is
one implementation in two forms: :func:`payload_schema` derives a schema from a model (what a third-party
executor without an official schema shows), and :class:`PublishedSchemas` renders the official schema a
peer publishes, shipped as YAML package data (what ``megalodon show-payload-schema`` and a malformed
payload's task log print for the drop-in executors).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["OptionalAsAbsentSchema", "PayloadError", "PublishedSchemas", "payload_schema", "render_published_schema"]


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


#: How a peer writes its schema as JSON: ``go`` is generic-worker's ``JSONSchema()`` (Go's
#: ``json.MarshalIndent`` at build time: sorted keys, ``<``/``>``/``&`` escaped); ``node`` is what the
#: Taskcluster services serve for docker-worker's (``JSON.stringify``: the YAML's own key order).
SchemaStyle = Literal["go", "node"]


@functools.cache
def render_published_schema(package: str, resource: str, style: SchemaStyle) -> str:
    """The JSON text of an official payload schema shipped as YAML package data (``package``/``resource``).

    Rendered as its peer renders it (see :data:`SchemaStyle`), two-space indent, so the text is the one a
    user of the peer knows: generic-worker's ``show-payload-schema`` and malformed-payload log.
    """
    import yaml  # here, not at import: executors' light ``hooks.py`` modules import this module

    text = resources.files(package).joinpath(*resource.split("/")).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if style == "node":
        return json.dumps(data, indent=2, ensure_ascii=False)
    rendered = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        rendered = rendered.replace(char, escaped)
    return rendered.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@dataclass(frozen=True)
class PublishedSchemas:
    """The official payload schemas of an executor's peer, one per engine, shipped as YAML package data.

    generic-worker is built once per engine and each binary prints its own engine's schema; megalodon's
    native executor serves both engines, so its schemas are keyed by engine and ``show-payload-schema``
    picks one with ``--engine`` or from the worker config's :attr:`engine_key`.
    """

    #: The package holding the files (``importlib.resources``).
    package: str
    #: Engine name -> resource path inside :attr:`package`; the first entry is the default engine.
    files: Mapping[str, str]
    style: SchemaStyle
    #: The worker config key that chooses the engine (None: one engine only).
    engine_key: str | None = None

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("PublishedSchemas needs at least one file")

    @property
    def default_engine(self) -> str:
        return next(iter(self.files))

    def text(self, engine: str | None = None) -> str:
        """The schema of ``engine`` (default: the first), as its peer writes it; KeyError for an unknown one."""
        return render_published_schema(self.package, self.files[engine or self.default_engine], self.style)
