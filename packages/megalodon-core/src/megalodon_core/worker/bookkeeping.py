"""Claim bookkeeping: the journal record, state files and task directory of each claim.

The journal record and state files are a few hundred bytes each and are written on the loop, in order (a
claim's end never overtakes its start).  Removing a big task directory is handed to one thread of its own
(not the default pool) and not awaited before the next claim; the worker waits for what is still pending
only when it exits.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..journal import ClaimJournal, ClaimRecord
from .small_tree import remove_small_tree
from .state_files import JOURNAL_DIR, METADATA_FILE, write_private, write_resolved_count, write_status
from .task_dirs import TaskDirs


class ClaimBooks:
    """The journal and state files of one worker; :meth:`open` before use, :meth:`close` at exit."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._metadata = str(state_dir / METADATA_FILE)  # written after every run: joined once
        self.task_dirs = TaskDirs()
        self._journal: ClaimJournal | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megalodon-books")
        self._pending: set[asyncio.Future[None]] = set()
        #: The loop's latest (resolved count, running task ids).  Each write takes the latest values under the
        #: lock (the last one, at exit, runs in a thread), so no write can put back an older list.
        self._latest: tuple[int, list[str]] = (0, [])
        #: What the files hold since this worker wrote them (None: not written yet, whatever a previous
        #: worker left there).
        self._written: tuple[int | None, list[str] | None] = (None, None)
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
        self.task_dirs.make(task_dir)
        self.journal.record(record)
        self._latest = (resolved, list(current))
        self._write_latest_state()

    def _write_latest_state(self) -> None:
        """The count and status files, each only when its value changed since this worker last wrote it (a
        claim's start changes the status alone, and each file is five syscalls on every task)."""
        with self._state_lock:
            resolved, current = self._latest
            if resolved != self._written[0]:
                write_resolved_count(self.state_dir, resolved)
            if current != self._written[1]:
                write_status(self.state_dir, current, was_idle=not self._written[1])
            self._written = (resolved, list(current))

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
        """Forget the claim, persist the count (survives a kill), tidy up — without waiting for it.

        The journal removal and the two small state files are written here, on the loop, like the claim's
        start; a small task directory is removed on the loop's next turn (:mod:`.small_tree`), while the
        next claimWork waits for its answer.  A bigger one is handed to the bookkeeping thread then.
        """
        self._latest = (resolved, list(current))
        self.journal.remove(task_id, run_id)
        self._write_latest_state()
        if metadata is not None:
            write_private(self._metadata, metadata)
        if not clean:
            return
        # The directory goes once the loop next waits (for the next claimWork's answer, at capacity 1): its
        # removal is the costliest part here (an ext4 rmdir is a tenth of a millisecond) and nothing waits
        # for it.
        loop = asyncio.get_running_loop()
        removed: asyncio.Future[None] = loop.create_future()
        self._pending.add(removed)
        removed.add_done_callback(self._pending.discard)
        loop.call_soon(self._remove_task_dir, task_dir, removed)

    def _remove_task_dir(self, task_dir: Path, removed: asyncio.Future[None]) -> None:
        """Recycled for the next run (:mod:`.task_dirs`), or removed: a small tree here, on the loop
        (:mod:`.small_tree`), a bigger one in the bookkeeping thread."""
        if self.task_dirs.recycle(task_dir) or remove_small_tree(task_dir):
            removed.set_result(None)
            return
        pending = asyncio.get_running_loop().run_in_executor(self._thread, shutil.rmtree, task_dir, True)
        pending.add_done_callback(lambda _: None if removed.done() else removed.set_result(None))

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
        await asyncio.to_thread(self.task_dirs.discard)
        self._latest = (resolved, list(current))
        await asyncio.to_thread(self._write_latest_state)
        if self._journal is not None:
            self._journal.discard_free()
