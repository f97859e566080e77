"""Fuzzing the input boundaries: payloads and configs from the models' own JSON schemas, mutated, plus
structural junk (deep nesting, huge strings, wrong types, NUL bytes, undecodable bytes).

Each boundary may only answer with its documented errors: a payload model with its ``PayloadError`` (after
the core's bounds, :mod:`megalodon_core.payload_limits`, as the pipeline applies them), ``validate-payload``
with exit 0/1/2 and a message, config loading with :class:`~megalodon_core.config.ConfigError`.  Anything
else (a RecursionError, a TypeError, a traceback) fails the test with the input that caused it.

Deterministic in CI: ``derandomize=True`` derives the examples from the test itself, so every run tries the
same inputs; ``max_examples`` keeps the suite to seconds.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import typer
from hypothesis import HealthCheck, given, settings

from megalodon_core import cli
from megalodon_core.config import ConfigError, config_model, load_config
from megalodon_core.payload_limits import MAX_DEPTH, PayloadLimitError, check_payload_limits
from megalodon_core.plugins import PluginHost
from megalodon_docker import payload as docker_payload
from megalodon_native import payload as native_payload
from megalodon_native import payload_multiuser

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- structural junk --------------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "a\x00b", "${HOME}", "[/bin/echo", "[red]x[/red]", "../../etc/passwd", "\ud7ff"]),
    st.integers(1_000, 200_000).map(lambda n: "x" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=20,
)


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


deep = st.builds(_nest, json_values, st.integers(MAX_DEPTH - 2, 3 * MAX_DEPTH), st.booleans())
junk = st.one_of(json_values, deep)


def mutated(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A schema-valid object with one key replaced (or added) by junk, or junk outright."""

    @st.composite
    def mutate(draw: st.DrawFn) -> Any:
        base = dict(draw(valid))
        base[draw(st.sampled_from([*sorted(base), "unexpected"]))] = draw(junk)
        return base

    return st.one_of(valid, mutate(), junk)


# -- values from a JSON schema ----------------------------------------------------------------------------
# hypothesis-jsonschema (0.23, its latest) relies on Hypothesis internals that current Hypothesis no longer
# has, so this is a small generator for the keywords the payload and config schemas use.  It aims at
# near-valid values (every required key, the declared types, enums, formats); the mutations above do the rest.

FORMATS: dict[str, st.SearchStrategy[str]] = {
    "date-time": st.sampled_from(["2030-01-01T00:00:00.000Z", "2030-01-01T00:00:00Z", "not-a-date", "1999-13-40T99Z"]),
    "uri": st.sampled_from(["https://example.com/x", "http://127.0.0.1:1/", "not a uri", "file:///etc/passwd"]),
}


