"""Unit tests of the core's pure rules: time formats, log lines, resolution, artifact rules, scopes."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from megalodon_core.artifacts import (
    check_artifact_name,
    check_artifact_path,
    check_expiry,
    content_encoding_for,
    content_type_for,
)
from megalodon_core.errors import ExecutionErrors, Failure, IntermittentTask, MalformedPayload, ResourceUnavailable
from megalodon_core.logstyle import LogStyle
from megalodon_core.scopes import satisfies
from megalodon_core.tasklog import TaskLog
from megalodon_core.timefmt import go_duration, iso, parse_iso


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (0.0000015, "1.5µs"),
        (0.0025, "2.5ms"),
        (1.234567, "1.234567s"),
        (62.5, "1m2.5s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
        (0.000000042, "42ns"),
    ],
)
def test_go_duration_matches_go_formatting(seconds: float, expected: str) -> None:
    assert go_duration(seconds) == expected


def test_iso_and_parse_round_trip_both_offsets() -> None:
    t = dt.datetime(2026, 11, 28, 6, 58, 11, 688000, tzinfo=dt.UTC)
    assert iso(t) == "2026-11-28T06:58:11.688Z"
    assert parse_iso("2026-11-28T06:58:11.688+00:00") == t
    assert parse_iso("2026-11-28T06:58:11.688Z") == t


def test_generic_worker_log_lines(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "live_backing.log")
    log.info("two\nlines")
    log.warn("careful")
    log.error("broken")
    log.write(b"raw output\n")
    log.close()
    lines = (tmp_path / "live_backing.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(rf"\[taskcluster {stamp}\] two", lines[0])
    assert re.fullmatch(rf"\[taskcluster {stamp}\] lines", lines[1])
    assert re.fullmatch(rf"\[taskcluster:warn {stamp}\] careful", lines[2])
    assert lines[3] == "[taskcluster:error] broken"
    assert lines[4] == "raw output"


def test_executor_declared_log_style(tmp_path: Path) -> None:
    """Line formats are data an executor declares (a third party's own), not styles core hard-codes."""
    style = LogStyle("mine", timestamp="%H:%M:%S", info="<i {ts}>", warn="<w>", error="<e>", error_lead="--\n")
    log = TaskLog(tmp_path / "log", style=style)
    log.info("hello")
    log.warn("hm")
    log.error("bad")
    log.close()
    lines = (tmp_path / "log").read_text().splitlines()
    assert re.fullmatch(r"<i \d\d:\d\d:\d\d\.\d{3}Z> hello", lines[0])
    assert lines[1:] == ["<w> hm", "--", "<e> bad"]


def test_sinks_see_the_stored_bytes_with_secrets_masked(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "log")
    seen: list[bytes] = []
    log.add_secret("s3cr3t-token")
    log.add_sink(seen.append)
    log.write(b"a s3cr3t-token here\n")
    log.close()
    assert b"".join(seen) == b"a [REDACTED] here\n"
    assert (tmp_path / "log").read_bytes() == b"a [REDACTED] here\n"


@pytest.mark.parametrize("split", range(1, 12))
def test_secret_split_across_writes_is_masked(tmp_path: Path, split: int) -> None:
    log = TaskLog(tmp_path / "log")
    log.add_secret("abcdefghij")
    data = b"xx abcdefghij yy abcdef"
    log.write(data[: split + 3])
    log.write(data[split + 3 :])
    log.info("next line")
    log.close()
    text = (tmp_path / "log").read_bytes()
    assert b"abcdefghij" not in text
    assert text.startswith(b"xx [REDACTED] yy abcdef[taskcluster ")


def test_only_a_write_ending_in_a_secrets_byte_is_held_back(tmp_path: Path) -> None:
    """A write whose last byte no secret holds reaches the sinks whole (most end in a newline); one ending in
    a secret's start is held until the next write tells, even when that byte is a newline the secret holds."""
    log = TaskLog(tmp_path / "log")
    seen: list[bytes] = []
    log.add_secret("abc\ndef-token")
    log.add_secret("zzzzzz")
    log.add_sink(seen.append)
    log.write(b"plain line\n")
    assert seen == [b"plain line\n"]  # "\n" is in the first secret, but no tail of this is its start
    log.write(b"then qqq")
    assert seen[-1] == b"then qqq"  # "q" is in no secret: nothing searched, nothing held
    log.write(b"x abc\n")
    assert seen[-1] == b"x "  # "abc\n" may begin the first secret
    log.write(b"def-token y\n")
    log.close()
    assert (tmp_path / "log").read_bytes() == b"plain line\nthen qqqx [REDACTED] y\n"


@pytest.mark.parametrize("where", ["middle", "split at the chunk end", "absent", "repetitive output"])
def test_secrets_in_big_chunks_are_masked_as_in_small_ones(tmp_path: Path, where: str) -> None:
    """Chunks past PROBE_MIN are first checked for a few bytes of each secret (a chunk lacking one cannot
    hold it): the stored bytes are what masking every chunk gives, whatever the chunk holds."""
    import random

    from megalodon_core import tasklog

    secrets = ["Zq9-XW_7pKcV3mTn8sLr2BdF4hYg", "token-with-plain-letters-only", "0123456789012345"]
    rng = random.Random(where)
    if where == "repetitive output":
        chunk = (b"a" * 99 + b"\n") * (tasklog.PROBE_MIN // 100 + 5)
    else:
        chunk = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz \n") for _ in range(tasklog.PROBE_MIN + 5000))
    writes = [chunk]
    if where == "middle":
        writes = [chunk[:4000] + secrets[0].encode() + chunk[4000:] + secrets[1].encode() + chunk[:10]]
    elif where == "split at the chunk end":
        writes = [chunk + secrets[2].encode()[:7], secrets[2].encode()[7:] + b" and " + secrets[0].encode()]
    log = TaskLog(tmp_path / "log")
    for secret in secrets:
        log.add_secret(secret)
    for data in writes:
        log.write(data)
    log.close()
    expected = b"".join(writes)
    for secret in sorted(secrets, key=len, reverse=True):
        expected = expected.replace(secret.encode(), b"[REDACTED]")
    assert (tmp_path / "log").read_bytes() == expected
    assert where in {"absent", "repetitive output"} or b"[REDACTED]" in expected


def test_short_values_are_not_treated_as_secrets(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "log")
    log.add_secret("abc")
    log.write(b"abc\n")
    log.close()
    assert (tmp_path / "log").read_bytes() == b"abc\n"


def test_first_error_decides_resolution() -> None:
    errors = ExecutionErrors()
    assert errors.resolution() == ("completed", "completed")
    errors.add(Failure("exit status 1"))
    errors.add(ResourceUnavailable("upload failed"))
    assert errors.resolution() == ("failed", "failed")
    other = ExecutionErrors()
    other.add(IntermittentTask("retry me"))
    other.add(Failure("later"))
    assert other.resolution() == ("exception", "intermittent-task")


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.log", "text/plain"),
        ("a.jsonl", "application/jsonl"),
        ("a.json", "application/json"),
        ("a.jpg", "image/jpeg"),
        ("a.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("A.HTML", "text/html; charset=utf-8"),
    ],
)
def test_content_type_like_generic_worker(name: str, ctype: str) -> None:
    assert content_type_for(name) == ctype


@pytest.mark.parametrize(
    ("name", "encoding"),
    [("a.txt", "gzip"), ("a.gz", "identity"), ("a.zip", "identity"), ("a.ZIP", "gzip"), ("a.tar.zst", "identity")],
)
def test_content_encoding_skips_compressed_extensions(name: str, encoding: str) -> None:
    assert content_encoding_for(name) == encoding


@pytest.mark.parametrize("name", ["/etc/passwd", "public/../escape.txt", "../up", "a/..", "", "public/caf\u00e9.txt"])
def test_escaping_or_invalid_artifact_names_are_malformed(name: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        check_artifact_name(name, "artifacts.0.name")
    assert "artifacts.0.name" in str(info.value)


@pytest.mark.parametrize("path", ["/abs/file", "../x", "a/../../x", ".."])
def test_escaping_artifact_paths_are_malformed(path: str) -> None:
    with pytest.raises(MalformedPayload):
        check_artifact_path(path, "artifacts.0.path")


def test_ordinary_names_and_paths_pass() -> None:
    check_artifact_name("public/build/target.tar.gz", "x")
    check_artifact_path("public/./a/../b.txt", "x")


def test_expiry_rules_with_one_second_slack() -> None:
    deadline = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    expires = deadline + dt.timedelta(days=10)
    check_expiry("a", deadline, deadline, expires)
    check_expiry("a", expires + dt.timedelta(milliseconds=500), deadline, expires)
    with pytest.raises(MalformedPayload, match="expires before task deadline"):
        check_expiry("a", deadline - dt.timedelta(seconds=2), deadline, expires)
    with pytest.raises(MalformedPayload, match="expires after task expiry"):
        check_expiry("a", expires + dt.timedelta(seconds=2), deadline, expires)


def test_scope_satisfaction_with_star_and_alternatives() -> None:
    assert satisfies(["generic-worker:cache:*"], [["generic-worker:cache:foo"]])
    assert not satisfies(["generic-worker:cache:foo"], [["generic-worker:cache:bar"]])
    assert satisfies(["b"], [["a"], ["b"]])
    assert not satisfies(["a"], [["a", "b"]])
    assert satisfies([], [])
