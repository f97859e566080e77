"""Disk-backed stand-in for the S3 buckets behind the queue and object service.

Bodies are streamed to and from files in chunks so that multi-hundred-MB
uploads never sit in memory. The request's ``Content-Type`` and
``Content-Encoding`` are stored and replayed on GET exactly like S3 does,
which is what lets gzip-encoded s3 artifacts round-trip.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from .timeutil import now

CHUNK = 256 * 1024
PREFIX = "/__storage"
PUBLIC_BUCKET = "public-bucket"
PRIVATE_BUCKET = "private-bucket"
OBJECT_BUCKET = "object-bucket"


@dataclass
class Blob:
    path: Path
    size: int
    content_type: str
    content_encoding: str | None
    etag: str


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")


class BlobStore:
    """Files under a private temp dir, addressed by ``(bucket, key)``, with presigned-style URLs."""

    def __init__(self, root: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tc-double-")
            root = Path(self._tmp.name)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = ""
        self._secret = secrets.token_bytes(32)
        self._meta: dict[tuple[str, str], Blob] = {}

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _file(self, bucket: str, key: str) -> Path:
        return self.root / hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()

    def get(self, bucket: str, key: str) -> Blob | None:
        return self._meta.get((bucket, key))

    def read_bytes(self, bucket: str, key: str) -> bytes | None:
        """Whole-blob read, only for test inspection of (small) artifacts."""
        blob = self.get(bucket, key)
        return blob.path.read_bytes() if blob else None

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> Blob:
        path = self._file(bucket, key)
        path.write_bytes(data)
        blob = Blob(path, len(data), content_type, None, hashlib.md5(data).hexdigest())
        self._meta[(bucket, key)] = blob
        return blob

    # -- URLs -----------------------------------------------------------------------------------

    def _sign(self, method: str, bucket: str, token: str, expires: int) -> str:
        msg = f"{method}\n{bucket}\n{token}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def url(self, method: str, bucket: str, key: str, lifetime: dt.timedelta | None) -> str:
        """A URL for ``method`` on the blob; ``lifetime=None`` gives an unsigned (public) URL.

        The key travels base64url-encoded so that names containing ``..`` or
        ``//`` survive HTTP clients that normalise paths.
        """
        token = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=") or "-"
        url = f"{self.base_url}{PREFIX}/{bucket}/{token}"
        if lifetime is None:
            return url
        expires = int((now() + lifetime).timestamp())
        query = urlencode({"X-Expires": expires, "X-Signature": self._sign(method, bucket, token, expires)})
        return f"{url}?{query}"

    def _check(self, request: web.Request, bucket: str, token: str) -> web.Response | None:
        if request.method in ("GET", "HEAD") and bucket == PUBLIC_BUCKET:
            return None
        try:
            expires = int(request.query.get("X-Expires", ""))
        except ValueError:
            return _s3_error(403, "AccessDenied", "Access Denied")
        method = "GET" if request.method == "HEAD" else request.method
        if not hmac.compare_digest(request.query.get("X-Signature", ""), self._sign(method, bucket, token, expires)):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")
        if expires < now().timestamp():
            return _s3_error(403, "AccessDenied", "Request has expired")
        return None

    @staticmethod
    def parse_path(raw_path: str) -> tuple[str, str, str] | None:
        """Split ``/__storage/<bucket>/<token>`` into (bucket, token, key)."""
        path = raw_path.split("?", 1)[0]
        parts = path[len(PREFIX) + 1 :].split("/")
        if len(parts) != 2:
            return None
        bucket, token = parts
        if token == "-":
            return bucket, token, ""
        try:
            key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return bucket, token, key

    # -- HTTP -----------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parsed = self.parse_path(request.raw_path)
        if parsed is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        bucket, token, key = parsed
        denied = self._check(request, bucket, token)
        if denied is not None:
            return denied
        if request.method == "PUT":
            return await self._put(request, bucket, key)
        if request.method in ("GET", "HEAD"):
            return await self._get(request, bucket, key)
        return _s3_error(405, "MethodNotAllowed", "The specified method is not allowed")

    async def _put(self, request: web.Request, bucket: str, key: str) -> web.Response:
        final = self._file(bucket, key)
        md5 = hashlib.md5()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.content.iter_chunked(CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    size += len(chunk)
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        expected = request.headers.get("Content-Length")
        if expected is not None and int(expected) != size:
            return _s3_error(400, "IncompleteBody", "You did not provide the number of bytes specified")
        etag = md5.hexdigest()
        self._meta[(bucket, key)] = Blob(
            final,
            size,
            request.headers.get("Content-Type", "binary/octet-stream"),
            request.headers.get("Content-Encoding"),
            etag,
        )
        return web.Response(status=200, headers={"ETag": json.dumps(etag)})

    async def _get(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        blob = self.get(bucket, key)
        if blob is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        headers = {"Content-Type": blob.content_type, "ETag": json.dumps(blob.etag)}
        if blob.content_encoding:
            headers["Content-Encoding"] = blob.content_encoding
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = blob.size
        await resp.prepare(request)
        if request.method == "GET":
            with blob.path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    await resp.write(chunk)
        await resp.write_eof()
        return resp
