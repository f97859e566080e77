"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers.multiuser import task_user_dirs


@pytest.fixture
def shared() -> Iterator[dict[str, Path]]:
    """A tasksDir task users can reach and a world-writable drop box (pytest's tmp_path is root-only)."""
    with task_user_dirs() as dirs:
        yield dirs
