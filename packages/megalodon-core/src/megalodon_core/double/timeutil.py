"""Wall-clock helpers that format times the way the Taskcluster services do.

The queue is a JavaScript service, so every timestamp it emits has millisecond
precision and a ``Z`` suffix; clients (and our transcript comparisons) depend
on that exact shape.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid

UTC = dt.UTC


def now() -> dt.datetime:
    """Current time truncated to milliseconds, because JS Date cannot hold more."""
    t = dt.datetime.now(UTC)
    return t.replace(microsecond=(t.microsecond // 1000) * 1000)


def iso(t: dt.datetime) -> str:
    """Format like JS ``Date.toJSON()``."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def iso_offset(t: dt.datetime) -> str:
    """Format with an explicit ``+00:00`` offset, as claimWork's top-level ``takenUntil`` does."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+00:00"


def parse_iso(value: str) -> dt.datetime:
    """Parse the date-time strings clients send; naive values are taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    # JS Dates hold milliseconds; truncating keeps round-trips through our responses equal.
    return parsed.replace(microsecond=(parsed.microsecond // 1000) * 1000)


def epoch_ms(t: dt.datetime) -> int:
    """Milliseconds since the epoch, the unit of certificate ``start``/``expiry``."""
    return round(t.timestamp() * 1000)


def js_seconds(t: dt.datetime) -> str:
    """Render ``ms / 1000`` the way JS number formatting does (no trailing zeros)."""
    ms = epoch_ms(t)
    whole, frac = divmod(ms, 1000)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:03d}".rstrip("0")


def slug_id() -> str:
    """A "nice" slugid: v4 UUID with the top bit cleared so it never starts with ``-``."""
    raw = bytearray(uuid.uuid4().bytes)
    raw[0] &= 0x7F
    return base64.urlsafe_b64encode(bytes(raw)).decode("ascii").rstrip("=")
