"""Fixtures shared by the docker executor tests.

Docker tests must *fail* when the engine is missing: a skipped test would let CI go green with the whole
image path untested.  Start the engine with ``.ci/docker-setup.sh``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

#: Built by .ci/docker-setup.sh from tests/docker/images/busybox; present locally and in the registry.
BUSYBOX_IMAGE = "megalodon-test/busybox:latest"


def find_shared_dir() -> Path:
    """``$MEGALODON_SHARED``, else the nearest ``shared/`` with a ``reference/`` beside or above the tests.

    CI clones the repository next to ``shared/``, so walking up from this file finds ``<clone>/../shared``.
    """
    env = os.environ.get("MEGALODON_SHARED")
    if env:
        path = Path(env)
        if not (path / "reference").is_dir():
            raise RuntimeError(f"MEGALODON_SHARED={env} has no reference/ directory")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared"
        if (candidate / "reference").is_dir():
            return candidate
    raise RuntimeError(
        "cannot find the shared reference directory (shared/reference) above "
        f"{Path(__file__).resolve().parent}; set MEGALODON_SHARED to its path"
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return find_shared_dir()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for the local engine, failing the test (never skipping it) when the engine is down."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise RuntimeError(
            f"Docker engine unreachable ({exc}); run `sudo .ci/docker-setup.sh` to start dockerd, "
            "the local registry and build the test images"
        ) from exc
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound as exc:
        raise RuntimeError(f"test image {BUSYBOX_IMAGE} missing; run .ci/docker-setup.sh") from exc
    yield client
    client.close()
