"""The one worker-manager call a worker makes while running: ``shouldWorkerTerminate``.

generic-worker asks it on every loop iteration when run under worker-runner; tests flip the answer with
:meth:`WorkerManagerService.set_should_terminate` to exercise exit code 70.
"""

from __future__ import annotations

from typing import Any

from .api import Call, Endpoint


class WorkerManagerService:
    def __init__(self) -> None:
        self.terminate: dict[tuple[str, str, str], bool] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("worker-manager", "ping", "GET", "/ping", self.ping),
            Endpoint(
                "worker-manager", "shouldWorkerTerminate", "GET",
                "/workers/<workerPoolId>/<workerGroup>/<workerId>/should-terminate", self.should_terminate,
                "worker-manager:should-worker-terminate:<workerPoolId>/<workerGroup>/<workerId>",
            ),
        ]  # fmt: skip

    def set_should_terminate(self, worker_pool_id: str, worker_group: str, worker_id: str, value: bool) -> None:
        self.terminate[(worker_pool_id, worker_group, worker_id)] = value

    async def ping(self, call: Call) -> Any:
        return {"alive": True, "uptime": 0}

    async def should_terminate(self, call: Call) -> Any:
        key = (call.params["workerPoolId"], call.params["workerGroup"], call.params["workerId"])
        value = self.terminate.get(key, False)
        return {"terminate": value, "reason": "removed" if value else "none"}
