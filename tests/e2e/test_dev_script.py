"""`./dev`, the repository's entry point: a usage text without shell noise, and no pip run when nothing changed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _dev(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "dev"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_no_argument_prints_the_usage() -> None:
    done = _dev()
    assert done.returncode == 0
    assert "./dev demo" in done.stdout and "./dev test" in done.stdout
    assert "set -euo" not in done.stdout and "#" not in done.stdout


def test_unknown_command_is_an_error_with_the_usage() -> None:
    done = _dev("frobnicate")
    assert done.returncode == 2
    assert "unknown command: frobnicate" in done.stderr and "./dev demo" in done.stderr


def test_second_run_does_not_call_pip() -> None:
    """After one bootstrap, a second one must not reach pip: with no package index an install would fail."""
    first = _dev("nox", "--version")
    assert first.returncode == 0, first.stderr
    second = _dev("nox", "--version", env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""})
    assert second.returncode == 0, second.stderr
