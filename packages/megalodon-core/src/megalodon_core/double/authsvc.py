"""The two auth-service reads a worker makes: which scopes do I have, and what do these expand to."""

from __future__ import annotations

from typing import Any

from .api import Call, Endpoint
from .schemas import SCOPE_SET

#: Forces authentication without requiring any particular scope.
AUTHENTICATED_ONLY: dict[str, Any] = {"AllOf": []}


class AuthService:
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("auth", "ping", "GET", "/ping", self.ping),
            Endpoint("auth", "currentScopes", "GET", "/scopes/current", self.current_scopes, "auth:current-scopes"),
            Endpoint(
                "auth", "expandScopes", "POST", "/scopes/expand", self.expand_scopes, AUTHENTICATED_ONLY,
                SCOPE_SET, "v1/scopeset.json#",
            ),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    async def current_scopes(self, call: Call) -> Any:
        return {"scopes": sorted(set(call.identity.scopes))}

    async def expand_scopes(self, call: Call) -> Any:
        """Roles are not modelled, so expansion is the identity (deduplicated and sorted)."""
        return {"scopes": sorted(set(call.body["scopes"]))}
