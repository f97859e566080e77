"""Task files for ``run-task`` and ``validate-payload``: a task definition or a bare payload, YAML or JSON.

Read within the bounds of :mod:`megalodon_core.payload_limits` (file size, nesting, aliases, values), so a
hostile or broken file is one clear error, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .payload_limits import PayloadLimitError, check_payload_limits, load_yaml_bounded, read_bounded


def load_task_file(path: Path) -> dict[str, Any]:
    """The mapping in ``path``; ``ValueError`` naming the file and the problem otherwise."""
    try:
        data = load_yaml_bounded(read_bounded(path), str(path))
    except OSError as exc:
        raise ValueError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read task file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"task file {path} must hold a mapping (a task definition or a payload)")
    try:
        check_payload_limits(data, root="task" if "payload" in data else "payload")
    except PayloadLimitError as exc:
        raise ValueError(f"task file {path}: {exc}") from None
    return data
