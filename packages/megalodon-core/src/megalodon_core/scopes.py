"""Scope satisfaction, Taskcluster's way: a given scope ending in ``*`` covers every scope with that prefix."""

from __future__ import annotations

from collections.abc import Iterable


def scope_satisfied(given: Iterable[str], required: str) -> bool:
    return any(s == required or (s.endswith("*") and required.startswith(s[:-1])) for s in given)


def satisfies(given: Iterable[str], alternatives: list[list[str]]) -> bool:
    """True when every scope of at least one alternative is covered (no alternatives: nothing needed)."""
    given = list(given)
    if not alternatives:
        return True
    return any(all(scope_satisfied(given, s) for s in alt) for alt in alternatives)


def describe(alternatives: list[list[str]]) -> str:
    return "\n\nOR\n\n".join("\n".join(f"  {s}" for s in alt) for alt in alternatives)
