"""Safe decompression and extraction for mounts: bounded memory, bounded output, nothing outside the target.

Mount content comes from arbitrary URLs and artifacts, so an archive is hostile until proven otherwise.
generic-worker (``fileutil.Unarchive``) refuses entries whose path or link target leaves the destination;
this module does the same and goes further where Python makes a hole easy to fall into:

- an entry whose name is absolute, or that climbs out of the destination with ``..`` (zip slip), is refused;
- nothing is ever written *through* a symlink: an entry whose parent path crosses a symlink extracted earlier
  is refused, so a ``dir -> /etc`` link followed by ``dir/passwd`` cannot write outside;
- a symlink's target must stay inside the destination; it is stored normalised (``a/../b`` becomes ``b``) so
  the kernel resolves it exactly as it was checked, whatever other links the archive creates later;
- a hardlink must name a regular file already extracted inside the destination;
- devices, FIFOs and other special files are refused;
- the total number of bytes written is capped (config ``mountsMaxExtractedBytes``), for archives and for
  single-file decompression alike, so a decompression bomb fails the task instead of filling the disk.

Formats: every one of generic-worker's mount schema that a maintained library or a Debian tool reads.
gzip, bzip2, xz, zlib (``zz``) come from the standard library, zstd, lz4, Brotli (``br``) and framed
Snappy (``sz``) from PyPI libraries, lzip (``lz``) through ``bsdcat`` and 7z/rar through ``bsdtar``
(Debian ``libarchive-tools``), which re-streams the archive as a tar stream that this module's own
extractor checks entry by entry, so the tools never write to the task's directories.  MinLZ (``mz``)
has no reader outside Go and is refused by name.

Everything here is blocking and meant to run in a worker thread (``asyncio.to_thread``); a
:class:`threading.Event` lets the event loop stop a running extraction when the task is aborted.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import brotli
import cramjam
import lz4.frame
import zstandard

from megalodon_core.archive_safety import UnsafeMember, member_parts

#: Read size for every stream: memory stays bounded whatever the archive's size or compression ratio.
CHUNK = 1 << 20
#: Default cap on bytes one mount may write (50 GiB), overridable with ``mountsMaxExtractedBytes``.
DEFAULT_MAX_EXTRACTED_BYTES = 50 * 1024**3
#: Longest symlink target read from a zip entry (zip stores link targets as entry content).
MAX_LINK_TARGET = 4096

#: Single-stream formats decompressed into a file mount, with what reads them.
FILE_FORMATS: dict[str, str] = {
    "br": "brotli",
    "bz2": "bz2",
    "gz": "gzip",
    "lz": "bsdcat (libarchive-tools)",
    "lz4": "lz4.frame",
    "sz": "cramjam (framed Snappy)",
    "xz": "lzma",
    "zst": "zstandard",
    "zz": "zlib",
}
#: Directory formats extracted into a read-only directory or a writable cache.
ARCHIVE_FORMATS = (
    "7z",
    "rar",
    "tar",
    "tar.br",
    "tar.bz2",
    "tar.gz",
    "tar.lz",
    "tar.lz4",
    "tar.sz",
    "tar.xz",
    "tar.zst",
    "tar.zz",
    "zip",
)

#: Formats the payload schema allows but nothing outside Go reads: refused by name, never guessed.
_UNSUPPORTED_WHY = {"mz": "MinLZ (no reader exists outside Go's github.com/minio/minlz)"}
#: The external tool each format needs, and the Debian package that ships it.
_TOOLS = {"lz": "bsdcat", "tar.lz": "bsdcat", "7z": "bsdtar", "rar": "bsdtar"}
_TOOL_PACKAGE = "libarchive-tools"
#: Magic numbers checked before a tool sees the file: ``bsdcat`` passes unknown data through unchanged and
#: ``bsdtar`` reads any format it knows, while the payload promised one format.
_MAGIC = {
    "lz": (b"LZIP",),
    "7z": (b"7z\xbc\xaf\x27\x1c",),
    "rar": (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00"),
}


class ArchiveError(Exception):
    """The content cannot be decompressed or extracted safely; the message names the problem."""


class ExtractionCancelled(ArchiveError):
    """The task was aborted while the content was being unpacked."""

    def __init__(self) -> None:
        super().__init__("extraction cancelled because the task was aborted")


def unsupported_format_reason(fmt: str, *, archive: bool) -> str | None:
    """Why ``fmt`` cannot be handled on this worker, or None when it can."""
    supported = ARCHIVE_FORMATS if archive else tuple(FILE_FORMATS)
    noun = "archive" if archive else "decompression"
    if fmt in supported:
        tool = _TOOLS.get(fmt)
        if tool is not None and shutil.which(tool) is None:
            return (
                f"{noun} format {fmt} needs the {tool} command (Debian package {_TOOL_PACKAGE}), which is not "
                "installed on this worker"
            )
        return None
    base = fmt[4:] if fmt.startswith("tar.") else fmt
    why = _UNSUPPORTED_WHY.get(base)
    if why is not None:
        return f"unsupported {noun} format {fmt}: this worker cannot read {why}; supported {noun} formats are " + (
            ", ".join(supported)
        )
    return f"unsupported {noun} format {fmt}; supported {noun} formats are {', '.join(supported)}"


# -- single streams ----------------------------------------------------------------------------------------
class _ChunkReader(io.RawIOBase):
    """A binary reader over an iterator of decoded chunks; ``close`` releases what produced them."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._release = release
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._release()
            finally:
                super().close()


