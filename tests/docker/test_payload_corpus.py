"""The payload model must accept and reject exactly what docker-worker's official schema does.

Every ``corpus/*.json`` payload is checked by both the official ``payload.yml`` (with jsonschema and a
strict RFC 3339 ``date-time`` check written here, independently of the model's) and by
:func:`validate_payload`; the verdicts must agree with each other and with the file name prefix.
"""

from __future__ import annotations

import calendar
import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from megalodon_docker.payload import (
    DockerImage,
    DockerPayload,
    Features,
    PayloadError,
    TaskImage,
    payload_json_schema,
    validate_payload,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.json"))

_DATE_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)\Z"
)


def strict_rfc3339(value: object) -> bool:
    """RFC 3339 section 5.6 ``date-time``, with real calendar days; non-strings are not our business."""
    if not isinstance(value, str):
        return True
    m = _DATE_TIME.match(value)
    if m is None:
        return False
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    return year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(strict_rfc3339)
    return checker


@pytest.fixture(scope="module")
def official_schema(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "reference" / "docker-worker" / "payload.yml"
    schema: dict[str, Any] = yaml.safe_load(path.read_text())
    return schema


@pytest.fixture(scope="module")
def official_validator(official_schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(official_schema)
    assert cls is jsonschema.Draft6Validator
    cls.check_schema(official_schema)
    return cls(official_schema, format_checker=_format_checker())


def _official_error_paths(validator: jsonschema.protocols.Validator, data: object) -> set[str]:
    """Dotted paths of the official errors, naming the offending key for required/additionalProperties."""
    paths: set[str] = set()
    for error in validator.iter_errors(data):
        base = [str(p) for p in error.absolute_path]
        keys: list[str] = []
        if error.validator == "required" and isinstance(error.instance, dict):
            keys = [k for k in error.validator_value if k not in error.instance]
        elif error.validator == "additionalProperties" and error.validator_value is False:
            keys = [k for k in error.instance if k not in error.schema.get("properties", {})]
        for path in [[*base, k] for k in keys] or [base]:
            paths.add(".".join(path) or "(root)")
    return paths


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def test_corpus_is_big_enough() -> None:
    valid = [f for f in CORPUS_FILES if f.name.startswith("valid-")]
    invalid = [f for f in CORPUS_FILES if f.name.startswith("invalid-")]
    assert len(CORPUS_FILES) >= 45
    assert len(valid) + len(invalid) == len(CORPUS_FILES), "corpus files must start with valid- or invalid-"
    assert len([f for f in valid if f.name.startswith("valid-d2g-")]) >= 20
    assert len(invalid) >= 40


def test_corpus_holds_every_d2g_payload(shared_dir: Path) -> None:
    """The harvested files must still match the reference (re-run harvest_corpus.py when it changes)."""
    harvested = [json.loads(f.read_text()) for f in CORPUS.glob("valid-d2g-*.json")]
    cases_dir = shared_dir / "reference" / "docker-worker" / "d2g-testcases"
    count = 0
    for case_file in sorted(cases_dir.glob("*.yml")):
        suite = yaml.safe_load(case_file.read_text()).get("testSuite")
        if not isinstance(suite, dict):
            continue
        payloads = [c["dockerWorkerTaskPayload"] for c in suite.get("payloadTests") or []]
        payloads += [c["dockerWorkerTaskDefinition"]["payload"] for c in suite.get("taskDefTests") or []]
        for payload in payloads:
            count += 1
            assert payload in harvested, f"a payload of {case_file.name} is missing from the corpus"
    assert count >= 30


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_model_agrees_with_official_schema(path: Path, official_validator: jsonschema.protocols.Validator) -> None:
    data = json.loads(path.read_text())
    official_errors = _official_error_paths(official_validator, data)
    try:
        validate_payload(data)
        model_errors: set[str] = set()
    except PayloadError as exc:
        assert exc.errors, "PayloadError without errors"
        model_errors = {p for p, _ in exc.errors}

    expected_valid = path.name.startswith("valid-")
    assert (not official_errors) == expected_valid, f"official schema disagrees with the name: {official_errors}"
    assert (not model_errors) == expected_valid, f"model disagrees with the name: {model_errors}"
    # Both must blame the same places (up to depth: ``image`` vs ``image.name``).
    for p in official_errors:
        assert any(_related(p, q) for q in model_errors), f"official error at {p} not reported: {model_errors}"
    for q in model_errors:
        assert any(_related(p, q) for p in official_errors), f"model error at {q} unknown to the schema"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_exported_schema_agrees(path: Path) -> None:
    """``show-payload-schema`` output must describe the same language as the official schema."""
    exported = payload_json_schema()
    validator = jsonschema.Draft202012Validator(exported, format_checker=_format_checker())
    data = json.loads(path.read_text())
    assert validator.is_valid(data) == path.name.startswith("valid-")


# -- structure: the model has every part of the official schema --------------------------------------------


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        node: Any = root
        for part in ref.split("#/", 1)[1].split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _compare(
    official: dict[str, Any], ours: dict[str, Any], o_root: dict[str, Any], m_root: dict[str, Any], where: str
) -> None:
    official, ours = _resolve(official, o_root), _resolve(ours, m_root)
    for key in ("type", "default", "minimum", "multipleOf", "format", "required"):
        o_val, m_val = official.get(key), ours.get(key)
        if key == "required":
            o_val, m_val = sorted(o_val or []), sorted(m_val or [])
        assert o_val == m_val, f"{where}: {key} differs: {o_val!r} vs {m_val!r}"
    if "enum" in official:
        assert sorted(official["enum"]) == sorted(ours.get("enum") or [ours.get("const")]), where
    if official.get("type") == "object":
        o_add, m_add = official.get("additionalProperties"), ours.get("additionalProperties")
        if isinstance(o_add, dict):
            assert isinstance(m_add, dict), where
            _compare(o_add, m_add, o_root, m_root, f"{where}.*")
        else:
            assert o_add is False and m_add is False, f"{where}: additionalProperties"
        assert set(official.get("properties", {})) == set(ours.get("properties", {})), where
        for name, sub in official.get("properties", {}).items():
            _compare(sub, ours["properties"][name], o_root, m_root, f"{where}.{name}")
    if official.get("type") == "array":
        _compare(official["items"], ours["items"], o_root, m_root, f"{where}[]")
    if "oneOf" in official:
        assert len(official["oneOf"]) == len(ours["oneOf"]), where
        for i, (o_sub, m_sub) in enumerate(zip(official["oneOf"], ours["oneOf"], strict=True)):
            _compare(o_sub, m_sub, o_root, m_root, f"{where}[{i}]")


def test_exported_schema_mirrors_official(official_schema: dict[str, Any]) -> None:
    exported = payload_json_schema()
    _compare(official_schema, exported, official_schema, exported, "payload")
    assert "null" not in json.dumps(exported)


# -- model behaviour -----------------------------------------------------------------------------------------


def test_defaults_follow_schema() -> None:
    p = validate_payload({"image": "busybox", "maxRunTime": 30})
    assert p.log == "public/logs/live.log"
    assert p.command == []
    assert p.features is None and p.capabilities is None and p.on_exit_status is None
    assert p.effective_features == Features()
    assert p.normalized_image == DockerImage(type="docker-image", name="busybox")

    p = validate_payload({"image": "busybox", "maxRunTime": 30, "features": {"bulkLog": False}, "capabilities": {}})
    assert p.features is not None
    assert p.features.requested() == {"bulkLog": False}
    assert (p.features.local_live_log, p.features.artifacts, p.features.chain_of_trust) == (True, True, False)
    assert p.capabilities is not None
    assert (p.capabilities.privileged, p.capabilities.disable_seccomp, p.capabilities.devices) == (
        False,
        False,
        None,
    )


def test_integral_float_becomes_int() -> None:
    p = validate_payload({"image": "x", "maxRunTime": 60.0, "onExitStatus": {"retry": [3.0]}})
    assert p.max_run_time == 60 and isinstance(p.max_run_time, int)
    assert p.on_exit_status is not None and p.on_exit_status.retry == [3]


def test_aliases_round_trip() -> None:
    data = {
        "image": {"type": "task-image", "taskId": "abc", "path": "public/image.tar"},
        "maxRunTime": 5,
        "artifacts": {"a": {"type": "file", "path": "/a", "expires": "2030-01-01T00:00:00Z"}},
        "onExitStatus": {"purgeCaches": [2]},
        "supersederUrl": "u",
    }
    p = validate_payload(data)
    assert isinstance(p.image, TaskImage) and p.image.task_id == "abc"
    assert p.artifacts is not None and p.artifacts["a"].expires_datetime is not None
    dumped = p.model_dump(exclude_unset=True)
    assert dumped == data
    # Python code may build payloads by attribute name; the JSON entry point may not.
    assert DockerPayload(image="x", max_run_time=5).max_run_time == 5
    with pytest.raises(PayloadError):
        validate_payload({"image": "x", "max_run_time": 5})


def test_errors_are_listed_with_paths() -> None:
    with pytest.raises(PayloadError) as info:
        validate_payload(
            {
                "image": {"type": "docker-image"},
                "maxRunTime": "hello",
                "onExitStatus": {"retry": ["1"]},
                "features": {"dind": True},
                "artifacts": {"public/x": {"type": "file", "path": "/x", "expires": "soon"}},
            }
        )
    err = info.value
    assert isinstance(err, ValueError)
    paths = dict(err.errors)
    assert set(paths) == {
        "image.name",
        "maxRunTime",
        "onExitStatus.retry.0",
        "features.dind",
        "artifacts.public/x.expires",
    }
    assert "RFC 3339" in paths["artifacts.public/x.expires"]
    assert "onExitStatus.retry.0" in str(err)


def test_root_error_path() -> None:
    with pytest.raises(PayloadError) as info:
        validate_payload(["not", "an", "object"])
    assert info.value.errors[0][0] == "(root)"
