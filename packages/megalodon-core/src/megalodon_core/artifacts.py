"""Artifact rules shared by every executor: names, content types, content encodings, expiry checks.

generic-worker's rules (NOTES.md section 5) are reproduced exactly because downstream consumers (browsers
opening logs, Treeherder, mozharness) depend on the content types and encodings the artifacts get.

Deliberate difference: generic-worker stores artifact names verbatim; megalodon refuses names that would
escape (absolute, ``..`` components) with malformed-payload.  The queue accepts such names, but a name like
``public/../x`` is a trap for every tool that maps artifact names to files.  Artifact *paths* are the
executor's business: the native executor accepts absolute ones as generic-worker does
(:mod:`megalodon_native.artifacts`); :func:`check_artifact_path` is for executors that keep them inside.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import posixpath
from pathlib import Path

from .errors import MalformedPayload
from .timefmt import iso

#: Extensions whose content is already compressed: uploaded with ``identity`` encoding (case-sensitive).
ALREADY_COMPRESSED = frozenset(
    ".7z .br .aab .apk .bz2 .deb .dmg .flv .gif .gz .jar .jpeg .jpg .lz .lz4 .mz .npz .pkg .png .swf .sz "
    ".tbz .tgz .wasm .webp .whl .woff .woff2 .xpi .xz .zip .zst .zz".split()
)

_CUSTOM_TYPES = {".log": "text/plain", ".jsonl": "application/jsonl"}
_EXTRA_TYPES = {
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".xpi": "application/x-xpinstall",
    ".zst": "application/zstd",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".md": "text/markdown",
}


def content_type_for(name: str) -> str:
    """generic-worker's guess: a custom map, then the system MIME table (``text/*`` gains a charset)."""
    ext = posixpath.splitext(name)[1].lower()
    if ext in _CUSTOM_TYPES:
        return _CUSTOM_TYPES[ext]
    guessed = _EXTRA_TYPES.get(ext) or mimetypes.types_map.get(ext)
    if not guessed:
        return "application/octet-stream"
    if guessed.startswith("text/") and "charset" not in guessed:
        guessed += "; charset=utf-8"
    return guessed


def content_encoding_for(name: str) -> str:
    """gzip, unless the file is already compressed (judged by its extension, case-sensitive)."""
    return "identity" if posixpath.splitext(name)[1] in ALREADY_COMPRESSED else "gzip"


def check_artifact_name(name: str, field: str) -> None:
    """Refuse names that would escape their directory when mapped onto a filesystem."""
    if not name:
        raise MalformedPayload(f"{field}: artifact name must not be empty")
    if name.startswith("/"):
        raise MalformedPayload(f"{field}: artifact name {name!r} must not be absolute")
    if ".." in name.split("/"):  # a ".." component anywhere, as PurePosixPath(name).parts would show it
        raise MalformedPayload(f"{field}: artifact name {name!r} must not contain '..'")
    if not (name.isascii() and name.isprintable()):  # printable ASCII: 32 <= ord(c) < 127
        raise MalformedPayload(f"{field}: artifact name {name!r} must be printable ASCII")


def check_artifact_path(path: str, field: str) -> None:
    """Refuse paths outside the task directory (absolute, or climbing out with ``..``)."""
    if not path:
        raise MalformedPayload(f"{field}: artifact path must not be empty")
    if path.startswith("/"):
        raise MalformedPayload(f"{field}: artifact path {path!r} must be relative to the task directory")
    normalised = posixpath.normpath(path)
    if normalised == ".." or normalised.startswith("../"):
        raise MalformedPayload(f"{field}: artifact path {path!r} escapes the task directory")


def inside(root: Path, candidate: Path) -> bool:
    """Whether ``candidate`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    try:
        candidate.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def check_expiry(name: str, expires: dt.datetime, deadline: dt.datetime, task_expires: dt.datetime) -> None:
    """generic-worker's artifact expiry rule (1 s of slack each way)."""
    one = dt.timedelta(seconds=1)
    if expires + one < deadline:
        raise MalformedPayload(
            f"Malformed payload: artifact '{name}' expires before task deadline "
            f"({iso(expires)} is before {iso(deadline)})"
        )
    if expires > task_expires + one:
        raise MalformedPayload(
            f"Malformed payload: artifact '{name}' expires after task expiry "
            f"({iso(expires)} is after {iso(task_expires)})"
        )
