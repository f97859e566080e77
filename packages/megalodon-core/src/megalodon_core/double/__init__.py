"""An in-process Taskcluster double (queue, object, index, secrets and auth services).

It speaks real HTTP with real Hawk verification, so worker code under test uses
the unmodified ``taskcluster`` client. See :mod:`.server` for usage.
"""

from .faults import Fault, FaultSet
from .server import PUBLIC_ARTIFACTS, TaskclusterDouble

__all__ = ["PUBLIC_ARTIFACTS", "Fault", "FaultSet", "TaskclusterDouble"]
