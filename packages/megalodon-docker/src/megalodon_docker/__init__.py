"""megalodon-docker: docker-worker payloads on the Docker engine."""

__version__ = "0.1.0"
