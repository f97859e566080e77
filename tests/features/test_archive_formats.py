"""Every archive format of generic-worker's mount schema: br, lz, sz, zz, 7z, rar and their tar variants.

The archives are made here, small: Brotli, zlib and Snappy with the same libraries the worker reads them
with, lzip with the standard library's raw LZMA1 encoder plus the lzip header and trailer, 7z with
``bsdtar --format 7zip``, RAR 4 (stored) by hand (no free tool writes RAR).  The 7z/rar/lz tests need
``bsdtar``/``bsdcat`` (Debian libarchive-tools, installed by ``.ci/docker-setup.sh``) and fail without it.
"""

from __future__ import annotations

import base64
import io
import lzma
import os
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brotli
import cramjam
import pytest

from megalodon_core.testing import Harness
from megalodon_features.archives import (
    ARCHIVE_FORMATS,
    FILE_FORMATS,
    ArchiveError,
    decompress_file,
    extract_archive,
    unsupported_format_reason,
)


def lzip(data: bytes) -> bytes:
    """One lzip member: ``LZIP`` v1, dictionary 2^16, raw LZMA1 (lc3 lp0 pb2, end marker), CRC and sizes."""
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 16, "lc": 3, "lp": 0, "pb": 2}]
    member = b"LZIP\x01\x10" + lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
    return member + struct.pack("<IQQ", zlib.crc32(data), len(data), len(member) + 20)


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "br": brotli.compress,
    "zz": zlib.compress,
    "sz": lambda data: bytes(cramjam.snappy.compress(data)),
    "lz": lzip,
}


def sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (("top/hello.txt", b"hello\n", 0o644), ("top/bin/run.sh", b"#!/bin/sh\n", 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("top/link")
        link.type, link.linkname = tarfile.SYMTYPE, "hello.txt"
        tar.addfile(link)
    return buf.getvalue()


def check_sample(dest: Path) -> None:
    assert (dest / "top/hello.txt").read_bytes() == b"hello\n"
    assert (dest / "top/bin/run.sh").stat().st_mode & 0o111
    assert os.readlink(dest / "top/link") == "hello.txt"


def seven_zip(tmp_path: Path, tree: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    src = tmp_path / "tree"
    for name, data in tree.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
        (src / name).chmod(0o755 if name.endswith(".sh") else 0o644)
    for name, target in (symlinks or {}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / name)
    out = tmp_path / "archive.7z"
    subprocess.run(["bsdtar", "--format", "7zip", "-c", "-f", str(out), "-C", str(src), "."], check=True)
    return out


def _rar_block(kind: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
    header = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data


def rar4(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A RAR 4 archive of stored (method 0x30) entries ``(name, data, unix mode)``, written by Unix (host 3)."""
    out = b"Rar!\x1a\x07\x00" + _rar_block(0x73, 0, b"\x00" * 6)
    for name, data, mode in entries:
        raw_name = name.encode()
        flags = 0x8000 | (0x00E0 if mode & 0o040000 else 0)  # LONG_BLOCK; directory window bits
        body = struct.pack(
            "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A210000, 20, 0x30, len(raw_name), mode
        )
        out += _rar_block(0x74, flags, body + raw_name, data)
    return out + _rar_block(0x7B, 0x4000, b"")


def rar_sample() -> bytes:
    return rar4(
        [
            ("top", b"", 0o040755),
            ("top/hello.txt", b"hello\n", 0o100644),
            ("top/bin/run.sh", b"#!/bin/sh\n", 0o100755),
            ("top/link", b"hello.txt", 0o120777),
        ]
    )


def write(tmp_path: Path, data: bytes, name: str = "archive") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- single streams ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(COMPRESS))
def test_new_file_formats_decompress_one_stream(tmp_path: Path, fmt: str) -> None:
    payload = os.urandom(3000) + b"line\n" * 100_000  # several 1 MiB reads and 64 KiB snappy chunks
    src = write(tmp_path, COMPRESS[fmt](payload))
    dst = tmp_path / "file.bin"
    assert unsupported_format_reason(fmt, archive=False) is None and fmt in FILE_FORMATS
    assert decompress_file(src, dst, fmt) == len(payload)
    assert dst.read_bytes() == payload


@pytest.mark.parametrize("fmt", sorted(COMPRESS))
def test_corrupt_or_truncated_streams_are_errors_and_leave_nothing(tmp_path: Path, fmt: str) -> None:
    good = COMPRESS[fmt](b"some content\n" * 1000)
    for bad in (good[: len(good) // 2], good[:12] + b"\x00garbage" * 8):
        dst = tmp_path / "out"
        with pytest.raises(ArchiveError):
            decompress_file(write(tmp_path, bad), dst, fmt)
        assert not dst.exists() and not list(tmp_path.glob(".out.*"))


def test_lzip_content_must_be_lzip(tmp_path: Path) -> None:
    """bsdcat passes unknown data through unchanged: the signature is checked before it runs."""
    with pytest.raises(ArchiveError, match="is not a lz file"):
        decompress_file(write(tmp_path, b"plain text, not lzip"), tmp_path / "out", "lz")


@pytest.mark.parametrize("fmt", sorted(COMPRESS))
def test_new_file_formats_respect_the_size_limit(tmp_path: Path, fmt: str) -> None:
    src = write(tmp_path, COMPRESS[fmt](b"\x00" * (4 << 20)))
    with pytest.raises(ArchiveError, match="mountsMaxExtractedBytes"):
        decompress_file(src, tmp_path / "out", fmt, limit=1 << 20)
    assert not (tmp_path / "out").exists()


# -- archives ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["tar.br", "tar.zz", "tar.sz", "tar.lz"])
def test_new_tar_variants_extract(tmp_path: Path, fmt: str) -> None:
    src = write(tmp_path, COMPRESS[fmt[4:]](sample_tar()))
    extract_archive(src, tmp_path / "out", fmt)
    check_sample(tmp_path / "out")


def test_7z_extracts_files_modes_and_links(tmp_path: Path) -> None:
    src = seven_zip(
        tmp_path, {"top/hello.txt": b"hello\n", "top/bin/run.sh": b"#!/bin/sh\n"}, {"top/link": "hello.txt"}
    )
    dest = tmp_path / "out"
    assert extract_archive(src, dest, "7z") == len(b"hello\n") + len(b"#!/bin/sh\n")
    check_sample(dest)


def test_rar_extracts_files_modes_and_links(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert extract_archive(write(tmp_path, rar_sample()), dest, "rar") == len(b"hello\n") + len(b"#!/bin/sh\n")
    check_sample(dest)


def test_7z_and_rar_follow_the_safe_extraction_rules(tmp_path: Path) -> None:
    escaping = seven_zip(tmp_path, {"ok.txt": b"ok"}, {"evil": "../../../etc"})
    with pytest.raises(ArchiveError, match="illegal symlink target in archive"):
        extract_archive(escaping, tmp_path / "out7z", "7z")
    slip = write(tmp_path, rar4([("../escaped.txt", b"x", 0o100644)]), "slip.rar")
    with pytest.raises(ArchiveError, match="illegal file path in archive"):
        extract_archive(slip, tmp_path / "outrar", "rar")
    assert not (tmp_path / "escaped.txt").exists()
    big = write(tmp_path, rar4([("big", b"\x00" * (2 << 20), 0o100644)]), "big.rar")
    with pytest.raises(ArchiveError, match="mountsMaxExtractedBytes"):
        extract_archive(big, tmp_path / "outbig", "rar", limit=1 << 20)


def test_7z_and_rar_must_be_what_the_payload_says(tmp_path: Path) -> None:
    """bsdtar reads any format it knows; a tar named 7z is refused, as generic-worker's Identify does."""
    tar = write(tmp_path, sample_tar())
    for fmt in ("7z", "rar"):
        with pytest.raises(ArchiveError, match=f"is not a {fmt} file"):
            extract_archive(tar, tmp_path / "out", fmt)
    corrupt = rar_sample().replace(b"top/hello.txt", b"top/hellO.txt")  # its header CRC no longer matches
    with pytest.raises(ArchiveError, match=r"rar archive bad[.]rar: bsdtar exited with code 1: .*Header CRC error"):
        extract_archive(write(tmp_path, corrupt, "bad.rar"), tmp_path / "out2", "rar")
    damaged = seven_zip(tmp_path, {"ok.txt": b"ok\n"}).read_bytes()[:-10]
    with pytest.raises(ArchiveError, match="7-Zip archive"):
        extract_archive(write(tmp_path, damaged, "bad.7z"), tmp_path / "out3", "7z")


@pytest.mark.parametrize(("fmt", "archive"), [("mz", False), ("tar.mz", True)])
def test_minlz_alone_is_refused_by_name(tmp_path: Path, fmt: str, archive: bool) -> None:
    reason = unsupported_format_reason(fmt, archive=archive)
    assert reason is not None and f"format {fmt}" in reason and "MinLZ" in reason
    assert fmt not in (ARCHIVE_FORMATS if archive else tuple(FILE_FORMATS))
    with pytest.raises(ArchiveError, match="MinLZ"):
        if archive:
            extract_archive(write(tmp_path, b"x"), tmp_path / "out", fmt)
        else:
            decompress_file(write(tmp_path, b"x"), tmp_path / "out", fmt)


# -- end to end ----------------------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def payload(script: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"command": [["/bin/sh", "-c", script]], "maxRunTime": 60, "mounts": mounts}


async def test_formats_read_through_libraries_and_libarchive(harness: Harness) -> None:
    """br, zz, sz, lz files and their tar variants, 7z and rar, end to end (archives from test_archive_formats)."""
    text = b"formatted content\n" * 50
    mounts: list[dict[str, Any]] = [
        {"file": f"f/{fmt}.txt", "content": {"base64": b64(fn(text))}, "format": fmt} for fmt, fn in COMPRESS.items()
    ]
    mounts += [
        {"directory": f"d/tar.{fmt}", "content": {"base64": b64(fn(sample_tar()))}, "format": f"tar.{fmt}"}
        for fmt, fn in COMPRESS.items()
    ]
    tree = {"top/hello.txt": b"hello\n", "top/bin/run.sh": b"#!/bin/sh\n"}
    seven = seven_zip(harness.tmp_path, tree, {"top/link": "hello.txt"}).read_bytes()
    mounts += [
        {"directory": "d/7z", "content": {"base64": b64(seven)}, "format": "7z"},
        {"directory": "d/rar", "content": {"base64": b64(rar_sample())}, "format": "rar"},
    ]
    script = (
        "for f in br zz sz lz; do cmp f/$f.txt f/br.txt && echo file-$f-ok; done; "
        'for d in tar.br tar.zz tar.sz tar.lz 7z rar; do printf "$d:"; cat d/$d/top/link; done; wc -c < f/lz.txt'
    )
    out = await harness.run(payload(script, mounts))
    assert out.state == "completed", out.log
    for fmt in COMPRESS:
        assert f"file-{fmt}-ok" in out.log
    for fmt in ("tar.br", "tar.zz", "tar.sz", "tar.lz", "7z", "rar"):
        assert f"{fmt}:hello\n" in out.log
        assert f"[mounts] Extracting {fmt} file " in out.log
    assert f"\n{len(text)}\n" in out.log
