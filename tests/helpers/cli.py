"""The installed ``megalodon`` command as an operator runs it, and reading the tables it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The console script pip installed next to this interpreter (not ``python -m``: its entry point is tested too).
MEGALODON_SCRIPT = [str(Path(sys.executable).with_name("megalodon"))]


def megalodon(*args: str, cwd: Path, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``megalodon *args`` in ``cwd`` (a terminal ``columns`` wide, when given); never raises on failure."""
    env = {**os.environ}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [*MEGALODON_SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def columns(output: str) -> list[str]:
    """Each table column's text, its folded fragments joined in order (rows are not separated by rules)."""
    cells: list[list[str]] = []
    for line in output.splitlines():
        if "│" not in line:
            continue
        parts = [p.strip() for p in line.strip().strip("│").split("│")]
        while len(cells) < len(parts):
            cells.append([])
        for i, part in enumerate(parts):
            cells[i].append(part)
    return ["".join(c) for c in cells]
