"""Roles in the double: createRole/role/deleteRole and expandScopes with the auth service's semantics."""

from __future__ import annotations

from typing import Any

import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.double import TaskclusterDouble
from megalodon_core.double.roles import Role, RoleCycleError, RoleStore, find_cycle, normalize


def auth_client(double: TaskclusterDouble, creds: dict[str, str]) -> Any:
    return taskcluster.aio.Auth({"rootUrl": double.root_url, "credentials": creds, "maxRetries": 0})


def roles(mapping: dict[str, list[str]]) -> RoleStore:
    result = RoleStore()
    for role_id, scopes in mapping.items():
        result.put(Role(role_id, scopes, "", "", ""))
    return result


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["assume:project:a"], ["assume:project:a", "a:1"]),
        # recursive: a role's scopes assume another role
        (["assume:project:b"], ["a:1", "assume:project:a", "assume:project:b", "b:1"]),
        # a `*` scope assumes every role it covers
        (["assume:project:*"], ["a:1", "assume:project:*", "b:1"]),
        # a `*` role id is granted to every scope under it, with <..> parameterised
        (["assume:repo:github.com/org/x"], ["assume:repo:github.com/org/x", "repo-wide", "secrets:get:org/x/ci"]),
        # a parameter ending in `*` replaces everything from <..> on
        (["assume:repo:github.com/org/*"], ["assume:repo:github.com/org/*", "repo-wide", "secrets:get:org/*"]),
        (["nothing:to-expand"], ["nothing:to-expand"]),
    ],
)
def test_expansion_follows_the_auth_service(given: list[str], expected: list[str]) -> None:
    rs = roles(
        {
            "project:a": ["a:1"],
            "project:b": ["b:1", "assume:project:a"],
            "repo:github.com/*": ["repo-wide", "secrets:get:<..>/ci"],
        }
    )
    assert rs.expand(given) == normalize(expected)


def test_a_kleene_scope_short_of_a_star_role_gets_it_with_a_star_parameter() -> None:
    rs = roles({"repo:github.com/*": ["secrets:get:<..>/ci", "fixed"]})
    assert rs.expand(["assume:repo:*"]) == ["assume:repo:*", "fixed", "secrets:get:*"]


def test_normalize_drops_covered_scopes_and_sorts_stars_first() -> None:
    assert normalize(["b", "a:x", "a:*", "a:", "c*", "c", "b"]) == ["a:*", "b", "c*"]


def test_a_role_cycle_is_refused() -> None:
    with pytest.raises(RoleCycleError):
        roles({"a*": ["assume:a<..>x"]}).expand(["assume:ab"])


def test_dependency_cycles_as_the_service_finds_them() -> None:
    """trie.js ``dependencyOrdering``: a role granting (with ``*`` as parameter) a role on its own path."""

    def role(role_id: str, *scopes: str) -> Role:
        return Role(role_id, list(scopes), "", "", "")

    assert find_cycle([role("a*", "assume:a<..>x")]) == ["assume:a*", "assume:a*"]
    assert find_cycle([role("x", "assume:y"), role("y", "assume:x")]) == ["assume:x", "assume:y", "assume:x"]
    assert find_cycle([role("x", "assume:y"), role("y", "a:b"), role("z*", "assume:x")]) is None


async def test_roles_over_http(double: TaskclusterDouble) -> None:
    root = auth_client(double, double.root_credentials)
    created = await root.createRole(
        "repo:github.com/org/*", {"description": "ci", "scopes": ["queue:route:<..>", "generic-worker:cache:x"]}
    )
    assert created["roleId"] == "repo:github.com/org/*"
    assert "generic-worker:cache:x" in created["expandedScopes"]
    expanded = await root.expandScopes({"scopes": ["assume:repo:github.com/org/proj"]})
    assert expanded["scopes"] == ["assume:repo:github.com/org/proj", "generic-worker:cache:x", "queue:route:proj"]
    assert (await root.role("repo:github.com/org/*"))["scopes"] == ["generic-worker:cache:x", "queue:route:<..>"]

    # a client holding its scopes through a role has them for every call, as in the real service
    await root.createRole("client-role", {"description": "", "scopes": ["auth:current-scopes"]})
    creds = double.add_client("project/me", "token", ["assume:client-role"])
    assert (await auth_client(double, creds).currentScopes())["scopes"] == [
        "assume:anonymous",
        "assume:client-role",
        "auth:current-scopes",
    ]

    # createRole needs the role's scopes too
    limited = double.add_client("limited", "token", ["auth:create-role:*"])
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await auth_client(double, limited).createRole("r", {"description": "", "scopes": ["secret:thing"]})
    assert err.value.status_code == 403
    # a different definition of an existing role is a conflict
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await root.createRole("client-role", {"description": "changed", "scopes": []})
    assert err.value.status_code == 409
    await root.deleteRole("client-role")
    with pytest.raises(taskcluster.exceptions.TaskclusterRestFailure) as err:
        await root.role("client-role")
    assert err.value.status_code == 404
