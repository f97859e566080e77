"""Time formats the task logs and the Taskcluster API use.

The task log is read by people and by tools (Treeherder, log parsers) that match generic-worker's exact
output, so durations are printed the way Go's ``time.Duration.String`` prints them and timestamps the way
the Go Taskcluster client prints them.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(t: dt.datetime) -> str:
    """``2017-01-25T23:31:13.787Z``: millisecond precision, UTC, ``Z`` suffix (Taskcluster's JSON dates)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> dt.datetime:
    """Parse a Taskcluster date (``Z`` or ``+00:00`` offsets both occur in real responses)."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String``: ``0s``, ``1.5µs``, ``2.5ms``, ``1.234567s``, ``1m2.5s``."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return sign + _trim(nanos, 1_000) + "µs"
    if nanos < 1_000_000_000:
        return sign + _trim(nanos, 1_000_000) + "ms"
    hours, rem = divmod(nanos, 3600 * 1_000_000_000)
    minutes, rem = divmod(rem, 60 * 1_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim(rem, 1_000_000_000) + "s"


def _trim(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")
