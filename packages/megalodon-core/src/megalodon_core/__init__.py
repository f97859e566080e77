"""megalodon-core: the host every megalodon plugin plugs into."""

import pluggy

__version__ = "0.1.0"

#: Marker plugins use to implement hooks (``@megalodon_core.hookimpl``).
hookimpl = pluggy.HookimplMarker("megalodon")

__all__ = ["__version__", "hookimpl"]
