"""Finding a generic-worker payload's artifacts (NOTES.md section 5).

Error artifacts carry generic-worker's reasons and messages, so people reading a failed task see the same
words.  Paths are generic-worker's: relative to the task directory or absolute, symlinks followed.  Who
may read what is decided by who reads it: the insecure engine's tasks run as the worker's own user (they
could print any file the worker can read), and the multiuser engine reads every artifact as the task user
(:class:`megalodon_native.multiuser.MultiuserArtifacts`).

Nothing here ever blocks on what a task left behind.  A FIFO, a socket or a device named as an artifact
(or found inside a directory artifact) is never opened: it is classified by ``stat`` and becomes an
``invalid-resource-on-worker`` error artifact, as is a symlink loop.  :meth:`NativeArtifacts.open` opens
the content ``O_NONBLOCK`` and checks the opened file with ``fstat``, then hands the upload the opened file
itself (``/proc/self/fd/N``), so a file swapped for a FIFO after ``collect`` cannot wedge the upload either.
A directory walk never follows symlinks to directories and never enters a directory twice (bind-mount loops).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from megalodon_core.artifacts import content_encoding_for, content_type_for
from megalodon_core.contracts import ArtifactEntry, Artifacts
from megalodon_core.errors import Failure
from megalodon_core.timefmt import parse_iso

INVALID = "invalid-resource-on-worker"
MISSING = "file-missing-on-worker"


def _expires(value: Any, default: dt.datetime) -> dt.datetime:
    if value is None:
        return default
    if isinstance(value, dt.datetime):
        return value
    return parse_iso(str(value))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words for an error message."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def open_regular(path: Path) -> int:
    """Open ``path`` for reading without ever blocking; return the fd of a regular file or raise OSError.

    ``O_NONBLOCK`` makes opening a FIFO return at once, ``fstat`` on the opened descriptor decides (no
    window between a check and the open), and blocking mode is restored for the regular file's reads.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"it is {kind_of(mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NativeArtifacts(Artifacts):
    def __init__(self, task_dir: Path, artifacts: list[Any], task_expires: dt.datetime) -> None:
        self.task_dir = task_dir
        self.artifacts = artifacts
        self.task_expires = task_expires

    async def collect(self) -> list[ArtifactEntry]:
        if not self.artifacts:
            return []
        return await asyncio.to_thread(self._collect)

    @contextlib.asynccontextmanager
    async def open(self, entry: ArtifactEntry) -> AsyncIterator[Path]:
        """The entry's content as the opened regular file (never a FIFO or device, whatever changed since)."""
        if not isinstance(entry.source, Path):
            raise TypeError(f"artifact {entry.name!r} has no local file")
        try:
            fd = await asyncio.to_thread(open_regular, entry.source)
        except OSError as exc:
            raise Failure(
                f"{INVALID}: Could not read artifact '{entry.name}' from '{entry.source}': {exc.strerror or exc}"
            ) from None
        try:
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

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
            path = self.task_dir / spec.path  # an absolute spec.path stays absolute
            if spec.type == "file":
                entries.append(self._file(spec, name, path, expires))
            else:
                entries.extend(self._directory(spec, name, path, expires))
        entries.sort(key=lambda e: e.name)
        return entries

    @staticmethod
    def _stat(path: Path) -> os.stat_result | OSError:
        try:
            return os.stat(path)  # follows symlinks, as generic-worker; stat never opens, so never blocks
        except OSError as exc:
            return exc
        except ValueError:  # an embedded NUL byte: no such file can exist
            return OSError(errno.ENOENT, "invalid path")

    def _file(self, spec: Any, name: str, path: Path, expires: dt.datetime) -> ArtifactEntry:
        info = self._stat(path)
        if isinstance(info, OSError):
            if info.errno == errno.ELOOP:
                return self._error(spec, name, expires, INVALID, f"File artifact '{path}' is a symbolic link loop")
            return self._error(spec, name, expires, MISSING, f"Could not read file '{path}'")
        if stat.S_ISDIR(info.st_mode):
            return self._error(
                spec, name, expires, INVALID, f"File artifact '{path}' exists as a directory, not a file, on the worker"
            )
        if not stat.S_ISREG(info.st_mode):
            return self._error(
                spec, name, expires, INVALID, f"File artifact '{path}' is {kind_of(info.st_mode)}, not a regular file"
            )
        return self._entry(spec, name, path, expires)

    def _directory(self, spec: Any, name: str, path: Path, expires: dt.datetime) -> list[ArtifactEntry]:
        info = self._stat(path)
        if isinstance(info, OSError):
            if info.errno == errno.ELOOP:
                return [
                    self._error(spec, name, expires, INVALID, f"Directory artifact '{path}' is a symbolic link loop")
                ]
            return [self._error(spec, name, expires, MISSING, f"Could not read directory '{path}'")]
        if not stat.S_ISDIR(info.st_mode):
            return [
                self._error(
                    spec,
                    name,
                    expires,
                    INVALID,
                    f"Directory artifact '{path}' exists as {kind_of(info.st_mode)}, not a directory, on the worker",
                )
            ]
        out: list[ArtifactEntry] = []
        base = name.rstrip("/")
        seen: set[tuple[int, int]] = {(info.st_dev, info.st_ino)}
        for root, dirs, files in os.walk(path, followlinks=False):
            kept = []
            for dirname in sorted(dirs):
                try:
                    sub = os.lstat(os.path.join(root, dirname))
                except OSError:
                    continue
                if (sub.st_dev, sub.st_ino) in seen:  # a bind mount looping back: never walked twice
                    rel = (Path(root) / dirname).relative_to(path).as_posix()
                    message = f"Error processing directory '{Path(root) / dirname}' as artifact: directory loop"
                    out.append(self._error(spec, f"{base}/{rel}", expires, INVALID, message))
                    continue
                seen.add((sub.st_dev, sub.st_ino))
                kept.append(dirname)
            dirs[:] = kept
            for filename in sorted(files):
                member = Path(root) / filename
                member_name = f"{base}/{member.relative_to(path).as_posix()}"
                member_info = self._stat(member)
                if isinstance(member_info, OSError):
                    if member_info.errno == errno.ELOOP:
                        message = f"Error processing file '{member}' as artifact: symbolic link loop"
                        out.append(self._error(spec, member_name, expires, INVALID, message))
                    else:
                        out.append(self._error(spec, member_name, expires, MISSING, f"Could not read file '{member}'"))
                elif stat.S_ISDIR(member_info.st_mode):
                    continue  # a symlink to a directory: generic-worker's walk does not follow it either
                elif not stat.S_ISREG(member_info.st_mode):
                    message = (
                        f"Error processing file '{member}' as artifact: it is {kind_of(member_info.st_mode)}, "
                        "not a regular file"
                    )
                    out.append(self._error(spec, member_name, expires, INVALID, message))
                else:
                    out.append(self._entry(spec, member_name, member, expires))
        return out
