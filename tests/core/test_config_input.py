"""Config input an operator can get wrong: each is one line naming the problem (or the key) and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megalodon_core.config import ConfigError, check_directories, load_config, parse_config

BASE = {"rootURL": "http://127.0.0.1:1", "clientId": "c", "accessToken": "t", "workerId": "w", "workerType": "wt"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"\xef\xbb\xbf" + json.dumps(BASE).encode(), "byte-order mark"),
        (b"\x00" * 64, "contains NUL bytes"),
        (b'{"rootURL": "caf\xe9"}', "is not UTF-8"),
        (b'{"rootURL": ', "is not valid JSON: Expecting value at line 1 column 13"),
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
        (b"[1, 2]", "not a JSON array"),
    ],
)
def test_undecodable_files_are_unreadable_with_one_line(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(path)
    assert info.value.unreadable
    assert "\n" not in str(info.value)


def test_a_directory_or_missing_file_is_unreadable(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.json"):
        with pytest.raises(ConfigError, match="cannot read config file") as info:
            load_config(path)
        assert info.value.unreadable


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tasksDir", "tasks\x00x", '"tasksDir" is invalid: a path cannot contain a NUL byte'),
        ("stateDir", "\x00", '"stateDir" is invalid: a path cannot contain a NUL byte'),
        ("rootURL", "tc.example.com", '"rootURL" is invalid: .* is not an http\\(s\\) URL'),
        ("rootURL", "https://", '"rootURL" is invalid'),
        ("rootURL", "http://host:99999", '"rootURL" is invalid'),
        ("rootURL", "ftp://host", '"rootURL" is invalid'),
        ("certificate", "{not json", '"certificate" is invalid: must be the JSON certificate'),
        ("certificate", '{"version": 1}', '"certificate" is invalid: must be the JSON certificate'),
    ],
)
def test_malformed_values_name_the_key_and_are_invalid_not_unreadable(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({**BASE, key: value})
    assert not info.value.unreadable


def test_a_real_certificate_and_root_urls_are_accepted() -> None:
    cert = json.dumps({"version": 1, "scopes": [], "start": 1, "expiry": 2, "seed": "s", "signature": "x"})
    assert parse_config({**BASE, "certificate": cert}).certificate == cert
    for url in ("https://tc.example.com", "http://127.0.0.1:8080/", "http://[::1]:1"):
        assert parse_config({**BASE, "rootURL": url}).rootURL == url


def test_unknown_keys_suggest_the_nearest_valid_key() -> None:
    with pytest.raises(
        ConfigError, match='"maxTaskRuntime" is not a recognised config key \\(did you mean "maxTaskRunTime"\\?\\)'
    ):
        parse_config({**BASE, "maxTaskRuntime": 5})
    with pytest.raises(ConfigError, match='did you mean "livelogPortBase"'):
        parse_config({**BASE, "liveLogPortBase": 5})
    with pytest.raises(ConfigError, match=r'"zzzzqqq" is not a recognised config key$'):
        parse_config({**BASE, "zzzzqqq": 5})


def test_directories_that_are_files_name_the_key(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=f'"stateDir" is invalid: {afile} exists and is not a directory'):
        check_directories(parse_config({**BASE, "stateDir": str(afile)}))
    with pytest.raises(ConfigError, match=f'"tasksDir" is invalid: .* cannot be created: {afile} exists'):
        check_directories(parse_config({**BASE, "tasksDir": str(afile / "tasks")}))
    check_directories(parse_config({**BASE, "stateDir": str(tmp_path / "new" / "state"), "tasksDir": str(tmp_path)}))


def test_directories_the_worker_creates_are_created_or_named(tmp_path: Path) -> None:
    cfg = parse_config({**BASE, "stateDir": str(tmp_path / "s" / "t"), "tasksDir": str(tmp_path / "tasks")})
    check_directories(cfg, create=True)
    assert (tmp_path / "s" / "t").is_dir() and (tmp_path / "tasks").is_dir()
    # /proc refuses new entries even to root: the error names the key, not a traceback at first use.
    cfg = parse_config({**BASE, "stateDir": str(tmp_path / "state"), "tasksDir": "/proc/megalodon-no-such-dir"})
    with pytest.raises(ConfigError, match='"tasksDir" is invalid: cannot create /proc/megalodon-no-such-dir'):
        check_directories(cfg, create=True)


def test_exactly_the_keys_that_do_nothing_are_warned_about() -> None:
    """A key in NOT_APPLICABLE is read nowhere; every other generic-worker key is read somewhere.  Catches a
    key that becomes used (its warning would lie) or one silently ignored (it deserves a warning)."""
    from megalodon_core.config import NOT_APPLICABLE, WorkerConfig, config_warnings

    sources = [
        p.read_text()
        for p in (Path(__file__).resolve().parents[2] / "packages").glob("*/src/**/*.py")
        if p.name != "config.py"
    ]

    def read_somewhere(key: str) -> bool:
        return any(f".{key}" in text or f'"{key}"' in text for text in sources)

    for key in NOT_APPLICABLE:
        assert not read_somewhere(key), f"{key} is used now: drop it from NOT_APPLICABLE"
        assert config_warnings({key: 1}) == [
            f'Config setting "{key}" is accepted for generic-worker compatibility but has no effect: '
            + NOT_APPLICABLE[key]
        ]
    unused = [k for k in WorkerConfig.model_fields if k not in NOT_APPLICABLE and not read_somewhere(k)]
    assert unused == [], f"read nowhere, so they need a NOT_APPLICABLE warning: {unused}"
