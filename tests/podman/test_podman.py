"""The docker executor on podman's Docker-compatible API: what only the podman lane can show.

The lane (``nox -s podman``) also runs a part of the docker suite with ``DOCKER_HOST`` on podman's socket
(image from a tarball and from the local registry, artifacts, caches, maxRunTime, the proxy); the tests
here reach podman through ``dockerConfig.host`` alone, and pin down where podman differs from dockerd.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import docker
import docker.errors
import pytest

from megalodon_core.testing import Harness
from megalodon_docker.images import (
    PODMAN_LEGACY_ARCHIVE_MESSAGE,
    ImageError,
    ImageManager,
    ImageOptions,
    ImagePullRejected,
)
from megalodon_docker.payload import TaskImage

pytestmark = pytest.mark.docker

BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
REGISTRY_IMAGE = "127.0.0.1:5000/megalodon-test/busybox:latest"


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


async def _no_download(task_id: str, path: str, dest: Path) -> None:
    raise AssertionError(f"unexpected download of {path} from {task_id}")


async def test_docker_config_host_runs_the_task_on_podman(
    harness: Harness, podman_host: str, podman_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only ``dockerConfig.host`` names podman: DOCKER_HOST points nowhere, so a task that runs proves the
    executor used the configured endpoint (podman marks its containers with ``container=podman``)."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    payload = {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", 'echo "engine=$container"'], "maxRunTime": 60}
    out = await harness.run(
        payload, executor="docker", requiredDiskSpaceMegabytes=0, dockerConfig={"host": podman_host}
    )
    assert out.state == "completed", out.log
    assert "engine=podman" in out.log
    assert not podman_client.containers.list(all=True, filters={"label": "megalodon.worker"}), "container left"


async def test_pull_from_the_local_registry_reports_no_size(podman_client: docker.DockerClient, tmp_path: Path) -> None:
    """podman's pull stream has no progress details: the log says the size is unknown, never "0 mb"."""
    try:
        podman_client.images.remove(REGISTRY_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    manager = ImageManager(podman_client, tmp_path / "work", options=ImageOptions(pull_base_delay=0.01))
    log = Log()
    resolved = await manager.ensure_image(REGISTRY_IMAGE, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert resolved.pull is not None and resolved.pull.bytes_downloaded is None
    (summary,) = [line for line in log.lines if line.startswith("Pulled docker image")]
    assert "size not reported by the engine" in summary
    assert resolved.image_id.removeprefix("sha256:") in podman_client.images.get(REGISTRY_IMAGE).id


async def test_unknown_image_is_rejected_at_once_on_podman(podman_client: docker.DockerClient, tmp_path: Path) -> None:
    """podman reports "manifest unknown" inside the pull stream, not as an HTTP status: still no retry."""
    manager = ImageManager(podman_client, tmp_path / "work", options=ImageOptions(pull_attempts=5, pull_base_delay=60))
    log = Log()
    with pytest.raises(ImagePullRejected, match="manifest unknown"):
        await manager.ensure_image(
            "127.0.0.1:5000/megalodon-test/no-such-image:1", task_id="T", task_scopes=[], download=_no_download, log=log
        )
    assert sum(line.startswith("Pulling docker image") for line in log.lines) == 1


async def test_docker_save_v1_archive_is_refused_with_a_clear_error(
    podman_client: docker.DockerClient, tmp_path: Path
) -> None:
    """podman cannot load a v1.0 archive (no manifest.json); the task log says that, not podman's
    "payload does not match any of the supported image formats"."""
    saved = tmp_path / "image.tar"
    with saved.open("wb") as out:
        for chunk in podman_client.images.get(BUSYBOX_IMAGE).save(named=True):
            out.write(chunk)
    legacy = tmp_path / "image-v1.tar"
    with tarfile.open(saved) as src, tarfile.open(legacy, "w") as dst:
        members = src.getmembers()
        if not any(m.name == "repositories" for m in members):
            pytest.fail("podman's docker-archive has no repositories file to build a v1.0 archive from")
        for member in members:
            if member.name != "manifest.json":
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)

    async def download(task_id: str, path: str, dest: Path) -> None:
        shutil.copyfile(legacy, dest)

    manager = ImageManager(podman_client, tmp_path / "work")
    spec = TaskImage(type="task-image", taskId="AAAAAAAAAAAAAAAAAAAAAA", path="public/image.tar")
    with pytest.raises(ImageError) as caught:
        await manager.ensure_image(spec, task_id="T", task_scopes=[], download=download, log=Log())
    assert PODMAN_LEGACY_ARCHIVE_MESSAGE in str(caught.value)
