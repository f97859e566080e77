"""The purge-cache service (``services/purge-cache/src/api.js``): timestamped requests to drop a cache.

``purgeCache`` records (or refreshes) a request for one ``cacheName`` on one worker pool with ``before`` =
now, kept for a day; ``purgeRequests`` lists the pool's open requests whose ``before`` is at or after the
``since`` query (all of them without it).  Workers drop every cache of that name created before ``before``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from .api import Call, Endpoint
from .errors import TaskclusterError
from .schemas import _obj
from .timeutil import iso, now, parse_iso

WORKER_POOL_ID = "^[A-Za-z0-9_-]{1,38}/[A-Za-z0-9_-]{1,38}$"
PURGE_CACHE_REQUEST = _obj({"cacheName": {"type": "string"}}, ["cacheName"])
#: How long the service keeps a request (``taskcluster.fromNow('1 day')``).
REQUEST_LIFETIME = dt.timedelta(days=1)


class PurgeCacheService:
    def __init__(self) -> None:
        #: (workerPoolId, cacheName) -> (before, expires)
        self.requests: dict[tuple[str, str], tuple[dt.datetime, dt.datetime]] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("purge-cache", "ping", "GET", "/ping", self.ping),
            Endpoint(
                "purge-cache", "allPurgeRequests", "GET", "/purge-cache/list", self.all_purge_requests,
                "purge-cache:all-purge-requests",
            ),
            Endpoint(
                "purge-cache", "purgeCache", "POST", "/purge-cache/<workerPoolId>", self.purge_cache,
                "purge-cache:<workerPoolId>:<cacheName>", PURGE_CACHE_REQUEST, "v1/purge-cache-request.json#",
            ),
            Endpoint(
                "purge-cache", "purgeRequests", "GET", "/purge-cache/<workerPoolId>", self.purge_requests,
                "purge-cache:purge-requests::<workerPoolId>",
            ),
        ]  # fmt: skip

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    @staticmethod
    def _pool(call: Call) -> str:
        pool = call.params["workerPoolId"]
        if not re.match(WORKER_POOL_ID, pool):
            raise TaskclusterError(
                "InvalidRequestArguments",
                f"Invalid URL patterns:\nURL parameter 'workerPoolId' given as '{pool}' must match regular "
                f"expression: '/{WORKER_POOL_ID}/'",
            )
        return pool

    def _open(self) -> list[tuple[str, str, dt.datetime]]:
        current = now()
        for key, (_, expires) in list(self.requests.items()):
            if expires < current:
                del self.requests[key]
        return [(pool, name, before) for (pool, name), (before, _) in sorted(self.requests.items())]

    @staticmethod
    def _json(pool: str, name: str, before: dt.datetime) -> dict[str, Any]:
        provisioner, worker_type = pool.split("/", 1)
        return {"provisionerId": provisioner, "workerType": worker_type, "cacheName": name, "before": iso(before)}

    async def purge_cache(self, call: Call) -> Any:
        pool = self._pool(call)
        name = call.body["cacheName"]
        call.authorize(cacheName=name)
        stamp = now()
        self.requests[(pool, name)] = (stamp, stamp + REQUEST_LIFETIME)
        return {}

    async def purge_requests(self, call: Call) -> Any:
        pool = self._pool(call)
        raw = call.query.get("since")
        try:
            since = parse_iso(raw) if raw else dt.datetime.fromtimestamp(0, dt.UTC)
        except ValueError:
            raise TaskclusterError("InvalidRequestArguments", "Invalid Date") from None
        return {"requests": [self._json(p, n, b) for p, n, b in self._open() if p == pool and b >= since]}

    async def all_purge_requests(self, call: Call) -> Any:
        return {"requests": [self._json(p, n, b) for p, n, b in self._open()]}