def _reader(chunks: Iterator[bytes], release: Callable[[], None]) -> IO[bytes]:
    return cast(IO[bytes], io.BufferedReader(_ChunkReader(chunks, release), CHUNK))


def _zlib_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """RFC 1950 zlib (Go's ``compress/zlib``, generic-worker's ``zz``); at most CHUNK bytes out per step."""
    decoder = zlib.decompressobj()
    while not decoder.eof:
        data = decoder.unconsumed_tail or raw.read(CHUNK)
        if not data:
            tail = decoder.flush()
            if tail:
                yield tail
            if not decoder.eof:
                raise ArchiveError("zlib stream is truncated")
            return
        out = decoder.decompress(data, CHUNK)
        if out:
            yield out


def _brotli_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """Brotli, with the decoder's output capped per step so a bomb never sits in memory whole."""
    decoder = brotli.Decompressor()
    exhausted = False
    while not decoder.is_finished():
        data = raw.read(CHUNK) if decoder.can_accept_more_data() and not exhausted else b""
        exhausted = exhausted or (not data and decoder.can_accept_more_data())
        try:
            out = decoder.process(data, output_buffer_limit=CHUNK)
        except brotli.error as exc:
            raise ArchiveError(f"invalid brotli stream: {exc}") from None
        if out:
            yield out
        elif exhausted and not decoder.is_finished():
            raise ArchiveError("brotli stream is truncated")


_SNAPPY_STREAM_ID = b"\xff\x06\x00\x00sNaPpY"
#: Framing format limits: a data chunk holds at most 64 KiB uncompressed (plus its 4-byte CRC).
_SNAPPY_MAX_UNCOMPRESSED = 65536
_SNAPPY_MAX_CHUNK = 4 + 32 + _SNAPPY_MAX_UNCOMPRESSED + _SNAPPY_MAX_UNCOMPRESSED // 6


def _read_exact(raw: IO[bytes], n: int, what: str) -> bytes:
    data = raw.read(n)
    if len(data) != n:
        raise ArchiveError(f"{what} is truncated")
    return data


def _snappy_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """The Snappy framing format (Go's ``github.com/klauspost/compress/s2`` / ``golang/snappy`` reader).

    Each data chunk is decoded (and its CRC-32C checked) by cramjam as a one-chunk stream, so memory stays
    at one 64 KiB chunk whatever the stream's length.
    """
    seen_id = False
    while True:
        header = raw.read(4)
        if not header:
            if not seen_id:
                raise ArchiveError("snappy stream is empty")
            return
        if len(header) != 4:
            raise ArchiveError("snappy stream is truncated")
        kind, length = header[0], int.from_bytes(header[1:], "little")
        if kind == 0xFF:
            if _read_exact(raw, length, "snappy stream") != b"sNaPpY":
                raise ArchiveError("invalid snappy stream identifier")
            seen_id = True
            continue
        if not seen_id:
            raise ArchiveError("not a framed snappy stream (no stream identifier)")
        if kind in (0x00, 0x01):
            if length > _SNAPPY_MAX_CHUNK or length < 4:
                raise ArchiveError(f"invalid snappy chunk length {length}")
            body = _read_exact(raw, length, "snappy stream")
            if kind == 0x00 and cramjam.snappy.decompress_raw_len(body[4:]) > _SNAPPY_MAX_UNCOMPRESSED:
                raise ArchiveError("snappy chunk decodes to more than 64 KiB")
            try:
                out = bytes(cramjam.snappy.decompress(_SNAPPY_STREAM_ID + header + body))
            except cramjam.DecompressionError as exc:
                raise ArchiveError(f"invalid snappy chunk: {exc}") from None
            if out:
                yield out
        elif kind <= 0x7F:
            raise ArchiveError(f"reserved unskippable snappy chunk type 0x{kind:02x}")
        else:  # skippable (padding and reserved 0x80-0xfe): read past it in bounded steps
            while length:
                length -= len(_read_exact(raw, min(length, CHUNK), "snappy stream"))


