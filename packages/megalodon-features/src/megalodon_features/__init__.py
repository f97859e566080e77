"""megalodon-features: capabilities shared by executors (live log, proxy, chain of trust, mounts...)."""

__version__ = "0.1.0"
