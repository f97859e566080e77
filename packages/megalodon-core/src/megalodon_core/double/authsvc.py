"""The auth service as workers and tests use it: current scopes, roles and their expansion.

Roles live in the :class:`~megalodon_core.double.roles.RoleStore` the authenticator holds, so a client's
``assume:`` scopes are expanded for every call it makes, as in the real service.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import Call, Endpoint
from .auth import Authenticator
from .errors import TaskclusterError
from .roles import Role, find_cycle, normalize, sort_scopes
from .schemas import SCOPE, SCOPE_SET, _obj
from .timeutil import iso, now

#: expandScopes needs this scope (``services/auth/src/api.js``); deployments give it to workers through a role.
EXPAND_SCOPES = "auth:expand-scopes"

CREATE_ROLE = _obj(
    {
        "scopes": {"type": "array", "items": SCOPE, "uniqueItems": True},
        "description": {"type": "string", "maxLength": 10240},
    },
    ["scopes", "description"],
)
#: createRole: the caller needs the create scope *and* every scope the role grants.
CREATE_ROLE_SCOPES: dict[str, Any] = {
    "AllOf": ["auth:create-role:<roleId>", {"for": "scope", "in": "scopes", "each": "<scope>"}]
}


class AuthService:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("auth", "ping", "GET", "/ping", self.ping),
            Endpoint("auth", "currentScopes", "GET", "/scopes/current", self.current_scopes, "auth:current-scopes"),
            Endpoint(
                "auth", "expandScopes", "POST", "/scopes/expand", self.expand_scopes, EXPAND_SCOPES,
                SCOPE_SET, "v1/scopeset.json#",
            ),
            Endpoint(
                "auth", "createRole", "PUT", "/roles/<roleId>", self.create_role, CREATE_ROLE_SCOPES,
                CREATE_ROLE, "v1/create-role-request.json#",
            ),
            Endpoint("auth", "role", "GET", "/roles/<roleId>", self.role, "auth:get-role:<roleId>"),
            Endpoint("auth", "deleteRole", "DELETE", "/roles/<roleId>", self.delete_role, "auth:delete-role:<roleId>"),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    async def current_scopes(self, call: Call) -> Any:
        return {"scopes": normalize(call.identity.scopes)}

    async def expand_scopes(self, call: Call) -> Any:
        return {"scopes": self.auth.roles.expand(call.body["scopes"])}

    def _json(self, role: Role) -> dict[str, Any]:
        return {
            "roleId": role.role_id,
            "scopes": role.scopes,
            "expandedScopes": self.auth.roles.expand([f"assume:{role.role_id}"]),
            "description": role.description,
            "lastModified": role.last_modified,
            "created": role.created,
        }

    async def create_role(self, call: Call) -> Any:
        role_id = call.params["roleId"]
        scopes: list[str] = call.body["scopes"]
        if any(s.endswith("**") for s in scopes):
            raise TaskclusterError("InputError", "scopes must not end with `**`")
        call.authorize(scopes=scopes)
        store = self.auth.roles
        existing = store.roles.get(role_id)
        if existing is not None:
            if existing.description != call.body["description"] or sorted(existing.scopes) != sorted(scopes):
                raise TaskclusterError("RequestConflict", f"Role with roleId '{role_id}' already exists")
            return self._json(existing)
        stamp = iso(now())
        role = Role(role_id, sort_scopes(scopes), call.body["description"], stamp, stamp)
        store.put(role)
        cycle = find_cycle(store.roles.values())
        if cycle is not None:
            del store.roles[role_id]
            found = "' -> '".join(cycle)
            raise TaskclusterError("InputError", f"Roles may not contain dependency cycles, found: '{found}'")
        return self._json(role)

    async def role(self, call: Call) -> Any:
        role = self.auth.roles.roles.get(call.params["roleId"])
        if role is None:
            raise TaskclusterError("ResourceNotFound", "Role not found")
        return self._json(role)

    async def delete_role(self, call: Call) -> Any:
        self.auth.roles.roles.pop(call.params["roleId"], None)
        return web.Response(status=204)  # the real service answers 204, no body, role or not
