"""The native payload model must accept exactly what generic-worker's official schema accepts.

Every corpus file is checked twice, by ``jsonschema`` against the official ``insecure_posix.yml`` and by the
pydantic model, and the two verdicts must agree; the file name says which verdict is expected, so a corpus
file cannot silently drift into testing nothing.
"""

from __future__ import annotations

import calendar
import importlib.util
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from megalodon_native.payload import (
    NativePayload,
    PayloadError,
    payload_json_schema,
    validate_payload,
)

CORPUS = Path(__file__).parent / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.json"))
TASK_ID = "KTBKfEgxR5GdfIIREQIvFQ"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _shared_reference() -> Path:
    """Find ``shared/reference``: beside the checkout in CI, or wherever ``MEGALODON_SHARED`` says."""
    override = os.environ.get("MEGALODON_SHARED")
    if override:
        candidate = Path(override) / "reference"
        if candidate.is_dir():
            return candidate
        pytest.fail(f"MEGALODON_SHARED={override!r} has no reference/ directory")
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "reference"
        if candidate.is_dir():
            return candidate
    pytest.fail(
        "shared/reference not found in any parent directory of this test; copy shared/ beside the "
        "checkout or set MEGALODON_SHARED to its path"
    )


def _official_schema() -> dict[str, Any]:
    path = _shared_reference() / "generic-worker" / "insecure_posix.yml"
    if not path.is_file():
        pytest.fail(f"official payload schema missing: {path}")
    schema: dict[str, Any] = yaml.safe_load(path.read_text())
    return schema


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
_URI_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?#[]%")


def _is_rfc3339(instance: object) -> bool:
    # Written independently of the model's check, so agreement means something.
    if not isinstance(instance, str):
        return True
    match = _RFC3339.fullmatch(instance)
    if match is None:
        return False
    year, month, day = (int(match[i]) for i in (1, 2, 3))
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def _is_uri(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not set(instance) <= _URI_ALLOWED or instance.count("#") > 1:
        return False
    if re.search(r"%(?![0-9A-Fa-f]{2})", instance):
        return False
    scheme = urllib.parse.urlsplit(instance).scheme
    return bool(scheme) and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme) is not None


def _format_checker() -> jsonschema.FormatChecker:
    """Check ``date-time`` and ``uri`` as gojsonschema does, even without jsonschema's optional extras."""
    checker = jsonschema.FormatChecker()
    if importlib.util.find_spec("rfc3339_validator") is None:
        checker.checks("date-time")(_is_rfc3339)
    if importlib.util.find_spec("rfc3987") is None:
        checker.checks("uri")(_is_uri)
    return checker


def _validator_class(schema: dict[str, Any]) -> type[jsonschema.protocols.Validator]:
    # Taskcluster's `/schemas/common/metaschema.json` is a draft-06 metaschema with a relative URI that
    # jsonschema cannot resolve, so map it; anything else is looked up from `$schema` as usual.
    cls: type[jsonschema.protocols.Validator]
    if str(schema.get("$schema", "")).startswith("/schemas/common/metaschema.json"):
        cls = jsonschema.Draft6Validator
    else:
        cls = jsonschema.validators.validator_for(schema)
    return cls


@pytest.fixture(scope="module")
def official() -> dict[str, Any]:
    return _official_schema()


@pytest.fixture(scope="module")
def generic_worker_validator(official: dict[str, Any]) -> jsonschema.protocols.Validator:
    """The generic-worker branch of the root ``oneOf``, the only branch the native executor handles."""
    branches = [b for b in official["oneOf"] if b.get("title") == "Generic worker payload"]
    assert len(branches) == 1, "could not find the generic-worker branch of the official schema"
    schema = {"$schema": official["$schema"], **branches[0], "definitions": official["definitions"]}
    cls = _validator_class(official)
    cls.check_schema(schema)
    return cls(schema, format_checker=_format_checker())


@pytest.fixture(scope="module")
def full_validator(official: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = _validator_class(official)
    return cls(official, format_checker=_format_checker())


def _model_accepts(document: object) -> bool:
    try:
        validate_payload(document)
    except PayloadError:
        return False
    return True


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS_FILES) >= 40
    names = [path.name for path in CORPUS_FILES]
    assert all(name.startswith(("valid-", "invalid-")) for name in names), names


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_file(path: Path, generic_worker_validator: jsonschema.protocols.Validator) -> None:
    document = json.loads(path.read_text())
    schema_accepts = generic_worker_validator.is_valid(document)
    errors = [] if schema_accepts else [e.message for e in generic_worker_validator.iter_errors(document)]
    assert schema_accepts == path.name.startswith("valid-"), f"official schema disagrees with the name: {errors}"
    assert _model_accepts(document) == schema_accepts


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_docker_branch_never_decides_corpus(
    path: Path,
    generic_worker_validator: jsonschema.protocols.Validator,
    full_validator: jsonschema.protocols.Validator,
) -> None:
    # The corpus is judged against the generic-worker branch alone; this shows the full `oneOf` would
    # have given every file the same verdict.
    document = json.loads(path.read_text())
    assert full_validator.is_valid(document) == generic_worker_validator.is_valid(document)


