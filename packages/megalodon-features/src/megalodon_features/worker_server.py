"""The worker-lifetime HTTP server that the live log and the interactive shells each run.

Both serve every running task from one aiohttp application on one ``host:port`` (each task under its own
secret path) rather than a server per task.  Both start it when it is first needed and, when it cannot
listen, let the next task try again and say why in that task's log: best effort, like generic-worker.
What differs is only the routes, so a subclass supplies those and nothing else about serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from aiohttp import web


class WorkerServer:
    """One aiohttp application on ``host:port`` for the worker's lifetime; subclasses add the routes."""

    #: What the worker log calls this server ("live log server listening on ..."), and the logger saying
    #: it (the feature's own, so the worker log names the feature).
    label: ClassVar[str]
    log: ClassVar[logging.Logger]

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        #: The configured port until the server listens, then the bound one (a configured 0 means any).
        self.port = port
        #: Why the latest start failed, for the task log; None once the server listens.
        self.start_error: str | None = None
        self._runner: web.AppRunner | None = None
        # Concurrent tasks wanting the server must not both bind it.
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._runner is not None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Add this server's routes (called once per start)."""
        raise NotImplementedError(f"{type(self).__name__} adds no routes")

    async def start(self) -> None:
        """Listen on ``host:port``; raises :class:`OSError` when the address cannot be bound."""
        app = web.Application()
        self.add_routes(app.router)
        # handle_signals=False: the worker owns SIGTERM/SIGINT; a short shutdown_timeout, as readers and
        # shells are told the worker is going away by the connection closing.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def ensure_started(self) -> bool:
        """Start the server unless it is running; False (with :attr:`start_error`) when it cannot listen."""
        async with self._lock:
            if self.running:
                return True
            try:
                await self.start()
            except OSError as exc:
                self.start_error = f"could not listen on {self.host}:{self.port}: {exc}"
                return False
            self.start_error = None
            self.log.info("%s listening on %s:%s", self.label, self.host, self.port)
            return True

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
