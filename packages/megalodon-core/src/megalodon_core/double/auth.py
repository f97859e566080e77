"""Client registry, temporary credentials and Hawk request verification.

This mirrors the auth service's signature validator closely enough that a
worker exercising the real ``taskcluster`` client sees the same outcomes:
certificates are checked for signature, issuer scopes, and a 5 minute clock
grace on ``start``/``expiry``; a wrong key yields ``Bad mac``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mohawk
import mohawk.exc
import mohawk.util

from .errors import TaskclusterError
from .roles import RoleStore
from .scopes import has_scope
from .timeutil import epoch_ms, now, slug_id

#: Certificates are honoured this long past ``expiry`` (and before ``start``), like the auth service.
CERT_GRACE = dt.timedelta(minutes=5)
MAX_CERT_LIFETIME = dt.timedelta(days=31)
HAWK_SKEW_SECONDS = 600


@dataclass
class Client:
    client_id: str
    access_token: str
    scopes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Identity:
    """Who made a request; ``client_id is None`` means no credentials were sent."""

    client_id: str | None
    scopes: tuple[str, ...]


ANONYMOUS = Identity(None, ())


def _auth_failed(message: str) -> TaskclusterError:
    return TaskclusterError("AuthenticationFailed", message)


def _b64_token(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _signature_text(cert: dict[str, Any], name: str | None, issuer: str | None) -> bytes:
    lines = [f"version:{cert['version']}"]
    if name is not None and issuer is not None:
        lines += [f"clientId:{name}", f"issuer:{issuer}"]
    lines += [f"seed:{cert['seed']}", f"start:{cert['start']}", f"expiry:{cert['expiry']}", "scopes:"]
    lines += list(cert["scopes"])
    return "\n".join(lines).encode()


def _decode_ext(ext: str) -> dict[str, Any]:
    text = ext.replace("+", "-").replace("/", "_")
    text += "=" * (-len(text) % 4)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(text))
    except (binascii.Error, ValueError) as exc:
        raise _auth_failed("Failed to parse ext") from exc
    if not isinstance(decoded, dict):
        raise _auth_failed("Failed to parse ext")
    return decoded


#: The scope every caller holds (``signaturevalidator.js`` merges it into each client's scopes).
ANONYMOUS_ROLE = "assume:anonymous"


class Authenticator:
    """Holds every client the double knows and validates incoming Hawk headers."""

    def __init__(self, anonymous_scopes: tuple[str, ...] = ()) -> None:
        self.clients: dict[str, Client] = {}
        #: Roles: every identity's ``assume:`` scopes are expanded through them (``auth.createRole``).
        self.roles = RoleStore()
        self._nonces: set[tuple[str, str, str]] = set()
        #: The ``anonymous`` role: what requests without credentials may do (e.g. read public artifacts).
        self.anonymous = Identity(None, tuple(anonymous_scopes))

    def _seen_nonce(self, sender_id: str, nonce: str, timestamp: str) -> bool:
        """Hawk replay protection; the cache is simply reset when it grows large."""
        key = (sender_id, nonce, timestamp)
        if key in self._nonces:
            return True
        if len(self._nonces) > 100_000:
            self._nonces.clear()
        self._nonces.add(key)
        return False

    def add_client(self, client_id: str, access_token: str, scopes: Sequence[str]) -> Client:
        client = Client(client_id, access_token, list(scopes))
        self.clients[client_id] = client
        return client

    def mint(
        self,
        issuer_id: str,
        scopes: Sequence[str],
        start: dt.datetime,
        expiry: dt.datetime,
        name: str | None = None,
    ) -> dict[str, str]:
        """Issue temporary credentials exactly as ``taskcluster.createTemporaryCredentials`` would."""
        issuer = self.clients[issuer_id]
        key = issuer.access_token.encode()
        cert: dict[str, Any] = {
            "version": 1,
            "scopes": list(scopes),
            "start": epoch_ms(start),
            "expiry": epoch_ms(expiry),
            "seed": slug_id() + slug_id(),
        }
        signed = _signature_text(cert, name, issuer_id if name else None)
        cert["signature"] = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if name:
            cert["issuer"] = issuer_id
        token = _b64_token(hmac.new(key, cert["seed"].encode(), hashlib.sha256).digest())
        return {
            "clientId": name or issuer_id,
            "accessToken": token,
            "certificate": json.dumps(cert, separators=(",", ":")),
        }

    def _from_certificate(self, hawk_id: str, cert: Any) -> tuple[str, list[str]]:
        """Validate a certificate; return (hawk key, scopes) it grants."""
        if not isinstance(cert, dict):
            raise _auth_failed("ext.certificate must be a JSON object")
        if cert.get("version") != 1:
            raise _auth_failed("ext.certificate.version must be 1")
        seed, sig = cert.get("seed"), cert.get("signature")
        if not isinstance(seed, str) or len(seed) != 44:
            raise _auth_failed("ext.certificate.seed must be 44 characters")
        if not isinstance(sig, str):
            raise _auth_failed("ext.certificate.signature must be a string")
        start, expiry = cert.get("start"), cert.get("expiry")
        if not isinstance(start, int) or not isinstance(expiry, int):
            raise _auth_failed("ext.certificate.start and expiry must be numbers")
        scopes = cert.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise _auth_failed("ext.certificate.scopes must be an array of strings")
        now_ms = epoch_ms(now())
        grace = int(CERT_GRACE.total_seconds() * 1000)
        if start > now_ms + grace:
            raise _auth_failed("ext.certificate.start > now")
        if expiry < now_ms - grace:
            raise _auth_failed("ext.certificate.expiry < now")
        if expiry - start > MAX_CERT_LIFETIME.total_seconds() * 1000:
            raise _auth_failed("ext.certificate cannot last longer than 31 days!")
        issuer_id = cert.get("issuer")
        named = issuer_id is not None
        if named:
            if not isinstance(issuer_id, str) or not issuer_id:
                raise _auth_failed("ext.certificate.issuer must be a string")
            if issuer_id == hawk_id:
                raise _auth_failed("ext.certificate.issuer must differ from the supplied clientId")
        else:
            issuer_id = hawk_id
        issuer = self.clients.get(issuer_id)
        if issuer is None:
            raise _auth_failed(f"Client with clientId '{issuer_id}' not found")
        key = issuer.access_token.encode()
        expected = hmac.new(
            key, _signature_text(cert, hawk_id if named else None, issuer_id if named else None), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(base64.b64encode(expected).decode(), sig):
            raise _auth_failed("ext.certificate.signature is not valid")
        if not all(has_scope(issuer.scopes, s) for s in scopes):
            raise _auth_failed(f"ext.certificate issuer `{issuer_id}` doesn't have sufficient scopes")
        if named and not has_scope(issuer.scopes, f"auth:create-client:{hawk_id}"):
            raise _auth_failed(
                f"ext.certificate issuer `{issuer_id}` doesn't have `auth:create-client:{hawk_id}` "
                "for supplied clientId."
            )
        return _b64_token(hmac.new(key, seed.encode(), hashlib.sha256).digest()), list(scopes)

    def authenticate(self, header: str | None, url: str, method: str, content: bytes, content_type: str) -> Identity:
        """Verify a Hawk ``Authorization`` header; raise 401-shaped errors like the auth service."""
        if not header:
            return self.anonymous
        try:
            parsed = mohawk.util.parse_authorization_header(header)
        except mohawk.exc.HawkFail as exc:
            raise _auth_failed(f"Unauthorized: {exc}") from exc
        hawk_id = parsed.get("id", "")
        ext = _decode_ext(parsed["ext"]) if parsed.get("ext") else {}
        if "certificate" in ext:
            key, scopes = self._from_certificate(hawk_id, ext["certificate"])
        else:
            client = self.clients.get(hawk_id)
            if client is None:
                raise _auth_failed(f"Client with clientId '{hawk_id}' not found")
            key, scopes = client.access_token, list(client.scopes)
        try:
            mohawk.Receiver(
                lambda _id: {"id": hawk_id, "key": key, "algorithm": "sha256"},
                header,
                url,
                method,
                content=content,
                content_type=content_type,
                seen_nonce=self._seen_nonce,
                timestamp_skew_in_seconds=HAWK_SKEW_SECONDS,
            )
        except mohawk.exc.MacMismatch as exc:
            raise _auth_failed("Unauthorized: Bad mac") from exc
        except mohawk.exc.MisComputedContentHash as exc:
            raise _auth_failed("Unauthorized: Bad payload hash") from exc
        except mohawk.exc.AlreadyProcessed as exc:
            raise _auth_failed("Unauthorized: Replay") from exc
        except mohawk.exc.TokenExpired as exc:
            raise _auth_failed("Unauthorized: Stale timestamp") from exc
        except mohawk.exc.HawkFail as exc:
            raise _auth_failed(f"Unauthorized: {exc}") from exc
        authorized = ext.get("authorizedScopes")
        if authorized is not None:
            if not isinstance(authorized, list) or not all(isinstance(s, str) for s in authorized):
                raise _auth_failed("ext.authorizedScopes must be an array of strings")
            # signaturevalidator.js: the anonymous role and the roles count before the check.
            held = self._with_anonymous(scopes)
            if not all(has_scope(held, s) for s in authorized):
                raise _auth_failed("ext.authorizedScopes oversteps your scopes")
            scopes = authorized
        # Every client also holds ``assume:anonymous`` (after any restriction, as in the real auth service).
        return Identity(hawk_id, tuple(self._with_anonymous(scopes)))

    def _with_anonymous(self, scopes: Sequence[str]) -> list[str]:
        """``scopes`` plus ``assume:anonymous`` with what that role grants, roles expanded."""
        merged = [*scopes, ANONYMOUS_ROLE, *self.anonymous.scopes]
        return self.roles.expand(merged) if self.roles.roles else merged
