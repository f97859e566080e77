"""A malformed native payload's log shows generic-worker's published schema, as its ``validateJSON`` does.

The schema is the official YAML shipped as package data, rendered like generic-worker's ``JSONSchema()``
(Go's ``json.MarshalIndent``: sorted keys, two-space indent, ``<``/``>``/``&`` escaped).  The package data is
checked against the reference copy in ``../shared/reference/generic-worker/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from megalodon_core.testing import Harness
from megalodon_native.payload import published_schema

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "generic-worker"


@pytest.mark.parametrize("name", ["insecure_posix.yml", "multiuser_posix.yml"])
def test_package_data_is_the_published_schema(name: str) -> None:
    text = published_schema(name)
    assert json.loads(text) == yaml.safe_load((REFERENCE / name).read_text())
    assert text.startswith('{\n  "$id": "/schemas/generic-worker/')  # sorted keys, two-space indent
    assert "\\u003cartifact-name\\u003e" in text and "<" not in text and ">" not in text


async def test_malformed_payload_log_shows_the_published_schema(harness: Harness) -> None:
    out = await harness.run({"command": "not a list of commands", "maxRunTime": 30})
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    error_lines = [line.removeprefix("[taskcluster:error] ") for line in out.log.splitlines()]
    start = error_lines.index("Task payload for this worker type must conform to the following jsonschema:")
    schema_lines = published_schema("insecure_posix.yml").splitlines()
    # every line of the schema is in the log, in order, each an error line as generic-worker writes it
    assert error_lines[start + 1 : start + 1 + len(schema_lines)] == schema_lines
    assert "$defs" not in out.log  # not the pydantic model's own dump
    assert error_lines[start + 1 + len(schema_lines)] == "TASK FAIL since the task payload is invalid. See errors:"
