"""Bounds on the shape of a payload, checked before any schema validation.

A payload nested a few hundred levels deep exhausts Python's recursion limit inside pydantic, the YAML
composer or ``json.dumps`` and used to crash ``validate-payload``/``run-task`` with a traceback and resolve a
queued task ``internal-error``.  :func:`check_payload_limits` walks the value *iteratively* (no recursion, so
it cannot itself overflow) and stops at the first bound exceeded, so the cost is bounded too: at most
:data:`MAX_NODES` values are visited, however the payload is built (a YAML alias bomb shares nodes, so its
expansion is counted as it is walked and refused after :data:`MAX_NODES`).

:func:`load_yaml_bounded` is the loader for task files: the same depth bound while composing (PyYAML's
composer is recursive) and a bound on aliases, so a hostile file is refused quickly and never expanded.

The bounds are far above anything a real payload needs (the deepest docker-worker payload of the corpus nests
six levels) and below what the queue accepts in a request body (10 MiB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Deepest nesting of objects/arrays allowed (the payload itself is level 1).
MAX_DEPTH = 100
#: Most values (objects, arrays, scalars, keys not counted) in one payload.
MAX_NODES = 100_000
#: Most characters in all strings and object keys of one payload together.
MAX_TEXT_CHARS = 10 * 1024 * 1024
#: Most YAML aliases (``*name``) in one task file; real task files use a handful.
MAX_ALIASES = 1_000
#: Largest task file read (bytes).
MAX_FILE_BYTES = 16 * 1024 * 1024


class PayloadLimitError(ValueError):
    """The payload exceeds one of the bounds; the message names the bound and where it was exceeded."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _path(root: str, parts: tuple[str, ...]) -> str:
    return ".".join((root, *parts[:6])) + ("..." if len(parts) > 6 else "")


def check_payload_limits(value: object, *, root: str = "payload") -> None:
    """Raise :class:`PayloadLimitError` if ``value`` is nested deeper than :data:`MAX_DEPTH`, holds more than
    :data:`MAX_NODES` values or more than :data:`MAX_TEXT_CHARS` characters of text."""
    nodes = 0
    chars = 0
    # (value, depth, path); the path is kept only for the first levels, to name where a bound was hit.
    stack: list[tuple[object, int, tuple[str, ...]]] = [(value, 1, ())]
    while stack:
        item, depth, parts = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise PayloadLimitError(root, f"holds more than {MAX_NODES} values (megalodon's payload size limit)")
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise PayloadLimitError(
                    root, f"nested deeper than {MAX_DEPTH} levels at {_path(root, parts)} (megalodon's depth limit)"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    chars += len(key) if isinstance(key, str) else 0
                    stack.append((child, depth + 1, (*parts, str(key)) if len(parts) < 8 else parts))
            else:
                for index, child in enumerate(item):
                    stack.append((child, depth + 1, (*parts, str(index)) if len(parts) < 8 else parts))
        if chars > MAX_TEXT_CHARS:
            raise PayloadLimitError(
                root, f"holds more than {MAX_TEXT_CHARS} characters of text (megalodon's payload size limit)"
            )


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting bound while composing and an alias count."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (megalodon's task file limit)", event.start_mark
                )
            return super().compose_node(parent, index)
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)  # a scalar: no level of its own, as in the walk above
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels (megalodon's depth limit)", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml_bounded(text: str, name: str = "<string>") -> Any:
    """Parse YAML (or JSON) text within the bounds above; raises :class:`yaml.YAMLError` beyond them.

    ``name`` (the file name) is what error marks show."""
    loader = _BoundedLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_bounded(path: Path) -> str:
    """The text of a task file no larger than :data:`MAX_FILE_BYTES`; ``OSError``/``ValueError`` otherwise."""
    with path.open("rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes (megalodon's task file limit)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
