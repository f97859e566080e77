"""megalodon-core: the host every megalodon plugin plugs into."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pluggy

    #: Marker plugins use to implement hooks (``@megalodon_core.hookimpl``).
    hookimpl: pluggy.HookimplMarker

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``hookimpl`` is made on first use: ``megalodon --version`` imports this package and must not pay for pluggy."""
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("megalodon")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
