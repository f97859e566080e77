"""The worker's open-files limit: the soft ``RLIMIT_NOFILE`` raised to the hard limit at start.

Every running task costs the worker descriptors (its log, pipes, the live log stream and its readers,
HTTP connections, the proxy's sockets); a distribution's default soft limit of 1,024 is reached by a busy
worker long before the hard limit the administrator allowed.  generic-worker gets the same from the Go
runtime (Go 1.19+ raises the soft limit at start).  Tasks inherit the raised soft limit (see
``docs/compatibility.md``).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Linux refuses a soft limit above ``fs.nr_open`` even when the hard limit is unlimited.
NR_OPEN = "/proc/sys/fs/nr_open"


def _ceiling(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(NR_OPEN) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft limit to the hard one; ``(old, new)`` soft limits, or None when nothing changed.

    Cheap (two system calls): called on the event loop at start.  A refusal is logged, never fatal: the
    worker runs with the limit it was given.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.debug("RLIMIT_NOFILE soft limit stays at %d (hard %s): %s", soft, hard, exc)
        return None
    log.debug("RLIMIT_NOFILE soft limit raised from %d to the hard limit %d", soft, target)
    return soft, target
