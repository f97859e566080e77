"""Fixtures of the podman lane (``nox -s podman``): podman's Docker-compatible API service.

Like the docker tests, these fail (never skip) when the service is missing: start it with
``.ci/podman-setup.sh`` (after ``.ci/docker-setup.sh``, whose registry and test image it uses).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import docker.errors
import pytest

#: Where .ci/podman-setup.sh starts the service; MEGALODON_PODMAN_HOST overrides it.
PODMAN_HOST = os.environ.get("MEGALODON_PODMAN_HOST", "unix:///run/megalodon-podman/podman.sock")
BUSYBOX_IMAGE = "megalodon-test/busybox:latest"


@pytest.fixture(scope="session")
def podman_host() -> str:
    return PODMAN_HOST


@pytest.fixture(scope="session")
def podman_client(podman_host: str) -> Iterator[docker.DockerClient]:
    """A docker SDK client on podman's service, failing the test when the service is down or is not podman."""
    try:
        client = docker.DockerClient(base_url=podman_host, timeout=120)
        version = client.version()
    except Exception as exc:
        raise RuntimeError(
            f"podman service unreachable at {podman_host} ({exc}); run `sudo .ci/podman-setup.sh`"
        ) from exc
    names = [c.get("Name", "") for c in version.get("Components") or []]
    if "Podman Engine" not in names:
        raise RuntimeError(f"{podman_host} is not podman's service (components: {names})")
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound as exc:
        raise RuntimeError(f"test image {BUSYBOX_IMAGE} missing in podman; run .ci/podman-setup.sh") from exc
    yield client
    client.close()
