"""Finding a generic-worker payload's artifacts in the task directory (NOTES.md section 5).

Error artifacts carry generic-worker's reasons and messages, so people reading a failed task see the same
words.  Deliberate difference: a path that resolves (through a symlink) outside the task directory becomes
an ``invalid-resource-on-worker`` error artifact instead of an upload of whatever file it points at.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any

from megalodon_core.artifacts import content_encoding_for, content_type_for, inside
from megalodon_core.contracts import ArtifactEntry, Artifacts
from megalodon_core.timefmt import parse_iso


def _expires(value: Any, default: dt.datetime) -> dt.datetime:
    if value is None:
        return default
    if isinstance(value, dt.datetime):
        return value
    return parse_iso(str(value))


class NativeArtifacts(Artifacts):
    def __init__(self, task_dir: Path, artifacts: list[Any], task_expires: dt.datetime) -> None:
        self.task_dir = task_dir
        self.artifacts = artifacts
        self.task_expires = task_expires

    async def collect(self) -> list[ArtifactEntry]:
        if not self.artifacts:
            return []
        return await asyncio.to_thread(self._collect)

    def _entry(self, spec: Any, name: str, path: Path, expires: dt.datetime) -> ArtifactEntry:
        return ArtifactEntry(
            name=name,
            expires=expires,
            content_type=spec.content_type or content_type_for(path.name),
            content_encoding=spec.content_encoding or content_encoding_for(path.name),
            optional=spec.optional,
            source=path,
        )

    def _error(self, spec: Any, name: str, expires: dt.datetime, reason: str, message: str) -> ArtifactEntry:
        return ArtifactEntry(
            name=name,
            expires=expires,
            optional=spec.optional,
            error_reason=reason,
            error_message=message,
            content_type="application/binary",
        )

    def _collect(self) -> list[ArtifactEntry]:
        entries: list[ArtifactEntry] = []
        for spec in self.artifacts:
            name = spec.name or spec.path
            expires = _expires(spec.expires, self.task_expires)
            path = self.task_dir / spec.path
            if spec.type == "file":
                entries.append(self._file(spec, name, path, expires))
            else:
                entries.extend(self._directory(spec, name, path, expires))
        entries.sort(key=lambda e: e.name)
        return entries

    def _file(self, spec: Any, name: str, path: Path, expires: dt.datetime) -> ArtifactEntry:
        if not os.path.lexists(path) or not path.exists():
            return self._error(spec, name, expires, "file-missing-on-worker", f"Could not read file '{path}'")
        if not inside(self.task_dir, path):
            return self._error(
                spec,
                name,
                expires,
                "invalid-resource-on-worker",
                f"File artifact '{path}' resolves to a location outside the task directory",
            )
        if path.is_dir():
            return self._error(
                spec,
                name,
                expires,
                "invalid-resource-on-worker",
                f"File artifact '{path}' exists as a directory, not a file, on the worker",
            )
        return self._entry(spec, name, path, expires)

    def _directory(self, spec: Any, name: str, path: Path, expires: dt.datetime) -> list[ArtifactEntry]:
        if not os.path.lexists(path) or not path.exists():
            return [self._error(spec, name, expires, "file-missing-on-worker", f"Could not read directory '{path}'")]
        if not inside(self.task_dir, path):
            return [
                self._error(
                    spec,
                    name,
                    expires,
                    "invalid-resource-on-worker",
                    f"Directory artifact '{path}' resolves to a location outside the task directory",
                )
            ]
        if not path.is_dir():
            return [
                self._error(
                    spec,
                    name,
                    expires,
                    "invalid-resource-on-worker",
                    f"Directory artifact '{path}' exists as a file, not a directory, on the worker",
                )
            ]
        out: list[ArtifactEntry] = []
        base = name.rstrip("/")
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs.sort()
            for filename in sorted(files):
                member = Path(root) / filename
                rel = member.relative_to(path).as_posix()
                member_name = f"{base}/{rel}"
                if not member.exists():
                    out.append(
                        self._error(
                            spec,
                            member_name,
                            expires,
                            "file-missing-on-worker",
                            f"Could not read file '{member}'",
                        )
                    )
                elif not inside(self.task_dir, member):
                    out.append(
                        self._error(
                            spec,
                            member_name,
                            expires,
                            "invalid-resource-on-worker",
                            f"Error processing file '{member}' as artifact: it resolves outside the task directory",
                        )
                    )
                elif member.is_dir():
                    continue  # a symlink to a directory: generic-worker's walk does not follow it either
                else:
                    out.append(self._entry(spec, member_name, member, expires))
        return out
