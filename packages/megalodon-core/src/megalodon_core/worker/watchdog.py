"""The watchdog: a worker whose claim loop stops making progress exits, so its instance is replaced.

Config ``watchdogTimeoutSecs`` (0, off by default).  Progress is a claimWork round trip that ended (answered
or failed: a queue outage is not this worker's fault) — or, while the loop waits for running tasks rather
than claiming (full capacity, a stop or drain in progress), the running tasks themselves: they are bounded
by their maxRunTime and their claims, not by this watchdog.  A claimWork call that hangs, or a loop that no
longer claims because a self-check keeps failing, is no progress.

When the timeout passes, the worker logs why (what it last did and what is in flight), sends worker-runner
an ``error-report``, aborts running tasks (exception/worker-shutdown, logs uploaded) and exits with
:data:`~megalodon_core.worker.exit_codes.EXIT_WATCHDOG` (90), a code generic-worker does not use, so
worker-runner's pool or a supervisor can tell it from the others.  Choose a timeout well above the queue's
claimWork long poll (20 s) and the self-checks' backoff: minutes, not seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Watchdog:
    """Watches one worker's claim loop; :meth:`run` returns after it fired (or is cancelled at exit)."""

    def __init__(
        self,
        timeout: float,
        *,
        waiting_on_tasks: Callable[[], bool],
        on_expiry: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self._waiting_on_tasks = waiting_on_tasks
        self._on_expiry = on_expiry
        self._clock = clock
        self._last = clock()
        self._last_what = "the worker started"
        self._in_flight: tuple[str, float] | None = None
        self.fired = False

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    def begin(self, what: str) -> None:
        """A call that should end in progress started (``claimWork``), for the expiry message."""
        self._in_flight = (what, self._clock())

    def progress(self, what: str) -> None:
        """The loop made progress (a claimWork round trip ended)."""
        self._last = self._clock()
        self._last_what = what
        self._in_flight = None

    def reason(self) -> str:
        """Why the watchdog fires now: how long without progress, the last progress, what hangs."""
        now = self._clock()
        text = (
            f"the claim loop made no progress for {now - self._last:.0f}s (watchdogTimeoutSecs {self.timeout:g}); "
            f"last progress: {self._last_what}, {now - self._last:.0f}s ago"
        )
        if self._in_flight is not None:
            what, since = self._in_flight
            text += f"; a {what} call has been in flight for {now - since:.0f}s"
        else:
            text += "; no claimWork call in flight (the loop is not claiming: see the self-check warnings)"
        return text

    async def run(self) -> None:
        """Check a few times per timeout; fire once."""
        interval = min(max(self.timeout / 4, 0.05), 5.0)
        while not self.fired:
            await asyncio.sleep(interval)
            if self._waiting_on_tasks():
                self.progress("waiting for running tasks")
                continue
            if self._clock() - self._last >= self.timeout:
                self.fired = True
                reason = self.reason()
                log.error("watchdog: %s: exiting", reason)
                await self._on_expiry(reason)


__all__ = ["Watchdog"]
