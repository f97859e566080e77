"""Self-checks before each claim, and quarantine while one fails: never take a task the worker cannot run.

A "half-dead" worker — its Docker engine hung, its disk or inodes gone, its clock adrift, its credentials
about to expire — otherwise claims task after task and resolves each one as an exception, or worse, holds it
until the claim expires.  Before each claim the loop asks :meth:`SelfChecks.passing`; while a check fails
the worker claims nothing, says why once (a warning, a worker-runner ``error-report``, ``/healthz`` 503 with
the reason, ``megalodon status`` "quarantined"), keeps checking, and claims again as soon as every check
passes (logged once too).

The checks, each off unless configured (so a pool switching from generic-worker sees no change):

- ``requiredDiskSpaceMegabytes`` (generic-worker's key, always on): free space after eviction
  (:mod:`.disk_gate`); ``requiredFreeInodes`` (0, off): free inodes on the tasks directory's filesystem;
- ``selfCheckExecutors`` (false): each loaded executor's :meth:`~megalodon_core.contracts.TaskExecutor.health`
  (the docker executor pings its engine) — the core asks the contract, never an executor by name;
- ``maxClockSkewSeconds`` (0, off): the local clock against the ``Date`` header of the queue's ``ping``;
- ``credentialsExpiryMarginSeconds`` (0, off): the worker's temporary credentials (the ``expiry`` of their
  certificate) must stay valid at least that long; worker-runner's ``new-credentials`` clears it.

Passing results of the checks that cost a round trip are kept for a while (:data:`PASS_TTL`); a failing
check is tried again on every loop round, so the worker resumes within one backoff of the fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final

import aiohttp

from .. import __version__

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..contracts import TaskExecutor
    from ..worker_context import WorkerContext
    from .runner_link import RunnerLink

log = logging.getLogger(__name__)

#: Seconds a passing result is trusted, per check that costs a round trip.
PASS_TTL: Final[dict[str, float]] = {"executors": 10.0, "clock": 60.0}
#: Bound on one executor health answer or one queue ping.
CHECK_TIMEOUT: Final = 10.0


def free_inodes(path: str) -> tuple[int, int] | None:
    """(free inodes for unprivileged users, total) of ``path``'s filesystem; None when it has no inode
    limit (btrfs and some network filesystems report 0 total)."""
    st = os.statvfs(path)
    if st.f_files == 0:
        return None
    return st.f_favail, st.f_files


def certificate_expiry(certificate: str) -> dt.datetime | None:
    """The ``expiry`` of temporary credentials' certificate (None for permanent credentials)."""
    if not certificate:
        return None
    try:
        cert = json.loads(certificate)
        return dt.datetime.fromtimestamp(int(cert["expiry"]) / 1000, dt.UTC)
    except (ValueError, KeyError, TypeError, OverflowError):
        return None


