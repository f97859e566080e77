"""The multiuser payload model must accept exactly what generic-worker's official ``multiuser_posix.yml`` does.

Same method as ``test_payload_corpus.py`` (two independent verdicts per file, expected verdict in the file
name), with the multiuser schema and corpus; the insecure corpus was copied in, so every common field is
judged again under the multiuser schema (``invalid-features-multiuser-only`` becomes ``valid-``: those flags
are exactly what this schema adds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from megalodon_native.payload import PayloadError, validate_payload
from megalodon_native.payload_multiuser import (
    MultiuserPayload,
    multiuser_payload_json_schema,
    validate_multiuser_payload,
)

from .test_payload_corpus import _format_checker, _shared_reference, _validator_class

CORPUS = Path(__file__).parent / "corpus_multiuser"
CORPUS_FILES = sorted(CORPUS.glob("*.json"))


@pytest.fixture(scope="module")
def official() -> dict[str, Any]:
    path = _shared_reference() / "generic-worker" / "multiuser_posix.yml"
    if not path.is_file():
        pytest.fail(f"official payload schema missing: {path}")
    schema: dict[str, Any] = yaml.safe_load(path.read_text())
    return schema


@pytest.fixture(scope="module")
def validator(official: dict[str, Any]) -> jsonschema.protocols.Validator:
    branches = [b for b in official["oneOf"] if b.get("title") == "Generic worker payload"]
    assert len(branches) == 1
    schema = {"$schema": official["$schema"], **branches[0], "definitions": official["definitions"]}
    cls = _validator_class(official)
    cls.check_schema(schema)
    return cls(schema, format_checker=_format_checker())


def _model_accepts(document: object) -> bool:
    try:
        validate_multiuser_payload(document)
    except PayloadError:
        return False
    return True


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS_FILES) >= 40
    assert all(p.name.startswith(("valid-", "invalid-")) for p in CORPUS_FILES)
    assert sum(p.name.startswith(("valid-mu-", "invalid-mu-")) for p in CORPUS_FILES) >= 10


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_file(path: Path, validator: jsonschema.protocols.Validator) -> None:
    document = json.loads(path.read_text())
    schema_accepts = validator.is_valid(document)
    errors = [] if schema_accepts else [e.message for e in validator.iter_errors(document)]
    assert schema_accepts == path.name.startswith("valid-"), f"official schema disagrees with the name: {errors}"
    assert _model_accepts(document) == schema_accepts


def test_exported_schema_judges_the_corpus_like_the_official_one(validator: jsonschema.protocols.Validator) -> None:
    exported = multiuser_payload_json_schema()
    features = exported["$defs"]["MultiuserFeatures"]["properties"]
    assert {"chainOfTrust", "runTaskAsCurrentUser"} <= set(features)
    check = jsonschema.Draft202012Validator(exported, format_checker=_format_checker())
    for path in CORPUS_FILES:
        document = json.loads(path.read_text())
        assert check.is_valid(document) == validator.is_valid(document), path.name


def test_multiuser_flags_default_off_and_insecure_model_still_refuses_them() -> None:
    payload = validate_multiuser_payload({"command": [["true"]], "maxRunTime": 1})
    assert isinstance(payload, MultiuserPayload)
    assert payload.features.chain_of_trust is False
    assert payload.features.run_task_as_current_user is False
    assert payload.features.live_log is True
    with pytest.raises(PayloadError):
        validate_payload({"command": [["true"]], "maxRunTime": 1, "features": {"chainOfTrust": True}})
