"""Loading plugins from the ``megalodon`` entry-point group, and a typed facade over their hooks.

The rest of the code never touches ``pm.hook``: it asks :class:`PluginHost` for executors, features,
config fields or to fire a lifecycle event.  A plugin that fails to import is recorded with its error
(``megalodon list-plugins`` shows it) instead of breaking every command.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import importlib_metadata
import pluggy

from . import __version__
from .contracts import CommandInfo, ExecutorInfo, FeatureInfo
from .hookspec import MegalodonSpec

ENTRY_POINT_GROUP = "megalodon"
#: Comma-separated entry-point names that must not be loaded (operators disabling a plugin).
BLOCK_ENV = "MEGALODON_BLOCK_PLUGINS"

log = logging.getLogger(__name__)


class PluginError(Exception):
    """Plugins registered something inconsistent (duplicate names, conflicting config keys)."""


@dataclass
class PluginRecord:
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


class PluginHost:
    """The plugin manager plus one method per hook."""

    def __init__(self, *, load_entry_points: bool = True, plugins: list[object] | None = None) -> None:
        self.pm = pluggy.PluginManager("megalodon")
        self.pm.add_hookspecs(MegalodonSpec)
        self.records: list[PluginRecord] = []
        if load_entry_points:
            self._load_entry_points()
        for plugin in plugins or []:
            self.register(plugin, name=getattr(plugin, "__name__", repr(plugin)))
        self.pm.check_pending()
        self._executors = self._collect_executors()
        self._features = self._collect_features()
        self._fill_records()

    # -- loading -----------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        blocked = {b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()}
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in blocked:
                self.records.append(PluginRecord(ep.name, dist, version, "blocked"))
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the CLI
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                self.records.append(PluginRecord(ep.name, dist, version, "failed", f"{type(exc).__name__}: {exc}"))
                continue
            self.records.append(PluginRecord(ep.name, dist, version, "loaded"))

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (tests, embedding); it is listed like an entry-point plugin."""
        self.pm.register(plugin, name=name)
        self.records.append(PluginRecord(name, "(in-process)", __version__, "loaded"))

    def _collect_unique(self, hook: str, kind: str) -> dict[str, Any]:
        """Flatten a registration hook's records by name; a name registered twice fails loudly."""
        out: dict[str, Any] = {}
        for plugin_name, infos in self._per_plugin(hook):
            for info in infos:
                if info.name in out:
                    raise PluginError(f"{kind} {info.name!r} registered twice (again by {plugin_name})")
                out[info.name] = info
        return out

    def _collect_executors(self) -> dict[str, ExecutorInfo]:
        return self._collect_unique("megalodon_register_executors", "executor")

    def _collect_features(self) -> dict[str, FeatureInfo]:
        return self._collect_unique("megalodon_register_features", "feature")

    def _per_plugin(self, hook: str) -> list[tuple[str, Any]]:
        """Call ``hook`` on each plugin separately, so results can be attributed (pluggy merges them)."""
        results: list[tuple[str, Any]] = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            name = self.pm.get_name(impl.plugin) or "?"
            value = impl.function()
            if value:
                results.append((name, value))
        return results

    def _fill_records(self) -> None:
        by_name = {r.name: r for r in self.records}
        for plugin_name, infos in self._per_plugin("megalodon_register_executors"):
            if plugin_name in by_name:
                by_name[plugin_name].executors = [i.name for i in infos]
        for plugin_name, infos in self._per_plugin("megalodon_register_features"):
            if plugin_name in by_name:
                by_name[plugin_name].features = [i.name for i in infos]

    # -- facade ------------------------------------------------------------------------------------------
    @property
    def executors(self) -> dict[str, ExecutorInfo]:
        return dict(self._executors)

    @property
    def features(self) -> dict[str, FeatureInfo]:
        return dict(self._features)

    def config_fields(self) -> dict[str, tuple[Any, Any]]:
        fields: dict[str, tuple[Any, Any]] = {}
        for plugin_name, declared in self._per_plugin("megalodon_config_fields"):
            for key, spec in declared.items():
                if key in fields and fields[key][0] != spec[0]:
                    raise PluginError(f"config key {key!r} declared with two types (again by {plugin_name})")
                fields[key] = spec
        return fields

    def commands(self) -> list[CommandInfo]:
        return list(self._collect_unique("megalodon_cli_commands", "command").values())

    def executor_for_payload(self, payload: Any) -> ExecutorInfo | None:
        """The executor whose ``accepts`` recognises ``payload`` (docker payloads have ``image``)."""
        for info in self._executors.values():
            if info.accepts is not None and info.accepts(payload):
                return info
        return None

    def _notify(self, hook: str, **kwargs: Any) -> None:
        try:
            getattr(self.pm.hook, hook)(**kwargs)
        except Exception:
            log.exception("plugin hook %s raised", hook)

    def task_claimed(self, *, task_id: str, run_id: int, task: dict[str, Any]) -> None:
        self._notify("megalodon_task_claimed", task_id=task_id, run_id=run_id, task=task)

    def task_started(self, *, task_id: str, run_id: int, executor: str) -> None:
        self._notify("megalodon_task_started", task_id=task_id, run_id=run_id, executor=executor)

    def task_resolved(self, *, task_id: str, run_id: int, state: str, reason: str) -> None:
        self._notify("megalodon_task_resolved", task_id=task_id, run_id=run_id, state=state, reason=reason)