class SelfChecks:
    """The checks of one worker and its quarantine state (:attr:`problems`: check name -> reason)."""

    def __init__(
        self,
        config: WorkerConfig,
        ctx: WorkerContext,
        executors: Mapping[str, TaskExecutor],
        *,
        disk: Callable[[], Awaitable[bool]],
        runner: RunnerLink,
        on_change: Callable[[dict[str, str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.executors = executors
        self._disk = disk
        self.runner = runner
        self._on_change = on_change
        self._clock = clock
        self.problems: dict[str, str] = {}
        self._passed_at: dict[str, float] = {}

    async def passing(self) -> bool:
        """Run the checks due; True when every check passes (the worker may claim)."""
        found: dict[str, str] = {}
        for name, check in (
            ("disk", self._check_disk),
            ("inodes", self._check_inodes),
            ("executors", self._check_executors),
            ("clock", self._check_clock),
            ("credentials", self._check_credentials),
        ):
            ttl = PASS_TTL.get(name)
            if ttl is not None and name not in self.problems:
                passed = self._passed_at.get(name)
                if passed is not None and self._clock() - passed < ttl:
                    continue
            try:
                reason = await check()
            except Exception as exc:  # a check that breaks says so instead of crashing the loop
                log.exception("self-check %s raised", name)
                reason = f"the {name} self-check raised {type(exc).__name__}: {exc}"
            if reason is None:
                self._passed_at[name] = self._clock()
            else:
                found[name] = reason
        await self._publish(found)
        return not found

    async def _publish(self, found: dict[str, str]) -> None:
        """Say once when a check starts failing (log, error-report) and once when it clears."""
        before = self.problems
        self.problems = found
        for name, reason in found.items():
            if name not in before:
                log.warning("self-check failed (%s): %s; not claiming until it passes", name, reason)
                try:
                    await self.runner.error_report(
                        reason,
                        {"check": name, "version": __version__},
                        title="megalodon self-check failed",
                        kind="worker-error",
                    )
                except Exception:
                    log.exception("could not send the error-report for self-check %s", name)
        for name in before:
            if name not in found:
                log.info("self-check passes again (%s): claiming", name)
        if set(found) != set(before) or found != before:
            if self._on_change is not None:
                self._on_change(dict(found))

    # -- the checks: each returns None (passes) or the reason -------------------------------------------------
    async def _check_disk(self) -> str | None:
        if await self._disk():
            return None
        return (
            f"less than requiredDiskSpaceMegabytes ({self.config.requiredDiskSpaceMegabytes} MB) free on "
            f"{self.config.tasksDir} after evicting caches and images"
        )

    async def _check_inodes(self) -> str | None:
        required = int(self.config.extra("requiredFreeInodes", 0))
        if not required:
            return None
        counts = await asyncio.to_thread(free_inodes, self.config.tasksDir)
        if counts is None or counts[0] >= required:
            return None
        return (
            f"only {counts[0]} free inodes on the filesystem of {self.config.tasksDir} (of {counts[1]}); "
            f"requiredFreeInodes is {required}"
        )

    async def _check_executors(self) -> str | None:
        if not self.config.extra("selfCheckExecutors", False):
            return None
        reasons = []
        for name, executor in self.executors.items():
            try:
                reason = await asyncio.wait_for(executor.health(), CHECK_TIMEOUT)
            except TimeoutError:
                reason = f"its health check did not answer within {CHECK_TIMEOUT:.0f}s"
            if reason:
                reasons.append(f"executor {name}: {reason}")
        return "; ".join(reasons) or None

    async def _check_clock(self) -> str | None:
        bound = int(self.config.extra("maxClockSkewSeconds", 0))
        if not bound:
            return None
        url = f"{self.config.rootURL.rstrip('/')}/api/queue/v1/ping"
        sent = time.time()
        try:
            async with self.ctx.session.get(url, timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT)) as resp:
                date = resp.headers.get("Date")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("clock self-check: %s unreachable (%s): not a clock problem", url, exc)
            return None
        received = time.time()
        if not date:
            return None
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return None
        # The Date header has one-second resolution and was stamped somewhere inside the round trip.
        local = (sent + received) / 2
        skew = local - server
        if abs(skew) <= bound + 1 + (received - sent) / 2:
            return None
        direction = "ahead of" if skew > 0 else "behind"
        return (
            f"the local clock is {abs(skew):.0f}s {direction} the queue's (Date header of {url}); "
            f"maxClockSkewSeconds is {bound}"
        )

    async def _check_credentials(self) -> str | None:
        margin = int(self.config.extra("credentialsExpiryMarginSeconds", 0))
        if not margin:
            return None
        expiry = certificate_expiry(self.ctx.credentials.get("certificate", ""))
        if expiry is None:
            return None
        left = (expiry - dt.datetime.now(dt.UTC)).total_seconds()
        if left >= margin:
            return None
        when = "expired" if left <= 0 else f"expire in {left:.0f}s"
        return (
            f"the worker's temporary credentials {when} (at {expiry.isoformat()}), within "
            f"credentialsExpiryMarginSeconds ({margin}); waiting for new credentials"
        )


__all__ = ["CHECK_TIMEOUT", "PASS_TTL", "SelfChecks", "certificate_expiry", "free_inodes"]