def _check_magic(path: Path, fmt: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(magic) for magic in _MAGIC[fmt]):
        raise ArchiveError(f"{path} is not a {fmt} file (its first bytes are not a {fmt} signature)")


def _tool_reader(argv: list[str], what: str) -> IO[bytes]:
    """Stream a Debian tool's stdout; a non-zero exit (corrupt input) becomes an ArchiveError naming it."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise ArchiveError(f"{what} needs the {argv[0]} command (Debian package {_TOOL_PACKAGE}), which is missing")
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by release(); a file, so stderr never blocks the tool
    proc = subprocess.Popen([tool, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdout is not None
    stdout = proc.stdout

    def chunks() -> Iterator[bytes]:
        while chunk := stdout.read(CHUNK):
            yield chunk
        if proc.wait() != 0:
            errors.seek(0)
            message = errors.read(4096).decode("utf-8", "replace").strip()
            raise ArchiveError(f"{what}: {argv[0]} exited with code {proc.returncode}: {message}")

    def release() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stdout.close()
        errors.close()

    return _reader(chunks(), release)


def open_decompressed(path: Path, fmt: str) -> IO[bytes]:
    """A binary reader of ``path`` decompressed as ``fmt`` (one of :data:`FILE_FORMATS`, or "" for none)."""
    if fmt == "":
        return open(path, "rb")
    if fmt == "gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if fmt == "bz2":
        return cast(IO[bytes], bz2.open(path, "rb"))
    if fmt == "xz":
        return cast(IO[bytes], lzma.open(path, "rb"))
    if fmt == "zst":
        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader (closefd)
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return reader
    if fmt == "lz4":
        frame: IO[bytes] = lz4.frame.open(path, "rb")
        return frame
    if fmt in ("zz", "br", "sz"):
        source = open(path, "rb")  # noqa: SIM115 - closed by the reader's release
        decode = {"zz": _zlib_chunks, "br": _brotli_chunks, "sz": _snappy_chunks}[fmt]
        return _reader(decode(source), source.close)
    if fmt == "lz":
        _check_magic(path, "lz")
        return _tool_reader(["bsdcat", "--", str(path)], f"lzip file {path.name}")
    reason = unsupported_format_reason(fmt, archive=False)
    raise ArchiveError(reason or f"unsupported decompression format {fmt}")


class _Budget:
    """The bytes one mount may still write, shared by every entry of an archive."""

    def __init__(self, limit: int, cancel: threading.Event | None) -> None:
        self.limit = limit
        self.used = 0
        self.cancel = cancel

    def take(self, n: int, what: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise ExtractionCancelled()
        self.used += n
        if self.used > self.limit:
            raise ArchiveError(
                f"{what} expands to more than {self.limit} bytes, the limit this worker allows for one mount "
                "(config mountsMaxExtractedBytes); refusing to continue"
            )


def _copy_stream(src: IO[bytes], dst: IO[bytes], budget: _Budget, what: str) -> None:
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return
        budget.take(len(chunk), what)
        dst.write(chunk)


#: What decompressors raise on corrupt input (besides OSError/EOFError).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    lzma.LZMAError,
    zstandard.ZstdError,
    RuntimeError,
    ValueError,
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    brotli.error,
    cramjam.DecompressionError,
)


def decompress_file(
    src: Path, dst: Path, fmt: str, *, limit: int = DEFAULT_MAX_EXTRACTED_BYTES, cancel: threading.Event | None = None
) -> int:
    """Write ``src`` decompressed as ``fmt`` to ``dst`` (replacing it); return the bytes written.

    The output is written to a temporary name next to ``dst`` and renamed into place, so a failed or
    refused decompression never leaves half a file where the task expects a whole one.
    """
    budget = _Budget(limit, cancel)
    tmp = dst.with_name(f".{dst.name}.megalodon-partial")
    try:
        with open_decompressed(src, fmt) as reader, open(tmp, "wb") as out:
            _copy_stream(reader, out, budget, f"{fmt} content {src.name}")
        os.replace(tmp, dst)
    except ArchiveError:
        _unlink_quietly(tmp)
        raise
    except _DECODE_ERRORS as exc:
        _unlink_quietly(tmp)
        raise ArchiveError(f"not able to decompress {src} to {dst}: {exc}") from exc
    return budget.used


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# -- archives ----------------------------------------------------------------------------------------------
class _Extractor:
    """Writes archive entries under ``dest`` one at a time, enforcing every rule in the module docstring."""

    def __init__(self, dest: Path, budget: _Budget) -> None:
        self.dest = dest.resolve()
        self.budget = budget

    # -- path checks -------------------------------------------------------------------------------------
    def relative(self, name: str) -> tuple[str, ...]:
        """The entry's path as components below ``dest``; refuses absolute and escaping names."""
        try:
            return member_parts(name)
        except UnsafeMember as exc:
            raise ArchiveError(f"illegal file path in archive: {name} ({exc.reason})") from None

    def parent_dir(self, parts: tuple[str, ...], name: str) -> Path:
        """Create the parent directories of an entry, refusing to pass through any symlink."""
        current = self.dest
        for part in parts[:-1]:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise ArchiveError(
                    f"illegal file path in archive: {name} (it passes through the symlink "
                    f"{current.relative_to(self.dest)}, which could point anywhere)"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError(f"illegal file path in archive: {name} ({current} is not a directory)")
        return current

    def clear(self, path: Path, name: str, *, keep_dir: bool = False) -> None:
        """Make room for an entry: a later entry replaces an earlier file or link of the same name."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            raise ArchiveError(f"archive entry {name} would replace the directory {path}")
        os.unlink(path)

    # -- entry kinds -------------------------------------------------------------------------------------
    def directory(self, name: str, mode: int) -> None:
        parts = self.relative(name)
        if not parts:
            return
        parent = self.parent_dir(parts, name)
        path = parent / parts[-1]
        self.clear(path, name, keep_dir=True)
        if not path.is_dir():
            os.mkdir(path, 0o755)
        os.chmod(path, (mode & 0o777) | 0o700)

    def file(self, name: str, mode: int, source: IO[bytes], mtime: float | None = None) -> None:
        parts = self.relative(name)
        if not parts:
            raise ArchiveError(f"illegal file path in archive: {name!r} (empty name)")
        parent = self.parent_dir(parts, name)
        path = parent / parts[-1]
        self.clear(path, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            _copy_stream(source, out, self.budget, "archive")
        os.chmod(path, (mode & 0o777) | 0o600)
        if mtime is not None:
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(path, (mtime, mtime))

    def symlink(self, name: str, target: str) -> None:
        parts = self.relative(name)
        if not parts:
            raise ArchiveError(f"illegal symlink in archive: {name!r} (empty name)")
        parent = self.parent_dir(parts, name)
        path = parent / parts[-1]
        if not target:
            raise ArchiveError(f"illegal symlink target in archive: {name} -> (empty target)")
        if target.startswith("/"):
            resolved = Path(os.path.normpath(target))
            if resolved != self.dest and self.dest not in resolved.parents:
                raise ArchiveError(
                    f"illegal symlink target in archive: {name} -> {target} (it points outside the target directory)"
                )
        else:
            resolved = Path(os.path.normpath(parent / target))
            if resolved != self.dest and self.dest not in resolved.parents:
                raise ArchiveError(
                    f"illegal symlink target in archive: {name} -> {target} (it points outside the target directory)"
                )
        # Stored normalised and relative: the kernel then resolves exactly the path that was checked.
        stored = os.path.relpath(resolved, parent)
        self.clear(path, name)
        os.symlink(stored, path)

    def hardlink(self, name: str, target: str) -> None:
        parts = self.relative(name)
        if not parts:
            raise ArchiveError(f"illegal hardlink in archive: {name!r} (empty name)")
        try:
            target_parts = self.relative(target)
        except ArchiveError:
            raise ArchiveError(
                f"illegal hardlink target in archive: {name} -> {target} (it points outside the target directory)"
            ) from None
        source = self.dest.joinpath(*target_parts)
        real = Path(os.path.realpath(source))
        if not target_parts or (real != self.dest and self.dest not in real.parents):
            raise ArchiveError(
                f"illegal hardlink target in archive: {name} -> {target} (it points outside the target directory)"
            )
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise ArchiveError(
                f"illegal hardlink target in archive: {name} -> {target} (no such file was extracted before it)"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"illegal hardlink target in archive: {name} -> {target} (not a regular file)")
        parent = self.parent_dir(parts, name)
        path = parent / parts[-1]
        if path == source:
            return
        self.clear(path, name)
        os.link(source, path, follow_symlinks=False)


def _tar_stream(path: Path, fmt: str) -> IO[bytes]:
    if fmt in ("7z", "rar"):
        # bsdtar re-streams the archive as pax tar on stdout; nothing is written to disk by the tool.
        _check_magic(path, fmt)
        return _tool_reader(
            ["bsdtar", "-c", "-f", "-", "-P", "--format", "pax", f"@{path}"], f"{fmt} archive {path.name}"
        )
    compression = fmt[4:] if fmt.startswith("tar.") else ""
    return open_decompressed(path, compression)


def _extract_tar(path: Path, fmt: str, ex: _Extractor) -> None:
    with _tar_stream(path, fmt) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if ex.budget.cancel is not None and ex.budget.cancel.is_set():
                raise ExtractionCancelled()
            name = member.name
            if member.isdir():
                ex.directory(name, member.mode)
            elif member.issym():
                ex.symlink(name, member.linkname)
            elif member.islnk():
                ex.hardlink(name, member.linkname)
            elif member.isreg():
                source = tar.extractfile(member)
                assert source is not None
                with source:
                    ex.file(name, member.mode, source, float(member.mtime))
            else:
                kind = "device" if (member.ischr() or member.isblk()) else "FIFO" if member.isfifo() else "special"
                raise ArchiveError(f"illegal file type in archive: {name} is a {kind} file")
        # tarfile stops at the end-of-archive marker (or at a short read, quietly); reading the stream to its
        # end is what checks a decoder's trailer (gzip CRC) and a tool's exit code (bsdtar on a damaged 7z).
        while stream.read(CHUNK):
            if ex.budget.cancel is not None and ex.budget.cancel.is_set():
                raise ExtractionCancelled()


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0xFFFF


def _extract_zip(path: Path, ex: _Extractor) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if ex.budget.cancel is not None and ex.budget.cancel.is_set():
                raise ExtractionCancelled()
            if info.flag_bits & 0x1:
                raise ArchiveError(f"not able to extract encrypted zip entry {info.filename}")
            mode = _zip_mode(info)
            if info.is_dir():
                ex.directory(info.filename, mode & 0o777 or 0o755)
            elif stat.S_ISLNK(mode):
                with archive.open(info) as source:
                    target = source.read(MAX_LINK_TARGET + 1)
                if len(target) > MAX_LINK_TARGET:
                    raise ArchiveError(f"illegal symlink in archive: {info.filename} (target is too long)")
                ex.symlink(info.filename, target.decode("utf-8", "surrogateescape"))
            elif mode and not (stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0):
                raise ArchiveError(f"illegal file type in archive: {info.filename} is not a regular file")
            else:
                with archive.open(info) as source:
                    ex.file(info.filename, mode & 0o777 or 0o644, source)


def extract_archive(
    src: Path, dest: Path, fmt: str, *, limit: int = DEFAULT_MAX_EXTRACTED_BYTES, cancel: threading.Event | None = None
) -> int:
    """Extract archive ``src`` (format ``fmt``) into ``dest`` (created if needed); return the bytes written.

    On any refusal the error names the offending entry; entries already written stay, and the caller
    decides what to do with the half-extracted directory (the task fails either way).
    """
    reason = unsupported_format_reason(fmt, archive=True)
    if reason is not None:
        raise ArchiveError(reason)
    dest.mkdir(parents=True, exist_ok=True)
    ex = _Extractor(dest, _Budget(limit, cancel))
    try:
        if fmt == "zip":
            _extract_zip(src, ex)
        else:
            _extract_tar(src, fmt, ex)
    except ArchiveError:
        raise
    except _DECODE_ERRORS as exc:
        raise ArchiveError(f"not able to extract {fmt} archive {src} to {dest}: {exc}") from exc
    return ex.budget.used


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    """Hex SHA-256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if cancel is not None and cancel.is_set():
                raise ExtractionCancelled()
            digest.update(chunk)
    return digest.hexdigest()


def copy_file(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` through a temporary name (never a move: the download cache keeps its copy)."""
    tmp = dst.with_name(f".{dst.name}.megalodon-partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return dst.stat().st_size
