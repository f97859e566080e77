"""Payload bounds: deep, wide or alias-bombed input is refused with a message naming the limit, quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from megalodon_core.payload_limits import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_TEXT_CHARS,
    PayloadLimitError,
    check_payload_limits,
    load_yaml_bounded,
)
from megalodon_core.taskfile import load_task_file
from megalodon_core.testing import Harness


def test_depth_at_the_limit_passes_and_beyond_it_names_the_limit() -> None:
    ok: object = 1
    for _ in range(MAX_DEPTH):
        ok = [ok]
    check_payload_limits(ok)
    with pytest.raises(PayloadLimitError, match=f"nested deeper than {MAX_DEPTH} levels at payload.0.0.0"):
        check_payload_limits([ok])


def test_deep_nesting_far_beyond_the_recursion_limit_is_refused_without_recursing() -> None:
    value: object = "x"
    for _ in range(200_000):
        value = {"k": value}
    with pytest.raises(PayloadLimitError, match="depth limit"):
        check_payload_limits(value)


def test_too_many_values_and_too_much_text() -> None:
    with pytest.raises(PayloadLimitError, match=f"more than {MAX_NODES} values"):
        check_payload_limits({"env": {str(i): "v" for i in range(MAX_NODES + 1)}})
    with pytest.raises(PayloadLimitError, match=f"more than {MAX_TEXT_CHARS} characters"):
        check_payload_limits({"env": {"A": "x" * (MAX_TEXT_CHARS + 1)}})


def test_yaml_nesting_is_bounded_while_composing() -> None:
    with pytest.raises(yaml.YAMLError, match="depth limit"):
        load_yaml_bounded("[" * 5000 + "]" * 5000)
    assert load_yaml_bounded("[" * 50 + "]" * 50) is not None
    # The same depth as the walk counts it: MAX_DEPTH nested lists (with a scalar inside) pass, one more not.
    ok = "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    check_payload_limits(load_yaml_bounded(ok))
    with pytest.raises(yaml.YAMLError, match="depth limit"):
        load_yaml_bounded("[" + ok + "]")


BOMB = "\n".join(
    [f"a0: &a0 [{', '.join(['lol'] * 9)}]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(ValueError, match="payload size limit"):
        load_task_file(bomb)
    # Not a timing assertion on the behaviour: a bound that guards against a hang (10^9 expanded values).
    assert time.monotonic() - started < 30
    many = tmp_path / "many.yml"
    many.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * 2000) + "]\n")
    with pytest.raises(ValueError, match="aliases"):
        load_task_file(many)


def test_task_file_encodings(tmp_path: Path) -> None:
    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"command": [["true"]], "maxRunTime": 5}')
    assert load_task_file(bom)["maxRunTime"] == 5
    latin = tmp_path / "latin.yml"
    latin.write_bytes(b"command: [[\xe9]]\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_task_file(latin)


async def test_a_deep_payload_through_the_queue_resolves_malformed_payload(harness: Harness) -> None:
    deep: object = "x"
    for _ in range(600):  # the depth that used to resolve internal-error
        deep = {"a": deep}
    out = await harness.run({"command": [["true"]], "maxRunTime": 10, "env": deep})
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert f"nested deeper than {MAX_DEPTH} levels at payload.env.a.a" in out.log
