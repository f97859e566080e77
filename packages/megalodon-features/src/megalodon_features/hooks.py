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
    ("liveLog", "livelog", "LiveLogFeature", "task log streamed over HTTP while the task runs"),
    ("taskclusterProxy", "proxy", "TaskclusterProxyFeature", "signs API calls with task credentials; masks secrets"),
    # -- osGroups --
    ("osGroups", "os_groups", "OSGroupsFeature", "osGroups the task user has or joins for the task"),
    # -- mounts --
    ("mounts", "mounts", "MountsFeature", "file, readOnlyDirectory and writableDirectoryCache mounts"),
    # -- resource monitor --
    ("resourceMonitor", "resource_monitor", "ResourceMonitorFeature", "memory lines per command, OOM abort"),
    # -- chain of trust --
    ("chainOfTrust", "chain_of_trust", "ChainOfTrustFeature", "ed25519-signed chain-of-trust.json and certified.log"),
    # -- interactive (last: its sessions close first, while everything they use is still up) --
    ("interactive", "interactive", "InteractiveFeature", "websocket shell into the running task (pty / docker exec)"),
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
    fields["livelogBindAddress"] = (str, "")  # live log server address ("" = 0.0.0.0 with publicIP, else loopback)
    # -- config: mounts --
    # most bytes one mount may write when decompressing or extracting (archives.DEFAULT_MAX_EXTRACTED_BYTES)
    fields["mountsMaxExtractedBytes"] = (int, 50 * 1024**3)
    # -- config: resource monitor, chain of trust, osGroups --
    return fields


@hookimpl
def megalodon_cli_commands() -> list[CommandInfo]:
    commands: list[CommandInfo] = []
    # -- commands --
    # By name: chain_of_trust (and cryptography) is imported only when the command runs, not for --help.
    commands.append(
        CommandInfo(
            name="new-ed25519-keypair",
            callback="megalodon_features.chain_of_trust:new_ed25519_keypair",
            help="Write a new chain-of-trust signing key (ed25519SigningKeyLocation); print its public key.",
        )
    )
    return commands
