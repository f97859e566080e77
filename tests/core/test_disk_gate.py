"""The disk gate says a shortage once per episode, not before every claim of a quarantined worker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from megalodon_core.worker.disk_gate import ensure_disk_space

TOO_MUCH_MB = 1 << 40  # a million terabytes: no test machine has it


async def test_shortage_is_warned_once_per_episode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="megalodon_core.worker.disk_gate")

    def warnings() -> int:
        return sum(r.levelno == logging.WARNING and "not able to free up" in r.message for r in caplog.records)

    assert not await ensure_disk_space(str(tmp_path), TOO_MUCH_MB, [])
    assert not await ensure_disk_space(str(tmp_path), TOO_MUCH_MB, [])
    assert not await ensure_disk_space(str(tmp_path), TOO_MUCH_MB, [])
    assert warnings() == 1
    # Enough space again ends the episode; the next shortage is news again.
    assert await ensure_disk_space(str(tmp_path), 0, [])
    assert not await ensure_disk_space(str(tmp_path), TOO_MUCH_MB, [])
    assert warnings() == 2
