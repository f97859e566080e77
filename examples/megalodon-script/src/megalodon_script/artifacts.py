"""The script's ``file`` artifacts: found in the task directory, or error artifacts.

A path that leads out of the task directory (a symlink to ``/etc/shadow``, say) is never read: it becomes
an ``invalid-resource-on-worker`` error artifact and the task fails, as a missing file does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path

from megalodon_core.artifacts import content_encoding_for, content_type_for, inside
from megalodon_core.contracts import ArtifactEntry, Artifacts

from .payload import Artifact


class ScriptArtifacts(Artifacts):
    def __init__(self, task_dir: Path, declared: list[Artifact], expires: dt.datetime) -> None:
        self.task_dir = task_dir
        self.declared = declared
        self.expires = expires

    async def collect(self) -> list[ArtifactEntry]:
        # Filesystem calls block: one thread hop for the whole list.
        return await asyncio.to_thread(self._collect)

    def _collect(self) -> list[ArtifactEntry]:
        return [self._entry(a) for a in self.declared]

    def _entry(self, artifact: Artifact) -> ArtifactEntry:
        path = self.task_dir / artifact.path

        def error(reason: str, message: str) -> ArtifactEntry:
            return ArtifactEntry(artifact.name, self.expires, error_reason=reason, error_message=message)

        if not inside(self.task_dir, path):
            return error("invalid-resource-on-worker", f"{artifact.path} leads outside the task directory")
        try:
            info = path.stat()
        except OSError:
            return error("file-missing-on-worker", f"Could not read file '{path}'")
        if not stat.S_ISREG(info.st_mode):
            return error("invalid-resource-on-worker", f"{artifact.path} is not a regular file")
        return ArtifactEntry(
            artifact.name,
            self.expires,
            content_type=content_type_for(artifact.name),
            content_encoding=content_encoding_for(artifact.name),
            source=path.resolve(),
        )