def test_docker_worker_payload_is_not_native(full_validator: jsonschema.protocols.Validator) -> None:
    docker_payload = {"image": "ubuntu:24.04", "command": ["true"], "maxRunTime": 600}
    assert full_validator.is_valid(docker_payload)
    with pytest.raises(PayloadError):
        validate_payload(docker_payload)


def _generated_cases() -> Iterator[tuple[str, object]]:
    """Payloads too large or too numerous to keep as corpus files: the limits of every length bound."""

    def with_content(content: dict[str, Any]) -> dict[str, Any]:
        return {"command": [["true"]], "maxRunTime": 1, "mounts": [{"file": "f", "content": content}]}

    for size in (65536, 65537):
        yield f"raw-{size}", with_content({"raw": "x" * size})
        yield f"base64-{size}", with_content({"base64": "A" * size})
    for size in (1024, 1025):
        yield f"indexed-artifact-{size}", with_content({"namespace": "n", "artifact": "a" * size})
        yield f"url-{size}", with_content({"url": "https://example.com/" + "a" * size})
    for size in (255, 256):
        yield f"namespace-unicode-{size}", with_content({"namespace": "é" * size, "artifact": "a"})
    for padding in ("", "=", "==", "==="):
        yield f"base64-padding-{len(padding)}", with_content({"base64": "QQ" + padding})
    for code in (-1, 0, 1, 255, 256, 2**31, 1.0, 0.5, True, "1", None):
        yield f"retry-{code!r}", {"command": [["true"]], "maxRunTime": 1, "onExitStatus": {"retry": [code]}}
        yield (
            f"purge-{code!r}",
            {"command": [["true"]], "maxRunTime": 1, "onExitStatus": {"purgeCaches": [code]}},
        )
    for stamp in (
        "2030-01-01T00:00:00Z",
        "2030-01-01 00:00:00Z",
        "2030-13-01T00:00:00Z",
        "2030-00-10T00:00:00Z",
        "2030-04-31T00:00:00Z",
        "2030-01-01T24:00:00Z",
        "2030-01-01T23:60:00Z",
        "2030-01-01T23:59:60Z",
        "2030-01-01T00:00:00.Z",
        "2030-01-01T00:00:00+24:00",
        "2030-01-01T00:00:00+0100",
        "2000-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
    ):
        artifact = {"type": "file", "path": "a", "expires": stamp}
        yield f"expires-{stamp}", {"command": [["true"]], "maxRunTime": 1, "artifacts": [artifact]}
    for url in (
        "https://example.com/a b",
        "https://example.com/%zz",
        "ftp://x",
        "HTTP://X/%41",
        "x:",
        "://x",
    ):
        yield f"url-{url}", with_content({"url": url})
    for task_id in (TASK_ID, TASK_ID[:-1] + "B", TASK_ID + "A", "--------Q-C----------A"):
        yield f"task-id-{task_id}", with_content({"taskId": task_id, "artifact": "a"})


GENERATED = list(_generated_cases())


@pytest.mark.parametrize(("name", "document"), GENERATED, ids=[name for name, _ in GENERATED])
def test_generated_boundaries(
    name: str, document: object, generic_worker_validator: jsonschema.protocols.Validator
) -> None:
    assert _model_accepts(document) == generic_worker_validator.is_valid(document), name


def test_pattern_end_anchor_is_strict() -> None:
    # ECMA-262 and Go anchor `$` at the very end; Python's `re` (and so jsonschema) would allow a trailing
    # newline, which is why this case is checked here and not in the corpus.
    content = {"url": "https://example.com/", "sha256": SHA256 + "\n"}
    with pytest.raises(PayloadError):
        validate_payload({"command": [["true"]], "maxRunTime": 1, "mounts": [{"file": "f", "content": content}]})


def test_schema_defaults_are_applied() -> None:
    payload = validate_payload({"command": [["true"]], "maxRunTime": 10})
    assert payload.features.live_log is True
    assert payload.features.backing_log is True
    assert payload.features.resource_monitor is True
    assert payload.features.taskcluster_proxy is False
    assert payload.features.interactive is False
    assert payload.features.loopback_video is False
    assert payload.features.loopback_audio is False
    assert payload.logs.live == "public/logs/live.log"
    assert payload.logs.backing == "public/logs/live_backing.log"
    assert payload.taskcluster_proxy_interface == "localhost"
    assert payload.env == {}
    assert payload.artifacts == []
    assert payload.mounts == []
    assert payload.os_groups == []
    assert payload.on_exit_status.retry == []
    assert payload.on_exit_status.purge_caches == []
    assert payload.superseder_url is None


