"""Claim bookkeeping: the journal record, state files and task directory of each claim, on one thread.

One thread (not the default pool) so writes stay ordered — a claim's end never overtakes its start — and
the end-of-task part is not awaited before the next claim: the loop hands it over and moves on; the
worker waits for what is still pending only when it exits.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..journal import ClaimJournal, ClaimRecord
from .state_files import JOURNAL_DIR, METADATA_FILE, write_private, write_state


class ClaimBooks:
    """The journal and state files of one worker; :meth:`open` before use, :meth:`close` at exit."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._journal: ClaimJournal | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megalodon-books")
        self._pending: set[asyncio.Future[None]] = set()
        #: The loop's latest (resolved count, running task ids).  Claim starts write the state files on the
        #: loop, a claim's end later on the thread: each write takes the latest values under the lock, so an
        #: end written after the next start cannot put back an older list (nor interleave with it).
        self._latest: tuple[int, list[str]] = (0, [])
        self._state_lock = threading.Lock()

    async def open(self) -> ClaimJournal:
        """Create the state dir and journal (in a thread: start-up may find a slow disk)."""
        await asyncio.to_thread(self.state_dir.mkdir, parents=True, exist_ok=True)
        self._journal = await asyncio.to_thread(ClaimJournal, self.state_dir / JOURNAL_DIR)
        return self._journal

    @property
    def journal(self) -> ClaimJournal:
        if self._journal is None:
            raise RuntimeError("ClaimBooks.open() was not awaited")
        return self._journal

    async def claim_started(self, record: ClaimRecord, task_dir: Path, resolved: int, current: list[str]) -> None:
        """The claim's start: task directory, journal record, status file.

        On the loop, like :meth:`credentials_changed`: a directory and two files of a few hundred bytes,
        renamed into place without fsync, cost tens of microseconds; a thread hop cost milliseconds of wall
        on the critical path of every task on a loaded machine (issue 13).  The end-of-task part, which may
        remove a big task directory, stays in the bookkeeping thread.
        """
        self._start_files(record, task_dir, resolved, current)

    def _start_files(self, record: ClaimRecord, task_dir: Path, resolved: int, current: list[str]) -> None:
        task_dir.mkdir(parents=True)
        self.journal.record(record)
        self._latest = (resolved, list(current))
        self._write_latest_state()

    def _write_latest_state(self) -> None:
        with self._state_lock:
            write_state(self.state_dir, *self._latest)

    def credentials_changed(self, record: ClaimRecord) -> None:
        """A reclaim swapped the run's credentials: a few hundred bytes written atomically, fine on the loop."""
        self.journal.record(record)

    def claim_ended(
        self,
        task_id: str,
        run_id: int,
        task_dir: Path,
        *,
        resolved: int,
        current: list[str],
        metadata: str | None,
        clean: bool,
    ) -> None:
        """Forget the claim, persist the count (survives a kill), tidy up — without waiting for it."""
        journal = self.journal
        self._latest = (resolved, list(current))

        def end_files() -> None:
            journal.remove(task_id, run_id)
            self._write_latest_state()
            if metadata is not None:
                write_private(self.state_dir / METADATA_FILE, metadata)
            if clean:
                shutil.rmtree(task_dir, True)

        pending = asyncio.get_running_loop().run_in_executor(self._thread, end_files)
        self._pending.add(pending)
        pending.add_done_callback(self._pending.discard)

    async def unreported(self) -> list[ClaimRecord]:
        """The journal's claims once the end-of-task bookkeeping already handed over has run.

        Read on the same ordered thread: read beside it, a run reported a moment ago still looks unreported
        (seen on the real queue: a worker exiting after its last task re-reported it as worker-shutdown).
        """
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.journal.entries)

    async def close(self, resolved: int, current: list[str]) -> None:
        """Wait for pending bookkeeping, then write the final state."""
        if self._pending:
            await asyncio.wait(set(self._pending))
        self._thread.shutdown(wait=True)
        self._latest = (resolved, list(current))
        await asyncio.to_thread(self._write_latest_state)
