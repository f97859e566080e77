"""The claim journal: what this worker holds, on disk, so a restart after a hard kill can clean up.

generic-worker leaves the runs of a killed worker to expire (claim-expired, after up to 20 minutes, with
their processes possibly still running).  megalodon records each claim before running it — task id, run
id, the task credentials (needed to resolve the run), ``takenUntil`` and the task directory — and
removes the record once the run is reported.  At start, every record left over is a run the previous
process could not finish: its processes are killed, it is reported exception/worker-shutdown (so the
queue retries it at once), and its directory is removed.

Records hold task credentials: the directory is 0700 and each file 0600, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cgroup import CgroupError, kill_task_cgroup


@dataclass
class ClaimRecord:
    task_id: str
    run_id: int
    credentials: dict[str, str]
    taken_until: str
    task_dir: str


class ClaimJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    def _path(self, task_id: str, run_id: int) -> Path:
        return self.directory / f"{task_id}-{run_id}.json"

    def record(self, entry: ClaimRecord) -> None:
        data = json.dumps(asdict(entry)).encode()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".claim-")  # 0600 from the start: credentials
        try:
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
            finally:
                os.close(fd)
            os.replace(tmp, self._path(entry.task_id, entry.run_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, task_id: str, run_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(task_id, run_id).unlink()

    def entries(self) -> list[ClaimRecord]:
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                out.append(ClaimRecord(**data))
            except (OSError, ValueError, TypeError):
                with contextlib.suppress(OSError):
                    path.unlink()  # a torn or foreign file: nothing can be recovered from it
        return out


def kill_leftovers(entry: ClaimRecord) -> int:
    """Kill what a lost run left running: its cgroup (detached daemons included, see
    :mod:`megalodon_core.cgroup`), then any process still working inside its task directory (hosts without
    cgroups, or executors that use none).  Blocking: run it in a thread."""
    killed = 0
    with contextlib.suppress(CgroupError):
        killed += kill_task_cgroup(entry.task_id, entry.run_id)
    return killed + kill_processes_under(Path(entry.task_dir))


def kill_processes_under(directory: Path) -> int:
    """SIGKILL every process whose working directory is inside ``directory`` (leftovers of a lost run)."""
    root = directory.resolve()
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed
