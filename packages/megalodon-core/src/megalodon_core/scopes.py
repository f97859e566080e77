"""Scope satisfaction, Taskcluster's way: a given scope ending in ``*`` covers every scope with that prefix.

Feature and capability scopes are checked against the task's scopes *with roles expanded* when the literal
check fails (:class:`ScopeCheck`), as generic-worker and docker-worker do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
from taskcluster.exceptions import TaskclusterFailure

from .errors import ResourceUnavailable


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


#: ``auth.expandScopes``: the given scopes plus everything their ``assume:`` roles grant.
Expander = Callable[[list[str]], Awaitable[list[str]]]

_EXPANSION_ERRORS = (TaskclusterFailure, aiohttp.ClientError, asyncio.TimeoutError)


def may_expand(given: Iterable[str]) -> bool:
    """Whether role expansion could add anything: only ``assume:`` scopes (or a ``*`` covering one) do."""
    return any(s.startswith("assume:") or (s.endswith("*") and "assume:".startswith(s[:-1])) for s in given)


async def expanded(given: Iterable[str], expand: Expander) -> list[str]:
    """The scopes with their roles expanded; without any ``assume:`` scope, the scopes themselves.

    An auth service that cannot answer makes the task exception/resource-unavailable, as generic-worker
    resolves it ("presumably we couldn't expand assume:* scopes due to auth service unavailability").
    """
    scopes = list(given)
    if not may_expand(scopes):
        return scopes
    try:
        # Once each: the queue stores task.scopes verbatim, duplicates included, but expandScopes refuses a
        # scopeset with duplicates (400 uniqueItems) — generic-worker would resolve such a task
        # resource-unavailable; the order is kept.
        return await expand(list(dict.fromkeys(scopes)))
    except _EXPANSION_ERRORS as exc:
        raise ResourceUnavailable(f"could not expand the task's scopes through the auth service: {exc}") from None


class ScopeCheck:
    """One task's scope checks, as generic-worker's ``scopes.Given.Satisfies`` makes them.

    The task's scopes are tried literally first; only when that fails are they expanded through the auth
    service (once per task, with the worker's credentials) and tried again, so a task holding a feature's
    scopes through a role (``assume:...``) is not refused.
    """

    def __init__(self, given: Iterable[str], expand: Expander) -> None:
        self.given = list(given)
        self._expand = expand
        self._expanded: list[str] | None = None

    async def expanded(self) -> list[str]:
        if self._expanded is None:
            self._expanded = await expanded(self.given, self._expand)
        return self._expanded

    async def satisfies(self, alternatives: list[list[str]]) -> bool:
        if satisfies(self.given, alternatives):
            return True
        return satisfies(await self.expanded(), alternatives)
