"""Fault injection: make chosen requests fail, hang or drop the connection.

Workers must survive flaky Taskcluster deployments; tests use these faults to
drive the retry, reclaim and upload-resume paths through the real client.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Fault:
    """One injected misbehaviour.

    ``method`` is an API method name (``reclaimTask``, ``createUpload``...) or a
    storage pseudo-method (``putUrl-storage``, ``getUrl-storage``); ``path_regex``
    is searched in the raw request path. With neither, every request matches.
    ``times`` is how many matching requests are affected (-1 = forever).
    ``hold``: the request waits until the event is set (after ``delay``), so a test decides when it goes
    on, e.g. to see what a worker does while one of its uploads is in flight.
    """

    method: str | None = None
    path_regex: str | None = None
    status: int | None = None
    reset: bool = False
    delay: float = 0.0
    hold: asyncio.Event | None = None
    times: int = 1
    hits: int = field(default=0, init=False)

    def matches(self, method: str | None, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path_regex is None or re.search(self.path_regex, path) is not None

    @property
    def exhausted(self) -> bool:
        return self.times >= 0 and self.hits >= self.times


class FaultSet:
    """The active faults; thread-safe because tests may add faults from another thread."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for f in self._faults if not f.exhausted)

    def take(self, method: str | None, path: str) -> Fault | None:
        """Consume and return the first live fault matching this request, if any."""
        with self._lock:
            for fault in self._faults:
                if not fault.exhausted and fault.matches(method, path):
                    fault.hits += 1
                    return fault
            self._faults = [f for f in self._faults if not f.exhausted]
        return None


class CallCounter(Counter[str]):
    """Calls seen per method name (counted before faults apply); missing names read as 0."""
