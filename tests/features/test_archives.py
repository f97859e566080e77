"""Safe extraction for mounts: every supported format unpacks, and every hostile archive is refused by name."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import lz4.frame
import pytest
import zstandard

from megalodon_features.archives import (
    FILE_FORMATS,
    ArchiveError,
    ExtractionCancelled,
    decompress_file,
    extract_archive,
)

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda data: data,
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "lz4": lz4.frame.compress,
}


def tar_bytes(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in entries:
            if isinstance(item, tuple):
                info, data = item
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(item)
    return COMPRESS[compression](buf.getvalue())


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    return info


def sample_tree_tar(compression: str = "") -> bytes:
    return tar_bytes(
        [
            member("top", tarfile.DIRTYPE, mode=0o755),
            (member("top/hello.txt"), b"hello\n"),
            (member("top/bin/run.sh", mode=0o755), b"#!/bin/sh\necho run\n"),
            member("top/link", tarfile.SYMTYPE, linkname="hello.txt"),
            member("top/hard", tarfile.LNKTYPE, linkname="top/hello.txt"),
        ],
        compression,
    )


def zip_bytes(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buf.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "archive") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- formats -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "tar.lz4"])
def test_every_tar_format_extracts_files_dirs_modes_and_links(tmp_path: Path, fmt: str) -> None:
    compression = fmt[4:] if fmt != "tar" else ""
    src = write(tmp_path, sample_tree_tar(compression))
    dest = tmp_path / "out"
    written = extract_archive(src, dest, fmt)
    assert (dest / "top/hello.txt").read_bytes() == b"hello\n"
    assert (dest / "top/bin/run.sh").stat().st_mode & 0o111
    assert os.readlink(dest / "top/link") == "hello.txt"
    assert (dest / "top/link").read_bytes() == b"hello\n"
    assert os.path.samefile(dest / "top/hard", dest / "top/hello.txt")
    assert written == len(b"hello\n") + len(b"#!/bin/sh\necho run\n")


def test_zip_extracts_files_directories_and_internal_symlinks(tmp_path: Path) -> None:
    src = write(tmp_path, zip_bytes({"a/b.txt": b"bee", "c/": b"", "d.txt": b"dee"}, {"a/l": "../d.txt"}))
    dest = tmp_path / "out"
    extract_archive(src, dest, "zip")
    assert (dest / "a/b.txt").read_bytes() == b"bee"
    assert (dest / "c").is_dir()
    assert (dest / "a/l").read_bytes() == b"dee"


@pytest.mark.parametrize("fmt", sorted(set(COMPRESS) & set(FILE_FORMATS)))
def test_every_file_format_decompresses_one_stream(tmp_path: Path, fmt: str) -> None:
    payload = b"line\n" * 10000
    src = write(tmp_path, COMPRESS[fmt](payload))
    dst = tmp_path / "file.txt"
    dst.write_bytes(b"old content that must be replaced")
    assert decompress_file(src, dst, fmt) == len(payload)
    assert dst.read_bytes() == payload


def test_unknown_formats_are_named_not_guessed(tmp_path: Path) -> None:
    """MinLZ and the new formats are covered in test_archive_formats.py; anything else is refused by name."""
    with pytest.raises(ArchiveError, match="unsupported decompression format rot13"):
        decompress_file(write(tmp_path, b"x"), tmp_path / "out", "rot13")
    with pytest.raises(ArchiveError, match=r"unsupported archive format tar[.]rot13"):
        extract_archive(write(tmp_path, b"x"), tmp_path / "out", "tar.rot13")


def test_corrupt_content_is_a_clear_error_and_leaves_no_partial_file(tmp_path: Path) -> None:
    dst = tmp_path / "file"
    with pytest.raises(ArchiveError, match="not able to decompress"):
        decompress_file(write(tmp_path, b"not gzip at all"), dst, "gz")
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "archive"]
    with pytest.raises(ArchiveError, match="not able to extract zip archive"):
        extract_archive(write(tmp_path, b"PK\x03\x04garbage"), tmp_path / "out", "zip")
    with pytest.raises(ArchiveError, match=r"not able to extract tar\.xz archive"):
        extract_archive(write(tmp_path, b"\xfd7zXZ\x00broken"), tmp_path / "out2", "tar.xz")


# -- hostile archives --------------------------------------------------------------------------------------
def test_zip_slip_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path, zip_bytes({"ok.txt": b"ok", "../../escaped.txt": b"pwned"}))
    with pytest.raises(ArchiveError, match=r"illegal file path in archive: \.\./\.\./escaped\.txt .*zip slip"):
        extract_archive(src, tmp_path / "a" / "out", "zip")
    assert not (tmp_path / "escaped.txt").exists()
    src = write(tmp_path, tar_bytes([(member("sub/../../escaped.txt"), b"pwned")]))
    with pytest.raises(ArchiveError, match="zip slip"):
        extract_archive(src, tmp_path / "b" / "out", "tar")
    assert not (tmp_path / "b" / "escaped.txt").exists()


def test_absolute_paths_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "abs-target.txt"
    src = write(tmp_path, tar_bytes([(member(str(target)), b"pwned")]))
    with pytest.raises(ArchiveError, match=r"illegal file path in archive: /.*absolute paths are not allowed"):
        extract_archive(src, tmp_path / "out", "tar")
    assert not target.exists()


def test_symlinks_pointing_outside_are_refused(tmp_path: Path) -> None:
    for i, target in enumerate(["../../outside", "/etc/passwd", "a/../../.."]):
        src = write(tmp_path, tar_bytes([member("evil", tarfile.SYMTYPE, linkname=target)]))
        with pytest.raises(ArchiveError, match=r"illegal symlink target in archive: evil -> .*outside"):
            extract_archive(src, tmp_path / f"out{i}", "tar")
        assert not os.path.lexists(tmp_path / f"out{i}" / "evil")
    src = write(tmp_path, zip_bytes({}, {"evil": "../../../etc/passwd"}))
    with pytest.raises(ArchiveError, match="illegal symlink target"):
        extract_archive(src, tmp_path / "zipout", "zip")


def test_nothing_is_written_through_a_symlink(tmp_path: Path) -> None:
    # "d -> ." is harmless by itself; "d/../x" would then escape if the link were followed by the kernel.
    outside = tmp_path / "outside"
    outside.mkdir()
    src = write(
        tmp_path,
        tar_bytes([member("d", tarfile.SYMTYPE, linkname="."), (member("d/file.txt"), b"through the link")]),
    )
    with pytest.raises(ArchiveError, match=r"illegal file path in archive: d/file.txt .*passes through the symlink d"):
        extract_archive(src, tmp_path / "out", "tar")


def test_symlink_targets_are_stored_as_checked(tmp_path: Path) -> None:
    src = write(tmp_path, tar_bytes([member("dir", tarfile.DIRTYPE), member("dir/l", tarfile.SYMTYPE, "x/../../y")]))
    extract_archive(src, tmp_path / "out", "tar")
    assert os.readlink(tmp_path / "out/dir/l") == "../y"


def test_hardlinks_outside_or_to_nothing_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    for i, (linkname, why) in enumerate(
        [("../secret.txt", "outside"), (str(secret), "outside"), ("missing.txt", "no such file")]
    ):
        src = write(tmp_path, tar_bytes([member("h", tarfile.LNKTYPE, linkname=linkname)]))
        with pytest.raises(ArchiveError, match=rf"illegal hardlink target in archive: h -> .*{why}"):
            extract_archive(src, tmp_path / f"out{i}", "tar")
    # a hardlink through an extracted symlink that points outside is impossible: the symlink is refused first
    assert secret.stat().st_nlink == 1


def test_devices_and_fifos_are_refused(tmp_path: Path) -> None:
    src = write(tmp_path, tar_bytes([member("fifo", tarfile.FIFOTYPE)]))
    with pytest.raises(ArchiveError, match="illegal file type in archive: fifo is a FIFO file"):
        extract_archive(src, tmp_path / "out", "tar")
    src = write(tmp_path, tar_bytes([member("dev", tarfile.CHRTYPE)]))
    with pytest.raises(ArchiveError, match="dev is a device file"):
        extract_archive(src, tmp_path / "out2", "tar")


def test_archives_expanding_past_the_limit_are_refused(tmp_path: Path) -> None:
    bomb = b"\0" * (4 << 20)
    src = write(tmp_path, tar_bytes([(member("a"), bomb), (member("b"), bomb)], "gz"))
    with pytest.raises(ArchiveError, match=r"expands to more than 6000000 bytes.*mountsMaxExtractedBytes"):
        extract_archive(src, tmp_path / "out", "tar.gz", limit=6_000_000)
    # never more than the limit on disk
    total = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert total <= 6_000_000
    src = write(tmp_path, zip_bytes({"z": bomb}), "bomb.zip")
    with pytest.raises(ArchiveError, match="mountsMaxExtractedBytes"):
        extract_archive(src, tmp_path / "zout", "zip", limit=1_000_000)


def test_file_decompression_past_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    src = write(tmp_path, zstandard.ZstdCompressor().compress(b"\0" * (8 << 20)))
    dst = tmp_path / "file"
    with pytest.raises(ArchiveError, match="expands to more than 1048576 bytes"):
        decompress_file(src, dst, "zst", limit=1 << 20)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]


def test_cancellation_stops_extraction(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    src = write(tmp_path, sample_tree_tar())
    with pytest.raises(ExtractionCancelled):
        extract_archive(src, tmp_path / "out", "tar", cancel=cancel)
