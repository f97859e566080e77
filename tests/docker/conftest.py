"""Fixtures shared by the docker executor tests.

Docker tests must *fail* when the engine is missing: a skipped test would let CI go green with the whole
image path untested.  Start the engine with ``.ci/docker-setup.sh``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import lz4.frame
import pytest
import zstandard

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


@pytest.fixture(scope="session")
def busybox_id(docker_client: docker.DockerClient) -> str:
    image_id: str = docker_client.images.get(BUSYBOX_IMAGE).id
    return image_id


@pytest.fixture(scope="session")
def image_files(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``docker save`` of the busybox test image as .tar, .tar.zst and .tar.lz4 (plus a v1.0 archive)."""
    root = tmp_path_factory.mktemp("image-files")
    tar_path = root / "image.tar"
    with tar_path.open("wb") as out:
        for chunk in docker_client.images.get(BUSYBOX_IMAGE).save(named=True):
            out.write(chunk)
    zst_path = root / "image.tar.zst"
    with tar_path.open("rb") as fin, zst_path.open("wb") as fout:
        zstandard.ZstdCompressor().copy_stream(fin, fout)
    lz4_path = root / "image.tar.lz4"
    with tar_path.open("rb") as fin, lz4.frame.open(lz4_path, "wb") as lout:
        shutil.copyfileobj(fin, lout)
    # Format v1.0: the same archive without manifest.json, so only `repositories` names the image.
    v1_path = root / "image-v1.tar"
    with tarfile.open(tar_path) as src, tarfile.open(v1_path, "w") as dst:
        for member in src.getmembers():
            if member.name != "manifest.json":
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return {".tar": tar_path, ".tar.zst": zst_path, ".tar.lz4": lz4_path, "v1": v1_path}