def test_partial_objects_keep_other_defaults() -> None:
    payload = validate_payload(
        {
            "command": [["true"]],
            "maxRunTime": 10,
            "features": {"liveLog": False},
            "logs": {"backing": "x.log"},
            "artifacts": [{"type": "file", "path": "a"}],
            "mounts": [{"directory": "c", "cacheName": "c"}],
        }
    )
    assert payload.features.live_log is False
    assert payload.features.backing_log is True
    assert payload.logs.live == "public/logs/live.log"
    assert payload.logs.backing == "x.log"
    artifact = payload.artifacts[0]
    assert artifact.optional is False
    assert (artifact.name, artifact.expires, artifact.content_type, artifact.content_encoding) == (None,) * 4


def test_integral_float_becomes_int() -> None:
    payload = validate_payload({"command": [["true"]], "maxRunTime": 5.0})
    assert payload.max_run_time == 5
    assert type(payload.max_run_time) is int


def test_python_names_work_in_code_but_not_in_payloads() -> None:
    payload = NativePayload(command=[["true"]], max_run_time=3, taskcluster_proxy_interface="docker-bridge")
    assert payload.max_run_time == 3
    with pytest.raises(PayloadError) as info:
        validate_payload({"command": [["true"]], "maxRunTime": 3, "osGroups": [], "os_groups": []})
    assert info.value.errors == [("(root)", "Additional property os_groups is not allowed")]


def _errors(document: object) -> list[tuple[str, str]]:
    with pytest.raises(PayloadError) as info:
        validate_payload(document)
    return info.value.errors


def _paths(document: object) -> list[str]:
    return [path for path, _ in _errors(document)]


def test_error_paths_are_dotted_field_names() -> None:
    base: dict[str, Any] = {"command": [["true"]], "maxRunTime": 1}
    assert _errors({**base, "artifacts": [{"type": "file", "path": "a", "contentEncoding": "br"}]}) == [
        (
            "artifacts.0.contentEncoding",
            'artifacts.0.contentEncoding must be one of the following: "identity", "gzip"',
        )
    ]
    assert _paths({**base, "command": []}) == ["command"]
    assert _paths({**base, "command": [["a"], [1]]}) == ["command.1.0"]
    assert _paths({**base, "maxRunTime": "1"}) == ["maxRunTime"]
    assert _paths({**base, "env": {"FOO": 1}}) == ["env.FOO"]
    assert _paths({**base, "onExitStatus": {"retry": [2, 0]}}) == ["onExitStatus.retry.1"]
    assert _paths({**base, "features": {"liveLog": "yes"}}) == ["features.liveLog"]
    content = {"url": "https://x/", "sha256": "nope"}
    assert _paths({**base, "mounts": [{"file": "f", "content": content}]}) == ["mounts.0.content.sha256"]
    cache = {"directory": "d", "cacheName": "c", "content": {"raw": "x"}}
    assert _errors({**base, "mounts": [cache]}) == [("mounts.0", "Has a dependency on format")]
    assert _paths({**base, "mounts": [{"what": "ever"}]}) == ["mounts.0"]
    assert _paths({**base, "osGroups": ["a", "a"]}) == ["osGroups"]


def test_required_and_additional_properties_are_reported_on_the_parent() -> None:
    assert _errors({"maxRunTime": 1, "extra": True}) == [
        ("(root)", "command is required"),
        ("(root)", "Additional property extra is not allowed"),
    ]
    assert _errors({"command": [["true"]], "maxRunTime": 1, "artifacts": [{"type": "file"}]}) == [
        ("artifacts.0", "path is required")
    ]
    assert _errors([]) == [("(root)", "Invalid type. Expected: object, given: array")]


def test_error_string_lists_one_error_per_line() -> None:
    with pytest.raises(PayloadError) as info:
        validate_payload({"command": [], "maxRunTime": 0})
    assert isinstance(info.value, ValueError)
    assert str(info.value).splitlines() == [
        "command: Array must have at least 1 items",
        "maxRunTime: Must be greater than or equal to 1",
    ]


def test_exported_schema_judges_the_corpus_like_the_official_one(
    generic_worker_validator: jsonschema.protocols.Validator,
) -> None:
    # The exported schema is what `megalodon show-payload-schema` prints; it should be a faithful copy.
    exported = payload_json_schema()
    assert exported["additionalProperties"] is False
    assert exported["required"] == ["command", "maxRunTime"]
    assert exported["properties"]["taskclusterProxyInterface"]["default"] == "localhost"
    validator = jsonschema.Draft202012Validator(exported, format_checker=_format_checker())
    for path in CORPUS_FILES:
        document = json.loads(path.read_text())
        assert validator.is_valid(document) == generic_worker_validator.is_valid(document), path.name
