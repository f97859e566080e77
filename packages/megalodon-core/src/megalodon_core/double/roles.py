"""Roles and scope expansion, with the auth service's semantics (``services/auth/src/trie.js``).

A role ``R`` is a rule: the scope ``assume:R`` grants the role's scopes.  The rules, as the real resolver
applies them to one input scope ``s`` (``w`` is ``s`` without a trailing ``*``):

- a plain role ``R`` is granted when ``s == assume:R``, or when ``s`` ends in ``*`` and ``assume:R``
  starts with ``w`` (``assume:repo:*`` grants every ``repo:...`` role);
- a role whose id ends in ``*`` (prefix ``P`` = ``assume:`` + the id without its ``*``) is granted when
  ``w`` starts with ``P`` (``assume:repo:github.com/org/x`` gets role ``repo:github.com/*``) or when ``s``
  ends in ``*`` and ``P`` starts with ``w``.  Its scopes may hold one ``<..>``, replaced by what the input
  has after ``P`` (``*`` when the input stopped short of ``P``); a parameter ending in ``*`` replaces
  everything from ``<..>`` to the end of the scope.

Expansion repeats until nothing new is granted, then normalises like the service: scopes covered by a
``*`` scope are dropped, and the rest sorted with ``*`` scopes before what they cover.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PARAM = "<..>"
#: A role set whose expansion grows past this is a dependency cycle (the service refuses those at creation).
MAX_EXPANDED = 10_000


class RoleCycleError(ValueError):
    """Expanding the roles never ends (``a*`` granting ``assume:a<..>x``...)."""


@dataclass
class Role:
    role_id: str
    scopes: list[str]
    description: str
    created: str
    last_modified: str


def _with_param(scope: str, param: str) -> str:
    index = scope.find(PARAM)
    if index < 0:
        return scope
    if param.endswith("*"):
        return scope[:index] + param
    return scope[:index] + param + scope[index + len(PARAM) :]


def _granted(scope: str, role: Role) -> list[str]:
    """What ``scope`` gets from ``role`` directly (not recursively)."""
    pattern = f"assume:{role.role_id}"
    kleene = scope.endswith("*")
    word = scope[:-1] if kleene else scope
    if not pattern.endswith("*"):
        if scope == pattern or (kleene and pattern.startswith(word)):
            return role.scopes
        return []
    prefix = pattern[:-1]
    if word.startswith(prefix):
        param = scope[len(prefix) :]
    elif kleene and prefix.startswith(word):
        param = "*"
    else:
        return []
    return [_with_param(s, param) for s in role.scopes]


def covers(held: str, scope: str) -> bool:
    return held == scope or (held.endswith("*") and scope.startswith(held[:-1]))


def _sort_key(scope: str) -> tuple[str, int]:
    return (scope[:-1], 0) if scope.endswith("*") else (scope, 1)


def sort_scopes(scopes: Iterable[str]) -> list[str]:
    """The service's ``scopeCompare`` order: a ``*`` scope right before the scopes it covers."""
    return sorted(scopes, key=_sort_key)


def normalize(scopes: Iterable[str]) -> list[str]:
    """Deduplicated, without scopes another ``*`` scope covers, in the service's order."""
    unique = sorted(set(scopes), key=_sort_key)
    stars = [s for s in unique if s.endswith("*")]
    return [s for s in unique if not any(t != s and covers(t, s) for t in stars)]


def find_cycle(roles: Iterable[Role]) -> list[str] | None:
    """A dependency cycle among ``roles`` as the service finds it (``trie.js`` ``dependencyOrdering``), or None.

    Role ``A`` depends on role ``B`` when one of ``A``'s scopes, parameterised with ``*`` (the worst case),
    would grant ``B``; a role may depend on itself.  The cycle is returned as ``assume:`` patterns.
    """
    ordered = sorted(roles, key=lambda role: role.role_id)
    deps = {
        role.role_id: [other for other in ordered if any(_granted(_with_param(s, "*"), other) for s in role.scopes)]
        for role in ordered
    }
    done: set[str] = set()
    stack: list[str] = []

    def visit(role: Role) -> list[str] | None:
        if role.role_id in done:
            return None
        if role.role_id in stack:
            cycle = [*stack[stack.index(role.role_id) :], role.role_id]
            return [f"assume:{r}" for r in cycle]
        stack.append(role.role_id)
        for dep in deps[role.role_id]:
            found = visit(dep)
            if found:
                return found
        stack.pop()
        done.add(role.role_id)
        return None

    for role in ordered:
        found = visit(role)
        if found:
            return found
    return None


class RoleStore:
    """The deployment's roles; :meth:`expand` is ``auth.expandScopes``."""

    def __init__(self) -> None:
        self.roles: dict[str, Role] = {}

    def put(self, role: Role) -> None:
        self.roles[role.role_id] = role

    def expand(self, scopes: Iterable[str]) -> list[str]:
        given = list(scopes)
        if not self.roles:
            return normalize(given)
        result: set[str] = set(given)
        todo = list(result)
        while todo:
            scope = todo.pop()
            for role in self.roles.values():
                for granted in _granted(scope, role):
                    if granted not in result:
                        result.add(granted)
                        todo.append(granted)
            if len(result) > MAX_EXPANDED:
                raise RoleCycleError(f"expanding {given} grants more than {MAX_EXPANDED} scopes: a role cycle")
        return normalize(result)
