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

All of that needs the event loop.  A loop blocked by a call that never returns (a hung filesystem under a
synchronous call) cannot run the watchdog, so a worker that owns its process (``megalodon run``) also starts
a backstop thread: when the watchdog itself has not run for ``watchdogTimeoutSecs`` plus a grace period, the
thread writes the reason to stderr and ends the process with exit 90 at once (nothing can be reported or
resolved then; the claim journal lets the next start resolve the runs it held).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable

from .exit_codes import EXIT_WATCHDOG

log = logging.getLogger(__name__)

#: How long past ``watchdogTimeoutSecs`` the event loop may stand still before the backstop ends the process.
BACKSTOP_GRACE = 60.0


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
        #: When :meth:`run` last turned (real monotonic time, for the backstop thread).
        self._tick = time.monotonic()
        self._stopped = threading.Event()

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

    def start_backstop(self, grace: float) -> threading.Thread:
        """Start the thread that ends the process when the event loop stops turning (see module docstring)."""
        self._tick = time.monotonic()
        thread = threading.Thread(target=self._backstop, args=(grace,), name="megalodon-watchdog", daemon=True)
        thread.start()
        return thread

    def _backstop(self, grace: float) -> None:
        while not self._stopped.wait(min(1.0, max(self.timeout / 4, 0.05))):
            blocked = time.monotonic() - self._tick
            if blocked > self.timeout + grace:
                message = (
                    f"megalodon watchdog: the event loop has not turned for {blocked:.0f}s "
                    f"(watchdogTimeoutSecs {self.timeout:g} plus {grace:g}s grace): exiting {EXIT_WATCHDOG}\n"
                )
                os.write(2, message.encode())
                os._exit(EXIT_WATCHDOG)

    async def run(self) -> None:
        """Check a few times per timeout; fire once.  Cancelled at exit (the backstop stops with it)."""
        try:
            await self._watch()
        finally:
            self._stopped.set()

    async def _watch(self) -> None:
        interval = min(max(self.timeout / 4, 0.05), 5.0)
        while True:  # after firing it keeps turning: the backstop must only see a blocked loop
            await asyncio.sleep(interval)
            self._tick = time.monotonic()
            if self.fired:
                continue
            if self._waiting_on_tasks():
                self.progress("waiting for running tasks")
                continue
            if self._clock() - self._last >= self.timeout:
                self.fired = True
                reason = self.reason()
                log.error("watchdog: %s: exiting", reason)
                await self._on_expiry(reason)


__all__ = ["BACKSTOP_GRACE", "Watchdog"]
