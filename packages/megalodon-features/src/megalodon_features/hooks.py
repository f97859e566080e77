"""Entry point of megalodon-features: registers each feature; implementations are imported on use.

Registration order is the order features start in (and the reverse of the order they stop in), following
generic-worker's pipeline: live log, taskcluster-proxy, osGroups, mounts, resource monitor, chain of trust.
"""

from __future__ import annotations

import importlib
from typing import Any

from megalodon_core import hookimpl
from megalodon_core.contracts import CommandInfo, FeatureInfo

#: (feature name, module, class, summary) in start order.
FEATURES: list[tuple[str, str, str, str]] = [
    # -- live log and taskcluster-proxy --
    # -- osGroups --
    # -- mounts --
    # -- resource monitor --
    # -- chain of trust --
]


def _factory(module: str, cls: str) -> Any:
    def build(worker: Any) -> Any:
        return getattr(importlib.import_module(f"megalodon_features.{module}"), cls)(worker)

    return build


@hookimpl
def megalodon_register_features() -> list[FeatureInfo]:
    return [FeatureInfo(name=name, factory=_factory(mod, cls), summary=summary) for name, mod, cls, summary in FEATURES]


@hookimpl
def megalodon_config_fields() -> dict[str, tuple[Any, Any]]:
    fields: dict[str, tuple[Any, Any]] = {}
    # -- config: live log and taskcluster-proxy --
    # -- config: mounts --
    # -- config: resource monitor, chain of trust, osGroups --
    return fields


@hookimpl
def megalodon_cli_commands() -> list[CommandInfo]:
    commands: list[CommandInfo] = []
    # -- commands --
    return commands
