"""A minimal secrets service with the real scope names (``secrets:get:<name>``, ``secrets:set:<name>``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .api import Call, Endpoint
from .errors import TaskclusterError
from .schemas import SECRET
from .timeutil import iso, now, parse_iso


class SecretsService:
    def __init__(self) -> None:
        self.secrets: dict[str, tuple[dict[str, Any], dt.datetime]] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("secrets", "ping", "GET", "/ping", self.ping),
            Endpoint(
                "secrets", "set", "PUT", "/secret/<name>", self.set_secret, "secrets:set:<name>",
                SECRET, "v1/secret.json#",
            ),
            Endpoint("secrets", "remove", "DELETE", "/secret/<name>", self.remove, "secrets:set:<name>"),
            Endpoint("secrets", "get", "GET", "/secret/<name>", self.get, "secrets:get:<name>"),
            Endpoint("secrets", "list", "GET", "/secrets", self.list_secrets),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    async def set_secret(self, call: Call) -> Any:
        self.secrets[call.params["name"]] = (call.body["secret"], parse_iso(call.body["expires"]))
        return {}

    async def remove(self, call: Call) -> Any:
        if self.secrets.pop(call.params["name"], None) is None:
            raise TaskclusterError("ResourceNotFound", "Secret not found")
        return {}

    async def get(self, call: Call) -> Any:
        found = self.secrets.get(call.params["name"])
        if found is None:
            raise TaskclusterError("ResourceNotFound", "Secret not found")
        secret, expires = found
        if expires < now():
            raise TaskclusterError("ResourceExpired", "The requested resource has expired.")
        return {"secret": secret, "expires": iso(expires)}

    async def list_secrets(self, call: Call) -> Any:
        return {"secrets": sorted(self.secrets)}
