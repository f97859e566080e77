"""docker-worker artifacts: copied out of the stopped container through the Docker archive API.

Semantics follow docker-worker (NOTES.md 2.5): a missing path or a type mismatch gives an ``error``
artifact but never fails the task; a directory (or d2g ``volume``) is published file by file as
``<name>/<path inside the directory>``; content type from the file name without charset; gzip unless the
name ends with one of docker-worker's ``skipCompressionExtensions``.

Archives are spooled to disk and read member by member, so memory stays bounded, and a member whose name
would escape (absolute, ``..``) is refused with an error artifact instead of being written anywhere.
Deliberate difference: a trailing ``/`` in a directory artifact's name is stripped (docker-worker meant to
but did not, producing ``name//file``).

Special files never block anything: the engine's archive carries a FIFO or device as a header without
content, so a FIFO, device or symlink named as a file artifact is an ``invalid-resource-on-worker`` error
artifact naming what it is, and one inside a directory artifact is an error artifact of its own
(``<name>/<path>``) instead of being skipped silently.  Sockets are not in the engine's archives at all
(the engine answers 404 for one): ``file-missing-on-worker``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import mimetypes
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from megalodon_core.archive_safety import UnsafeMember, member_parts
from megalodon_core.contracts import ArtifactEntry, Artifacts
from megalodon_core.timefmt import parse_iso

#: docker-worker's ``artifacts.skipCompressionExtensions`` (its config.yml, ``lz4`` without the dot included).
SKIP_COMPRESSION = (
    ".7z", ".bz2", ".deb", ".dmg", ".flv", ".gif", ".gz", ".jpeg", ".jpg", ".png", ".swf", ".tbz", ".tgz",
    ".webp", ".whl", ".woff", ".woff2", ".xz", ".zip", ".zst", "lz4",
)  # fmt: skip
CHUNK = 1 << 20

T = TypeVar("T")
#: Runs a blocking callable off the event loop (the docker executor's engine pool).
Runner = Callable[[Callable[[], T]], Awaitable[T]]


async def _to_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def content_encoding(name: str) -> str:
    return "identity" if name.endswith(SKIP_COMPRESSION) else "gzip"


def _safe_member_path(member_name: str) -> str | None:
    """The member's path below the archive's top directory, or None when it would escape."""
    try:
        parts = member_parts(member_name, collapse=False, windows_names=False)
    except UnsafeMember:
        return None
    return "/".join(parts[1:])


def _kind(member: tarfile.TarInfo) -> str:
    if member.isfifo():
        return "a named pipe (FIFO)"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.issym() or member.islnk():
        return "a link"
    return "a special file"


class ArchiveFetcher:
    """Pulls ``path`` out of a container into a local tar file (blocking: runs in a worker thread).

    The archive is spooled to disk chunk by chunk rather than parsed from the socket so that memory stays
    bounded and a slow consumer never holds an engine connection open.
    """

    def __init__(self, api: Any, container_id: str) -> None:
        self.api = api
        self.container_id = container_id

    def __call__(self, path: str, dest: Path) -> None:
        stream, _stat = self.api.get_archive(self.container_id, path, chunk_size=CHUNK)
        with dest.open("wb") as fh:
            for chunk in stream:
                fh.write(chunk)


class DockerArtifacts(Artifacts):
    def __init__(
        self,
        fetch: Callable[[str, Path], None],
        specs: dict[str, Any],
        task_expires: dt.datetime,
        work_dir: Path,
        log_error: Callable[[str], None],
        not_found: type[Exception],
        runner: Runner[list[ArtifactEntry]] = _to_thread,
        log_info: Callable[[str], None] | None = None,
    ) -> None:
        self.fetch = fetch
        self.specs = specs
        self.task_expires = task_expires
        self.work_dir = work_dir
        self.log_error = log_error
        self.not_found = not_found
        self.runner = runner
        #: docker-worker also writes a missing artifact's message to the task log, as a plain line.
        self.log_info = log_info

    async def collect(self) -> list[ArtifactEntry]:
        entries: list[ArtifactEntry] = []
        for name in sorted(self.specs):
            entries.extend(await self.runner(functools.partial(self._one, name, self.specs[name])))
        return entries

    def _error(self, name: str, expires: dt.datetime, reason: str, message: str) -> ArtifactEntry:
        return ArtifactEntry(
            name=name,
            expires=expires,
            error_reason=reason,
            error_message=message,
            fails_task=False,
            content_type="application/binary",
        )

    def _one(self, name: str, spec: Any) -> list[ArtifactEntry]:
        expires = parse_iso(spec.expires) if spec.expires else self.task_expires
        workdir = Path(tempfile.mkdtemp(prefix="artifact-", dir=self.work_dir))
        tar_path = workdir / "archive.tar"
        try:
            self.fetch(spec.path, tar_path)
        except self.not_found as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            detail = getattr(exc, "explanation", None) or str(exc)
            message = f'Artifact "{name}" not found at "{spec.path}": {detail}'
            if self.log_info is not None:
                self.log_info(message)
            return [self._error(name, expires, "file-missing-on-worker", message)]
        try:
            return self._read(name, spec, expires, workdir, tar_path)
        except tarfile.TarError as exc:
            message = f"Could not read the archive of {spec.path!r} from the container: {exc}"
            self.log_error(f'Error uploading "{name}". {message}')
            return [self._error(name, expires, "invalid-resource-on-worker", message)]
        finally:
            tar_path.unlink(missing_ok=True)

    def _read(self, name: str, spec: Any, expires: dt.datetime, workdir: Path, tar_path: Path) -> list[ArtifactEntry]:
        out: list[ArtifactEntry] = []
        refused = False
        with tarfile.open(tar_path, "r|") as tar:
            first = True
            for member in tar:
                if first:
                    first = False
                    actual = "file" if member.isreg() else "directory" if member.isdir() else "other"
                    expected = "file" if spec.type == "file" else "directory"
                    if actual != expected:
                        message = f'Expected artifact to be a "{expected}" but was "{actual}"'
                        if actual == "other":
                            message += f" ({_kind(member)})"
                        self.log_error(f'Error uploading "{name}". {message}')
                        return [self._error(name, expires, "invalid-resource-on-worker", message)]
                    if spec.type == "file":
                        target = workdir / "content"
                        self._extract(tar, member, target)
                        out.append(self._entry(name, posixpath.basename(member.name), target, expires))
                        break
                    continue
                if member.isfifo() or member.ischr() or member.isblk():
                    # Never opened or uploaded: an error artifact names it (docker-worker skipped it silently).
                    where = _safe_member_path(member.name)
                    if not where:
                        continue  # a name that would escape: nothing to name it by
                    message = f"{where!r} in the artifact directory is {_kind(member)}, not a regular file"
                    self.log_error(f'Error uploading "{name}". {message}')
                    member_name = f"{name.rstrip('/')}/{where}"
                    out.append(self._error(member_name, expires, "invalid-resource-on-worker", message))
                    continue
                if not member.isreg():
                    continue  # directories and symlinks: docker-worker skips them too
                rel = _safe_member_path(member.name)
                if not rel:
                    # Never written anywhere: one error artifact names the directory, the log names the entry.
                    message = f"Archive entry {member.name!r} would escape the artifact directory; refused"
                    self.log_error(f'Error uploading "{name}". {message}')
                    if not refused:
                        out.append(self._error(name, expires, "invalid-resource-on-worker", message))
                    refused = True
                    continue
                member_name = f"{name.rstrip('/')}/{rel}"
                target = workdir / f"m{len(out)}"
                self._extract(tar, member, target)
                out.append(self._entry(member_name, member_name, target, expires))
        return out

    @staticmethod
    def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        src = tar.extractfile(member)
        assert src is not None
        with src, target.open("wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)

    @staticmethod
    def _entry(name: str, type_name: str, path: Path, expires: dt.datetime) -> ArtifactEntry:
        return ArtifactEntry(
            name=name,
            expires=expires,
            content_type=content_type(type_name),
            content_encoding=content_encoding(name),
            source=path,
            fails_task=False,
        )