def from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> st.SearchStrategy[Any]:
    root = root or schema
    if depth > 12:
        return scalars
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        defs = root.get("$defs") or root.get("definitions") or {}
        return from_schema(defs[name], root, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return st.one_of(*(from_schema(s, root, depth + 1) for s in schema[key]))
    if "allOf" in schema:
        return from_schema(schema["allOf"][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of(*(from_schema({**schema, "type": k}, root, depth) for k in kind))
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties", {})
        required = [k for k in schema.get("required", []) if k in props]
        optional = {k: v for k, v in props.items() if k not in required}
        extra = schema.get("additionalProperties")
        fixed = st.fixed_dictionaries(
            {k: from_schema(props[k], root, depth + 1) for k in required},
            optional={k: from_schema(v, root, depth + 1) for k, v in optional.items()},
        )
        if isinstance(extra, dict):
            more = st.dictionaries(st.text(min_size=1, max_size=8), from_schema(extra, root, depth + 1), max_size=3)
            return st.builds(lambda a, b: {**b, **a}, fixed, more)
        return fixed
    if kind == "array":
        items = schema.get("items", {})
        return st.lists(from_schema(items, root, depth + 1) if items else scalars, max_size=3)
    if kind == "string":
        if schema.get("format") in FORMATS:
            return FORMATS[schema["format"]]
        return st.text(min_size=schema.get("minLength", 0), max_size=max(schema.get("minLength", 0), 12))
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


# -- payload models ---------------------------------------------------------------------------------------


def _model_strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    return mutated(from_schema(schema).filter(lambda v: isinstance(v, dict)))


MODELS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[object], object], type[Exception]]] = {
    "native": (native_payload.payload_json_schema, native_payload.validate_payload, native_payload.PayloadError),
    "multiuser": (
        payload_multiuser.multiuser_payload_json_schema,
        payload_multiuser.validate_multiuser_payload,
        native_payload.PayloadError,
    ),
    "docker": (docker_payload.payload_json_schema, docker_payload.validate_payload, docker_payload.PayloadError),
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_payload_models_answer_only_with_their_errors(model: str) -> None:
    schema_of, validate, error = MODELS[model]

    @FUZZ
    @given(_model_strategy(schema_of()))
    def check(payload: Any) -> None:
        try:
            check_payload_limits(payload)  # the pipeline's step before any executor sees the payload
            validate(payload)
        except (PayloadLimitError, error):
            pass

    check()


def test_payload_models_handle_the_deepest_payload_the_bounds_let_through() -> None:
    for _, validate, error in MODELS.values():
        for as_list in (True, False):
            payload = {"command": [["true"]], "image": "x", "maxRunTime": 5, "env": _nest(1, MAX_DEPTH - 2, as_list)}
            check_payload_limits(payload)
            with pytest.raises(error):
                validate(payload)


# -- validate-payload, the CLI function -------------------------------------------------------------------

HOST = PluginHost()


def _run_validate(content: bytes) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.yml"
        path.write_bytes(content)
        try:
            cli.validate_payload(file=path, executor=None)
        except typer.Exit as exc:
            return int(exc.exit_code)
        return 0


def _as_file(value: Any, wrap: bool, fmt: str) -> bytes:
    document = {"payload": value} if wrap else value
    try:
        text = json.dumps(document) if fmt == "json" else _yaml(document)
    except (RecursionError, ValueError):
        text = "[" * 5000
    return text.encode("utf-8", errors="surrogatepass")


def _yaml(document: Any) -> str:
    import yaml

    try:
        return yaml.safe_dump(document)
    except RecursionError:
        return json.dumps(document)


payload_files = st.one_of(
    st.builds(
        _as_file,
        st.one_of(*(_model_strategy(schema_of()) for schema_of, _, _ in MODELS.values())),
        st.booleans(),
        st.sampled_from(["json", "yaml"]),
    ),
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"payload:\n  command: [/bin/echo [hi]\n",
            b"\xef\xbb\xbf{}",
            b"\x00\x00",
            b"[" * 10_000,
            b"a: &a [1]\nb: [" + b", ".join([b"*a"] * 5000) + b"]\n",
            b"payload: 5\n",
            b"- 1\n",
        ]
    ),
)


@FUZZ
@given(payload_files)
def test_validate_payload_exits_with_a_documented_code(content: bytes) -> None:
    assert _run_validate(content) in (0, 1, 2)


# -- config loading ---------------------------------------------------------------------------------------

CONFIG_SCHEMA = config_model(HOST.config_fields()).model_json_schema()
REQUIRED = {"rootURL": "http://127.0.0.1:1", "clientId": "c", "accessToken": "t", "workerId": "w", "workerType": "t"}


def _config_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value).encode("utf-8", errors="surrogatepass")
    except (RecursionError, ValueError):
        return b"{" * 5000


config_files = st.one_of(
    st.builds(_config_bytes, mutated(from_schema(CONFIG_SCHEMA).map(lambda c: {**c, **REQUIRED}))),
    st.builds(_config_bytes, from_schema(CONFIG_SCHEMA)),
    st.builds(
        _config_bytes,
        st.builds(
            lambda keys, base: {**base, **keys},
            st.dictionaries(st.sampled_from(sorted(CONFIG_SCHEMA["properties"])), json_values, max_size=4),
            st.just(REQUIRED),
        ),
    ),
    st.binary(max_size=300),
    st.sampled_from([b"", b"\xef\xbb\xbf{}", b"\x00" * 10, b"\xff\xfe{}", b"[1]", b"null", b"{" * 10_000]),
)


@FUZZ
@given(config_files)
def test_config_loading_raises_only_config_errors(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "worker.json"
        path.write_bytes(content)
        try:
            load_config(path, HOST.config_fields())
        except ConfigError as exc:
            assert str(exc)
