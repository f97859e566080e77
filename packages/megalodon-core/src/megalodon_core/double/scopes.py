"""Scope expressions: templating, satisfaction and the 403 wording.

The real services decide between "403 before 404" and "404 before 403" by
whether a method's scope template can be filled from URL parameters alone, so
the template machinery here also reports which parameters a template needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Expr = str | dict[str, Any]
_PARAM = re.compile(r"<([a-zA-Z0-9_]+)>")


def scope_matches(held: str, required: str) -> bool:
    """A held scope covers ``required`` exactly or by a trailing ``*`` prefix."""
    if held == required:
        return True
    return held.endswith("*") and required.startswith(held[:-1])


def has_scope(scopes: Iterable[str], required: str) -> bool:
    return any(scope_matches(s, required) for s in scopes)


def satisfies(scopes: Sequence[str], expr: Expr) -> bool:
    if isinstance(expr, str):
        return has_scope(scopes, expr)
    if "AllOf" in expr:
        return all(satisfies(scopes, e) for e in expr["AllOf"])
    if "AnyOf" in expr:
        return any(satisfies(scopes, e) for e in expr["AnyOf"])
    raise ValueError(f"invalid scope expression {expr!r}")


def remove_given(scopes: Sequence[str], expr: Expr) -> Expr | None:
    """The unsatisfied remainder of ``expr``, simplified like taskcluster-lib-scopes does."""
    if isinstance(expr, str):
        return None if has_scope(scopes, expr) else expr
    if "AllOf" in expr:
        rest = [r for r in (remove_given(scopes, e) for e in expr["AllOf"]) if r is not None]
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else {"AllOf": rest}
    alternatives = [remove_given(scopes, e) for e in expr["AnyOf"]]
    if any(r is None for r in alternatives):
        return None
    kept = [r for r in alternatives if r is not None]
    return kept[0] if len(kept) == 1 else {"AnyOf": kept}


def template_params(template: Any) -> set[str]:
    """Every parameter name a scope template refers to (``<x>`` and ``in: x``)."""
    found: set[str] = set()
    if isinstance(template, str):
        found.update(_PARAM.findall(template))
    elif isinstance(template, dict):
        if "each" in template:
            found.update(p for p in _PARAM.findall(template["each"]) if p != template["for"])
            found.add(template["in"])
        for key in ("AllOf", "AnyOf"):
            for sub in template.get(key, []):
                found.update(template_params(sub))
    return found


def _fill(text: str, params: Mapping[str, Any]) -> str:
    def repl(m: re.Match[str]) -> str:
        value = params[m.group(1)]
        if not isinstance(value, str):
            raise TypeError(f"scope parameter {m.group(1)} must be a string")
        return value

    return _PARAM.sub(repl, text)


def _expand_list(items: Sequence[Any], params: Mapping[str, Any]) -> list[Expr]:
    out: list[Expr] = []
    for item in items:
        if isinstance(item, dict) and "each" in item:
            for value in params[item["in"]]:
                out.append(_fill(item["each"], {**params, item["for"]: value}))
        else:
            out.append(expand(item, params))
    return out


def expand(template: Any, params: Mapping[str, Any]) -> Expr:
    """Instantiate a scope template; ``each/for/in`` entries splice into their parent list."""
    if isinstance(template, str):
        return _fill(template, params)
    if "AllOf" in template:
        return {"AllOf": _expand_list(template["AllOf"], params)}
    if "AnyOf" in template:
        return {"AnyOf": _expand_list(template["AnyOf"], params)}
    raise ValueError(f"invalid scope template {template!r}")


def _render(expr: Expr) -> str:
    return expr if isinstance(expr, str) else json.dumps(expr, indent=2)


def insufficient_message(client_id: str | None, scopes: Sequence[str], expr: Expr) -> str:
    """The InsufficientScopes wording of taskcluster-lib-api, for credentialed and anonymous calls."""
    if client_id is None:
        return (
            "This request requires Taskcluster credentials that satisfy the following scope "
            f"expression:\n\n```\n{_render(expr)}\n```"
        )
    missing = remove_given(scopes, expr)
    return (
        f"Client ID {client_id} does not have sufficient scopes and is missing the following "
        f"scopes:\n\n```\n{_render(missing if missing is not None else expr)}\n```\n\n"
        "This request requires the client to satisfy the following scope expression:\n\n"
        f"```\n{_render(expr)}\n```"
    )
