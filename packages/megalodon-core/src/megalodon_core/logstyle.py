"""How the worker's own lines in a task log look, per peer (generic-worker's by default).

Apart from :mod:`megalodon_core.tasklog` because the contracts need the
style of an executor at import, and importing the contracts must stay cheap: plugins' ``hooks.py`` modules
import them, and ``megalodon --help`` imports those.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogStyle:
    """How the worker's own lines in a task log look.  ``{ts}`` in a prefix is the UTC time with milliseconds.

    ``name`` is also the peer whose conventions a run follows (:attr:`megalodon_core.rundata.RunData.style`).
    """

    name: str
    #: strftime format of the timestamp, before ``.<millis>Z``.
    timestamp: str = "%Y-%m-%dT%H:%M:%S"
    info: str = "[taskcluster {ts}]"
    warn: str = "[taskcluster:warn {ts}]"
    error: str = "[taskcluster:error]"
    #: Text written before each error message (docker-worker: an empty line, for Treeherder).
    error_lead: str = ""


#: generic-worker's lines: the default style of every executor.
GENERIC_WORKER = LogStyle("generic-worker")
