"""Loading plugins from the ``megalodon`` entry-point group, and a typed facade over their hooks.

Every hook is called through pluggy (``pm.hook``), so call order and ``tryfirst``/``trylast`` are pluggy's;
the rest of the code never touches ``pm.hook``: it asks :class:`PluginHost` — one method per hook — for
executors, features, config fields, commands, or to fire a lifecycle event.

A plugin that cannot take part is listed with its error instead of breaking every command
(``megalodon list-plugins`` shows it): one that fails to import, and one whose registration hooks raise
or return something that is not a list of records.  Each newly loaded plugin's registration hooks are
tried on that plugin alone (``subset_hook_caller``) before it is kept; a plugin that fails there is
unregistered, so none of its hooks runs.

``megalodon --help`` needs the plugins' commands only: ``PluginHost(commands_only=True)`` imports each
plugin's (light) ``hooks.py`` and calls ``megalodon_cli_commands`` alone — no other registration hook, no
config fields — so building the command line stays cheap, and a plugin broken elsewhere still has its
commands listed (``list-plugins``, which loads everything, shows it broken).

Entry points are registered in the order of their names, so the hook call order — and with it the
executor priority documented in :mod:`megalodon_core.hookspec` — does not depend on how the installer laid
out ``site-packages``.  Plugins given in-process (tests, embedding, core's internal plugins) are
registered after them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import importlib_metadata
import pluggy

from . import __version__
from .contracts import CommandInfo, ExecutorInfo, FeatureInfo
from .hookspec import MegalodonSpec

if TYPE_CHECKING:
    from .task import TaskRun

ENTRY_POINT_GROUP = "megalodon"
#: Comma-separated entry-point names that must not be loaded (operators disabling a plugin).
BLOCK_ENV = "MEGALODON_BLOCK_PLUGINS"

#: The registration hooks: collected once at load, tried per plugin before the plugin is kept.
_REGISTRATION_HOOKS: dict[str, type] = {
    "megalodon_register_executors": ExecutorInfo,
    "megalodon_register_features": FeatureInfo,
    "megalodon_cli_commands": CommandInfo,
}
_COMMANDS_HOOK = "megalodon_cli_commands"

log = logging.getLogger(__name__)


class PluginError(Exception):
    """Plugins registered something inconsistent (duplicate names, conflicting config keys)."""


@dataclass
class PluginRecord:
    """One plugin as ``list-plugins`` shows it."""

    name: str
    distribution: str
    version: str
    status: str  # "loaded", "failed" or "blocked"
    error: str | None = None
    executors: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "executors": self.executors,
            "features": self.features,
        }


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginHost:
    """The plugin manager plus one method per hook."""

    def __init__(
        self, *, load_entry_points: bool = True, plugins: list[object] | None = None, commands_only: bool = False
    ) -> None:
        self._commands_only = commands_only
        self.pm = pluggy.PluginManager("megalodon")
        self.pm.add_hookspecs(MegalodonSpec)
        self.records: list[PluginRecord] = []
        if load_entry_points:
            self._load_entry_points()
        for plugin in plugins or []:
            self.register(plugin, name=getattr(plugin, "__name__", repr(plugin)))
        self.pm.check_pending()
        self._executors: dict[str, ExecutorInfo] = {}
        self._features: dict[str, FeatureInfo] = {}
        if not commands_only:
            self._executors = self._collect_unique("megalodon_register_executors", "executor")
            self._features = self._collect_unique("megalodon_register_features", "feature")

    # -- loading -----------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        blocked = {b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()}
        for ep in sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            # Each is a parse of the distribution's METADATA (the email parser): a commands-only host, which
            # nobody lists, does without them.
            dist = ep.dist.name if ep.dist and not self._commands_only else "?"
            version = ep.dist.version if ep.dist and not self._commands_only else "?"
            if ep.name in blocked:
                self.records.append(PluginRecord(ep.name, dist, version, "blocked"))
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break the CLI
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                self.records.append(PluginRecord(ep.name, dist, version, "failed", _error_text(exc)))
                continue
            self._add(module, ep.name, dist, version)

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (tests, embedding); it is listed like an entry-point plugin.

        Unlike an entry-point plugin, one whose registration hooks raise makes this raise: the caller
        wrote it and is there to see the error.
        """
        record = self._add(plugin, name, "(in-process)", __version__)
        if record.error is not None:
            raise PluginError(f"plugin {name!r} is broken: {record.error}")

    def _add(self, plugin: object, name: str, dist: str, version: str) -> PluginRecord:
        """Register ``plugin``, try its registration hooks alone, keep it only if they work."""
        record = PluginRecord(name, dist, version, "loaded")
        self.records.append(record)
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # e.g. a hookimpl whose arguments the spec does not have
            record.status, record.error = "failed", _error_text(exc)
            log.warning("plugin %s cannot be registered: %s", name, exc)
            return record
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        hooks = {_COMMANDS_HOOK: CommandInfo} if self._commands_only else _REGISTRATION_HOOKS
        try:
            for hook, kind in hooks.items():
                infos = _flatten(hook, kind, self.pm.subset_hook_caller(hook, remove_plugins=others)())
                if kind is ExecutorInfo:
                    record.executors = [i.name for i in infos]
                elif kind is FeatureInfo:
                    record.features = [i.name for i in infos]
            if self._commands_only:
                return record
            fields = self.pm.subset_hook_caller("megalodon_config_fields", remove_plugins=others)()
            for declared in fields:
                if not isinstance(declared, dict):
                    raise TypeError(f"megalodon_config_fields returned {type(declared).__name__}, not a dict")
        except Exception as exc:
            self.pm.unregister(plugin)
            record.status, record.error = "failed", _error_text(exc)
            record.executors, record.features = [], []
            log.warning("plugin %s is broken (its registration hooks raise): %s", name, exc)
        return record

    def _collect_unique(self, hook: str, kind: str) -> dict[str, Any]:
        """One call of a registration hook, flattened in call order; a name registered twice fails loudly."""
        out: dict[str, Any] = {}
        for info in _flatten(hook, _REGISTRATION_HOOKS[hook], getattr(self.pm.hook, hook)()):
            if info.name in out:
                owners = [r.name for r in self.records if info.name in (r.executors + r.features)]
                raise PluginError(f"{kind} {info.name!r} registered twice (by {', '.join(owners) or '?'})")
            out[info.name] = info
        return out

    # -- facade ------------------------------------------------------------------------------------------
    def _require_full(self, what: str) -> None:
        """A commands-only host never collected executors, features or config: asking it is a bug, not "none"."""
        if self._commands_only:
            raise RuntimeError(f"this plugin host was loaded for CLI commands only: it has no {what}")

    @property
    def executors(self) -> dict[str, ExecutorInfo]:
        """Registered executors by name, in priority order (see ``megalodon_register_executors``)."""
        self._require_full("executors")
        return dict(self._executors)

    @property
    def features(self) -> dict[str, FeatureInfo]:
        """Registered features by name, in the order they start for a task."""
        self._require_full("features")
        return dict(self._features)

    def distribution_of(self, executor: str) -> str | None:
        """The distribution that registered ``executor`` (for messages naming what to install)."""
        return next((r.distribution for r in self.records if executor in r.executors), None)

    def config_fields(self) -> dict[str, tuple[Any, Any]]:
        self._require_full("config fields")
        fields: dict[str, tuple[Any, Any]] = {}
        for declared in self.pm.hook.megalodon_config_fields():
            for key, spec in declared.items():
                if key in fields and fields[key][0] != spec[0]:
                    raise PluginError(f"config key {key!r} declared with two types")
                fields[key] = spec
        return fields

    def commands(self) -> list[CommandInfo]:
        return list(self._collect_unique(_COMMANDS_HOOK, "command").values())

    def executors_accepting(self, payload: Any) -> list[ExecutorInfo]:
        """The executors whose ``accepts`` recognises ``payload``, in priority order."""
        self._require_full("executors")
        return [i for i in self._executors.values() if i.accepts is not None and _safe_accepts(i, payload)]

    def executor_for_payload(self, payload: Any) -> ExecutorInfo | None:
        """The highest-priority executor whose ``accepts`` recognises ``payload``, or None."""
        accepting = self.executors_accepting(payload)
        return accepting[0] if accepting else None

    def _notify(self, hook: str, **kwargs: Any) -> None:
        """Fire a lifecycle hook; an exception is logged and skips only the impls pluggy would call after it."""
        try:
            getattr(self.pm.hook, hook)(**kwargs)
        except Exception:
            log.exception("plugin hook %s raised", hook)

    def task_claimed(self, *, task_id: str, run_id: int, task: dict[str, Any]) -> None:
        self._notify("megalodon_task_claimed", task_id=task_id, run_id=run_id, task=task)

    def task_started(self, *, task_id: str, run_id: int, executor: str) -> None:
        self._notify("megalodon_task_started", task_id=task_id, run_id=run_id, executor=executor)

    def task_resolved(
        self,
        *,
        task_id: str,
        run_id: int,
        state: str,
        reason: str,
        duration: float | None = None,
        run: TaskRun | None = None,
    ) -> None:
        self._notify(
            "megalodon_task_resolved",
            task_id=task_id,
            run_id=run_id,
            state=state,
            reason=reason,
            duration=duration,
            run=run,
        )

    def running_changed(self, *, running: int) -> None:
        self._notify("megalodon_running_changed", running=running)

    def queue_call(self, *, method: str, seconds: float) -> None:
        self._notify("megalodon_queue_call", method=method, seconds=seconds)

    def reclaim_failed(self, *, task_id: str, run_id: int) -> None:
        self._notify("megalodon_reclaim_failed", task_id=task_id, run_id=run_id)

    def worker_started(self, *, worker_group: str, worker_id: str) -> None:
        self._notify("megalodon_worker_started", worker_group=worker_group, worker_id=worker_id)

    def worker_stopped(self, *, exit_code: int) -> None:
        self._notify("megalodon_worker_stopped", exit_code=exit_code)


def _flatten(hook: str, kind: type, results: Iterable[Any]) -> list[Any]:
    """Flatten a collected hook's per-plugin lists, checking each item is the record type it promises."""
    out: list[Any] = []
    for value in results:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{hook} returned {type(value).__name__}, not a list of {kind.__name__}")
        for item in value:
            if not isinstance(item, kind):
                raise TypeError(f"{hook} returned a {type(item).__name__}, not a {kind.__name__}")
            out.append(item)
    return out


def _safe_accepts(info: ExecutorInfo, payload: Any) -> bool:
    """An ``accepts`` predicate that raises counts as "no" (and is logged): a task must not crash the loop."""
    accepts: Callable[[Any], bool] | None = info.accepts
    if accepts is None:
        return False
    try:
        return bool(accepts(payload))
    except Exception:
        log.exception("executor %s: accepts() raised", info.name)
        return False
