"""Small artifacts (a trivial task's log) are gzipped in memory with a deflate window no larger than the data
needs: the same header as the file path's ``GzipFile`` writes, the same bytes once decompressed, and a body
no larger than the default window gives."""

from __future__ import annotations

import gzip
import io
import random

import pytest

from megalodon_core.upload import GZIP_LEVEL, INLINE_BODY, gzip_small


def _gzip_file(data: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0, compresslevel=GZIP_LEVEL) as gz:
        gz.write(data)
    return buf.getvalue()


def _inputs() -> list[bytes]:
    rng = random.Random(13)
    text = b"".join(b"[taskcluster 2026-12-02T00:48:50.%03dZ] line %d\n" % (i % 1000, i) for i in range(2000))
    return [
        b"",
        b"x",
        text[:255],
        text[:256],
        text[:1485],
        text[:INLINE_BODY],
        bytes(rng.randrange(256) for _ in range(5000)),
        b"a" * INLINE_BODY,
    ]


@pytest.mark.parametrize("data", _inputs(), ids=lambda d: str(len(d)))
@pytest.mark.parametrize("name", ["live_backing.log", "report.json.gz", "résumé.txt", "日本.txt", ""])
def test_small_bodies_decompress_to_the_data_behind_the_same_header(data: bytes, name: str) -> None:
    ours, reference = gzip_small(data, name), _gzip_file(data, name)
    assert gzip.decompress(ours) == data
    header_end = len(reference) - len(gzip.compress(data, GZIP_LEVEL, mtime=0)) + 10  # GzipFile's header length
    assert ours[:header_end] == reference[:header_end]  # magic, flags, mtime 0, XFL, OS and the name
    assert ours[-8:] == reference[-8:]  # CRC-32 and size
    assert len(ours) <= len(reference) + 8  # a smaller window costs (almost) nothing on data this size
