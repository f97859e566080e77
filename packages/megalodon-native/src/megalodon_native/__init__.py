"""megalodon-native: generic-worker payloads executed on the host."""

__version__ = "0.1.0"
