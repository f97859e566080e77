"""The multiuser engine's test set-up: directories its task users can reach, and the config selecting it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def task_user_dirs() -> Iterator[dict[str, Path]]:
    """``base`` (under /tmp) holding a ``tasks`` directory task users can reach and a world-writable ``drop``
    box: pytest's ``tmp_path`` is root-only.  Removed on exit."""
    base = Path(tempfile.mkdtemp(prefix="megalodon-mu-", dir="/tmp"))
    os.chmod(base, 0o711)
    tasks = base / "tasks"
    tasks.mkdir(mode=0o711)
    os.chmod(tasks, 0o711)  # mkdir's mode is masked by the umask
    drop = base / "drop"
    drop.mkdir()
    os.chmod(drop, 0o1777)
    try:
        yield {"base": base, "tasks": tasks, "drop": drop}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def multiuser_config(shared: dict[str, Path], **extra: Any) -> dict[str, Any]:
    """Worker config overrides for the multiuser engine, headless, its tasks in ``shared["tasks"]``."""
    return {"nativeEngine": "multiuser", "headlessTasks": True, "tasksDir": str(shared["tasks"]), **extra}
