"""Typed run data: what an executor tells the features of one run, and what the pipeline tells both.

Features never look at an executor's name or payload.  Everything a feature needs from the executor
crosses the boundary here, as small typed records on :attr:`megalodon_core.task.TaskRun.data`:

- the executor sets :attr:`RunData.proxy`, :attr:`RunData.task_user`, :attr:`RunData.image`,
  :attr:`RunData.exit_code` and :attr:`RunData.chain_of_trust_additions` (usually in ``prepare`` and
  ``run``);
- the pipeline sets :attr:`RunData.executor`, :attr:`RunData.style`, :attr:`RunData.logs` and
  :attr:`RunData.requests` (from the executor's :meth:`~megalodon_core.contracts.ExecutorRun.requested_features`)
  before any feature is created;
- features add :attr:`RunData.env` (``TASKCLUSTER_PROXY_URL``...), which the executor passes to the task.

A feature that cannot work without one of these fields names it in
:attr:`megalodon_core.contracts.Feature.needs`; when a task requests that feature and the executor left the
field unset after ``prepare``, the pipeline resolves the task ``exception/malformed-payload`` naming the
feature and the field — a third-party executor without a proxy placement never runs a task with
``TASKCLUSTER_PROXY_URL`` silently missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .phases import Phases

#: Fields of :class:`RunData` a feature may declare it needs (:attr:`megalodon_core.contracts.Feature.needs`).
RunDataField = Literal["proxy", "task_user", "image", "chain_of_trust_additions", "exit_code", "interactive"]


@dataclass(frozen=True)
class ProxyPlacement:
    """Where the task's processes reach a proxy the worker runs for them (taskcluster-proxy).

    ``host`` is the address the proxy listens on; it must be reachable from the task's processes (the
    loopback address for commands on the host, the gateway of a network of the task's own for a container).

    ``port`` with ``exact_port`` False is a first choice: the feature takes the first free port from there
    (several tasks on one host share the address); with ``exact_port`` True the address belongs to this run
    alone and the proxy listens on exactly that port.

    ``url`` is ``TASKCLUSTER_PROXY_URL`` as the task must see it when the task does not reach ``host`` by
    that address (a container resolving ``http://taskcluster`` to the gateway); None means
    ``http://<host>:<port>``.

    Who may connect (the proxy signs with the task's credentials, so nobody else should): ``allowed_uids``
    the OS users whose processes may connect (the task user of the multiuser engine; None: not restricted
    by uid), ``allowed_sources`` the source addresses or CIDR networks connections may come from (a
    container's network; empty: not restricted by address).
    """

    host: str
    port: int
    exact_port: bool = False
    url: str | None = None
    allowed_uids: frozenset[int] | None = None
    allowed_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskUser:
    """The OS user the task's processes run as (mounts chown to it, osGroups adds it to groups)."""

    name: str
    uid: int
    gid: int
    home: Path
    #: Whether the account exists for this task alone (multiuser engine): features may change it
    #: (group membership) knowing the change dies with the task.
    per_task: bool = False


@dataclass(frozen=True)
class ImageIdentity:
    """The image a container task ran in, as chain of trust certifies it (``environment.imageHash``...)."""

    #: Name (tag) the image is known by on this worker.
    name: str
    #: Engine image id (``sha256:...``): docker-worker's ``imageHash``.
    image_id: str
    #: sha256 of the image artifact it was loaded from (task/indexed images), docker-worker's
    #: ``imageArtifactHash``; None for registry images.
    artifact_hash: str | None = None


class ShellSession(Protocol):
    """One interactive shell in the task's environment (a pty on the host, a ``docker exec`` TTY...)."""

    async def read(self) -> bytes:
        """The next terminal output; ``b""`` once the shell has ended (or was closed)."""
        ...

    async def write(self, data: bytes) -> None:
        """Keystrokes for the shell (bytes as typed, ``\r`` for Enter)."""
        ...

    async def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's window size (the shell sees ``SIGWINCH``)."""
        ...

    async def exit_status(self) -> int | None:
        """The shell's exit code once :meth:`read` returned ``b""`` (None: unknown or killed)."""
        ...

    async def close(self) -> None:
        """End the session: the shell and what it started are killed; idempotent."""
        ...


class ShellLauncher(Protocol):
    """What an executor offers the interactive feature: shells started in the run's environment — as the
    task's user, in its directory (or container), with its environment and ``TERM`` set."""

    async def start(self, rows: int, cols: int, command: list[str] | None = None) -> ShellSession:
        """A new shell on a terminal of ``rows`` x ``cols``; ``command`` replaces the default shell
        (docker-worker's clients choose it).  Raise an ExecutionError when it cannot start."""
        ...


@dataclass(frozen=True)
class LogNames:
    """The task log's artifact names as the payload asks (None: that artifact is not published)."""

    live: str | None
    backing: str | None


@dataclass(frozen=True)
class FeatureRequest:
    """One feature a task's payload asks for, as the executor declares it.

    ``required``: absent or disabled on this worker is ``malformed-payload`` (``taskclusterProxy: true``);
    False: used when installed and enabled, silently skipped otherwise (generic-worker's ``liveLog``,
    on by default).  ``options`` is the feature's own section of the payload (a mounts list, osGroups,
    purge-cache exit codes): the feature reads that, never the executor's payload model.
    """

    name: str
    required: bool = True
    options: Any = None


@dataclass
class RunData:
    """Typed data shared by the pipeline, the executor and the features of one run (see module docstring)."""

    #: Name of the executor running the task (for messages and hooks; features must not branch on it).
    executor: str = ""
    #: The peer whose conventions the run follows (log line format, and the few places where
    #: generic-worker and docker-worker differ for a feature, e.g. chain of trust after an abort).
    style: str = "generic-worker"
    #: Seconds the run may take (set by the pipeline from the executor's ``max_run_time``; 0 before).
    max_run_time: int = 0
    #: Task log artifact names (set by the pipeline from the executor's ``log_artifact_names``).
    logs: LogNames = field(default_factory=lambda: LogNames(None, None))
    #: Feature name -> what the payload asked of it (set by the pipeline from the executor's declaration).
    requests: dict[str, FeatureRequest] = field(default_factory=dict)
    #: Where the task's processes reach a local proxy; None: this executor offers none.
    proxy: ProxyPlacement | None = None
    #: The OS user the task runs as; None: the worker's own user (insecure engine) or not an OS user.
    task_user: TaskUser | None = None
    #: The container image, for chain of trust; None: the task ran on the host.
    image: ImageIdentity | None = None
    #: Exit code of the task's last command; None before it ends and when it was aborted.
    exit_code: int | None = None
    #: A file the task may write to add data to its chain-of-trust certificate, safe for the worker to read
    #: once the run ended (``chain-of-trust-additional-data.json`` of generic-worker); None: not supported.
    chain_of_trust_additions: Path | None = None
    #: Environment variables features add for the task's processes (``TASKCLUSTER_PROXY_URL``...).
    env: dict[str, str] = field(default_factory=dict)
    #: generic-worker's worker metadata (the "Worker Type settings" block of its log header), set by the worker.
    worker_metadata: dict[str, Any] = field(default_factory=dict)
    #: Starts interactive shells in the task's environment (the ``interactive`` feature); None: this
    #: executor cannot.  Set in ``prepare``.
    interactive: ShellLauncher | None = None
    #: Where the run's time goes (:mod:`megalodon_core.phases`): the pipeline times its own steps, executors
    #: and features time theirs by name (``with run.data.phases.phase("image_pull"):``) and count cache hits.
    phases: Phases = field(default_factory=Phases)

    def request(self, name: str) -> FeatureRequest | None:
        """What the payload asked of feature ``name``, or None when it did not ask."""
        return self.requests.get(name)


__all__ = [
    "FeatureRequest",
    "ImageIdentity",
    "LogNames",
    "ProxyPlacement",
    "RunData",
    "RunDataField",
    "ShellLauncher",
    "ShellSession",
    "TaskUser",
]
