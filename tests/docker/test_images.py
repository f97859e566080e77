"""ImageManager against the real engine, the local registry (127.0.0.1:5000) and ``docker save`` tarballs.

Needs ``.ci/docker-setup.sh`` to have run; the tests fail (not skip) otherwise.  Artifact downloads are
served by copying local files: the Taskcluster double is wired in by the executor, not here.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from megalodon_docker.images import (
    UNSUPPORTED_FORMAT_MESSAGE,
    ImageError,
    ImageManager,
    ImageNotAuthorizedError,
    ImageOptions,
    ImagePullRejected,
    ResolvedImage,
)
from megalodon_docker.payload import IndexedImage, TaskImage

pytestmark = pytest.mark.docker

#: Same names as in conftest.py (built by .ci/docker-setup.sh); not imported: test modules are not a package.
BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
REGISTRY = "127.0.0.1:5000"
REGISTRY_BUSYBOX_IMAGE = f"{REGISTRY}/megalodon-test/busybox:latest"

FAST = ImageOptions(pull_base_delay=0.01)


class Log:
    """Collects task log lines; ``log`` is what ImageManager receives."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def count(self, prefix: str) -> int:
        return sum(1 for line in self.lines if line.startswith(prefix))


class CopyDownloader:
    """Serves ``(taskId, path)`` from local files, counting downloads; ``find_task`` reads a dict."""

    def __init__(self, files: dict[tuple[str, str], Path], *, delay: float = 0.0) -> None:
        self.files = files
        self.index: dict[str, str] = {}
        self.delay = delay
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, task_id: str, path: str, dest: Path) -> None:
        self.calls.append((task_id, path))
        await asyncio.sleep(self.delay)
        source = self.files.get((task_id, path))
        if source is None:
            raise RuntimeError(f"404: no artifact {path} on task {task_id}")
        await asyncio.to_thread(shutil.copyfile, source, dest)

    async def find_task(self, namespace: str) -> str:
        try:
            return self.index[namespace]
        except KeyError:
            raise RuntimeError("ResourceNotFound: Indexed task not found") from None


async def _no_download(task_id: str, path: str, dest: Path) -> None:
    raise AssertionError(f"unexpected download of {path} from {task_id}")


def _md5_name(task_id: str, path: str) -> str:
    return hashlib.md5(f"{task_id}{path}".encode()).hexdigest() + ":latest"


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def cleanup_tags(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Image references a test created; untagged afterwards so repeated runs do not pile up tags."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag)
        except docker.errors.ImageNotFound:
            pass


def _manager(client: docker.DockerClient, tmp_path: Path, **kwargs: object) -> ImageManager:
    registries = kwargs.pop("registries", None)
    options = kwargs.pop("options", FAST)
    assert not kwargs
    return ImageManager(client, tmp_path / "work", registries, options=options)  # type: ignore[arg-type]


def _evil_archive(path: Path, member: tarfile.TarInfo) -> None:
    """A minimal docker-save-like archive with one extra hostile member."""
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["x:latest"], "Layers": []}]).encode()
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest))
        archive.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)


# -- registry images -----------------------------------------------------------------------------------------


async def test_pull_from_local_registry(docker_client: docker.DockerClient, tmp_path: Path, busybox_id: str) -> None:
    try:
        docker_client.images.remove(REGISTRY_BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    log = Log()
    manager = _manager(docker_client, tmp_path)
    resolved = await manager.ensure_image(
        f"{REGISTRY}/megalodon-test/busybox", task_id="T", task_scopes=[], download=_no_download, log=log
    )
    assert resolved == ResolvedImage(image_id=busybox_id, name=REGISTRY_BUSYBOX_IMAGE, artifact_hash=None)
    assert log.lines[0] == f"Pulling docker image {REGISTRY_BUSYBOX_IMAGE}"
    assert docker_client.images.get(REGISTRY_BUSYBOX_IMAGE).id == busybox_id
    assert manager.last_used(REGISTRY_BUSYBOX_IMAGE) is not None


async def test_present_image_is_not_pulled_again(
    docker_client: docker.DockerClient, tmp_path: Path, busybox_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pull(*args: object, **kwargs: object) -> None:
        raise AssertionError("pulled an image that is present")

    monkeypatch.setattr(docker_client.api, "pull", no_pull)
    log = Log()
    resolved = await _manager(docker_client, tmp_path).ensure_image(
        BUSYBOX_IMAGE, task_id="T", task_scopes=[], download=_no_download, log=log
    )
    assert resolved == ResolvedImage(image_id=busybox_id, name=BUSYBOX_IMAGE)
    assert log.count("Pulling") == 0


async def test_pull_of_missing_image_is_rejected_without_retries(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The registry's "manifest unknown" cannot change on a retry: one attempt, the registry's message."""
    log = Log()
    manager = _manager(docker_client, tmp_path, options=ImageOptions(pull_attempts=3, pull_base_delay=30))
    missing = f"{REGISTRY}/megalodon-test/does-not-exist:{uuid.uuid4().hex[:8]}"
    with pytest.raises(ImagePullRejected, match=r"Could not pull docker image .*does-not-exist.*manifest unknown"):
        await manager.ensure_image(missing, task_id="T", task_scopes=[], download=_no_download, log=log)
    assert log.count("Pulling docker image") == 1
    assert log.count("Error pulling docker image") == 0


async def test_registry_credentials_need_the_image_scope(
    docker_client: docker.DockerClient, tmp_path: Path, busybox_id: str
) -> None:
    creds = {"username": "user", "password": "secret"}
    manager = _manager(docker_client, tmp_path, registries={REGISTRY: creds})
    with pytest.raises(ImageNotAuthorizedError) as info:
        await manager.ensure_image(
            REGISTRY_BUSYBOX_IMAGE,
            task_id="T",
            task_scopes=["docker-worker:image:other"],
            download=_no_download,
            log=Log(),
        )
    assert info.value.missing_scope == f"docker-worker:image:{REGISTRY}/megalodon-test/busybox:latest"
    assert str(info.value).startswith("Not authorized to use ")
    assert info.value.missing_scope in str(info.value)

    # A `host/*` scope grants every image of that registry, as in docker-worker's registry_auth_test.
    resolved = await manager.ensure_image(
        REGISTRY_BUSYBOX_IMAGE,
        task_id="T",
        task_scopes=[f"docker-worker:image:{REGISTRY}/*"],
        download=_no_download,
        log=Log(),
    )
    assert resolved.image_id == busybox_id

    # host/user entries win over host ones; two-part names are looked up under the default registry.
    manager = _manager(docker_client, tmp_path, registries={"registry.hub.docker.com/someone": creds})
    with pytest.raises(ImageNotAuthorizedError, match=r"docker-worker:image:someone/private:v1"):
        await manager.ensure_image("someone/private:v1", task_id="T", task_scopes=[], download=_no_download, log=Log())
    # Images without configured credentials need no scope at all.
    resolved = await _manager(docker_client, tmp_path, registries={"elsewhere.example": creds}).ensure_image(
        REGISTRY_BUSYBOX_IMAGE, task_id="T", task_scopes=[], download=_no_download, log=Log()
    )
    assert resolved.image_id == busybox_id


# -- artifact images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".tar", ".tar.zst", ".tar.lz4"])
async def test_task_image_formats(
    ext: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    image_files: dict[str, Path],
    busybox_id: str,
    cleanup_tags: list[str],
) -> None:
    source_task, path = uuid.uuid4().hex, f"public/image{ext}"
    name = _md5_name(source_task, path)
    cleanup_tags.append(name)
    downloader = CopyDownloader({(source_task, path): image_files[ext]})
    manager = _manager(docker_client, tmp_path)
    log = Log()

    spec = TaskImage(type="task-image", task_id=source_task, path=path)
    resolved = await manager.ensure_image(spec, task_id="T", task_scopes=[], download=downloader, log=log)

    assert resolved == ResolvedImage(image_id=busybox_id, name=name, artifact_hash=_sha256(image_files[ext]))
    assert docker_client.images.get(name).id == busybox_id
    expected = [
        f'Downloading artifact "{path}" from task ID: {source_task}.',
        "Downloaded artifact successfully.",
        *(["Decompressing downloaded image"] if ext != ".tar" else []),
        "Loading docker image from downloaded archive.",
        f"Image '{path}' from task '{source_task}' loaded.  Using image ID {busybox_id}.",
    ]
    assert [line for line in log.lines if not line.startswith("Downloaded ") or "successfully" in line] == expected
    assert any(line.endswith(" mb over the wire") for line in log.lines)
    assert not list((tmp_path / "work" / "tmp-docker-images").iterdir()), "temporary files left behind"

    # Cached: same manager -> no download, hash remembered; a fresh manager (restart) -> no hash known.
    again = await manager.ensure_image(spec, task_id="T2", task_scopes=[], download=_no_download, log=Log())
    assert again == resolved
    fresh = await _manager(docker_client, tmp_path).ensure_image(
        spec, task_id="T3", task_scopes=[], download=_no_download, log=Log()
    )
    assert fresh == ResolvedImage(image_id=busybox_id, name=name, artifact_hash=None)
    assert downloader.calls == [(source_task, path)]

    if ext == ".tar.zst":
        output = docker_client.containers.run(name, ["sh", "-c", "echo loaded-ok"], remove=True, network_mode="none")
        assert output == b"loaded-ok\n"


async def test_v1_repositories_archive(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    source_task, path = uuid.uuid4().hex, "public/image.tar"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({(source_task, path): image_files["v1"]})
    resolved = await _manager(docker_client, tmp_path).ensure_image(
        TaskImage(type="task-image", task_id=source_task, path=path),
        task_id="T",
        task_scopes=[],
        download=downloader,
        log=Log(),
    )
    assert resolved.name == _md5_name(source_task, path)
    assert docker_client.images.get(resolved.name).id == resolved.image_id


async def test_indexed_image(
    docker_client: docker.DockerClient,
    tmp_path: Path,
    image_files: dict[str, Path],
    busybox_id: str,
    cleanup_tags: list[str],
) -> None:
    source_task, path, namespace = uuid.uuid4().hex, "public/image.tar.zst", "garbage.megalodon.images.busybox"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({(source_task, path): image_files[".tar.zst"]})
    downloader.index[namespace] = source_task
    spec = IndexedImage(type="indexed-image", namespace=namespace, path=path)
    manager = _manager(docker_client, tmp_path)

    resolved = await manager.ensure_image(spec, task_id="T", task_scopes=[], download=downloader, log=Log())
    assert resolved == ResolvedImage(busybox_id, _md5_name(source_task, path), _sha256(image_files[".tar.zst"]))

    missing = IndexedImage(type="indexed-image", namespace="no.such.namespace", path=path)
    with pytest.raises(ImageError, match=r'Could not find a task associated with "no.such.namespace" namespace'):
        await manager.ensure_image(missing, task_id="T", task_scopes=[], download=downloader, log=Log())
    with pytest.raises(ImageError, match="find_task"):
        await manager.ensure_image(spec, task_id="T", task_scopes=[], download=_no_download, log=Log())


async def test_private_artifact_needs_get_artifact_scope(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    source_task, path = uuid.uuid4().hex, "private/docker-worker-tests/image.tar"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({(source_task, path): image_files[".tar"]})
    spec = TaskImage(type="task-image", task_id=source_task, path=path)
    manager = _manager(docker_client, tmp_path)
    with pytest.raises(ImageNotAuthorizedError) as info:
        await manager.ensure_image(spec, task_id="T", task_scopes=[], download=downloader, log=Log())
    assert info.value.missing_scope == f"queue:get-artifact:{path}"
    assert downloader.calls == []
    resolved = await manager.ensure_image(
        spec,
        task_id="T",
        task_scopes=["queue:get-artifact:private/docker-worker-tests/*"],
        download=downloader,
        log=Log(),
    )
    assert resolved.name == _md5_name(source_task, path)


async def test_private_indexed_image_scope_is_checked_before_the_index_lookup(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    """docker-worker's order: "Not authorized to use ..." before any index lookup, so a task without the
    scope learns nothing from the index (not even whether the namespace exists)."""
    source_task, path, namespace = uuid.uuid4().hex, "private/image.tar", "garbage.megalodon.images.private"
    cleanup_tags.append(_md5_name(source_task, path))
    lookups: list[str] = []

    class RecordingDownloader(CopyDownloader):
        async def find_task(self, namespace: str) -> str:
            lookups.append(namespace)
            return await super().find_task(namespace)

    downloader = RecordingDownloader({(source_task, path): image_files[".tar"]})
    downloader.index[namespace] = source_task
    manager = _manager(docker_client, tmp_path)
    for ns in (namespace, "no.such.namespace"):
        spec = IndexedImage(type="indexed-image", namespace=ns, path=path)
        with pytest.raises(ImageNotAuthorizedError, match=r"^Not authorized to use \{") as info:
            await manager.ensure_image(spec, task_id="T", task_scopes=[], download=downloader, log=Log())
        assert info.value.missing_scope == f"queue:get-artifact:{path}"
    assert lookups == [] and downloader.calls == []
    spec = IndexedImage(type="indexed-image", namespace=namespace, path=path)
    resolved = await manager.ensure_image(
        spec, task_id="T", task_scopes=[f"queue:get-artifact:{path}"], download=downloader, log=Log()
    )
    assert lookups == [namespace] and resolved.name == _md5_name(source_task, path)


@pytest.mark.parametrize("path", ["public/image.tar.gz", "public/image.zip", "public/image"])
async def test_unsupported_extension(docker_client: docker.DockerClient, tmp_path: Path, path: str) -> None:
    spec = TaskImage(type="task-image", task_id=uuid.uuid4().hex, path=path)
    with pytest.raises(ImageError) as info:
        await _manager(docker_client, tmp_path).ensure_image(
            spec, task_id="T", task_scopes=[], download=_no_download, log=Log()
        )
    assert str(info.value) == f"Error loading docker image. {UNSUPPORTED_FORMAT_MESSAGE}"


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../evil"), "would escape the archive root"),
        (_member("/etc/evil"), "would escape the archive root"),
        (_member("layer/../../evil"), "would escape the archive root"),
        (_member("layer/link", tarfile.SYMTYPE, "../../etc/passwd"), "is outside the archive"),
        (_member("layer/abs", tarfile.SYMTYPE, "/etc/passwd"), "is outside the archive"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "is outside the archive"),
        (_member("dev", tarfile.CHRTYPE), "unsupported member type"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "symlink-absolute", "hardlink-out", "device"],
)
async def test_escaping_archive_member_is_refused(
    docker_client: docker.DockerClient, tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    evil = tmp_path / "evil.tar"
    _evil_archive(evil, member)
    source_task, path = uuid.uuid4().hex, "public/image.tar"
    with pytest.raises(ImageError, match=reason):
        await _manager(docker_client, tmp_path).ensure_image(
            TaskImage(type="task-image", task_id=source_task, path=path),
            task_id="T",
            task_scopes=[],
            download=CopyDownloader({(source_task, path): evil}),
            log=Log(),
        )
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(_md5_name(source_task, path))


async def test_archive_without_image_metadata(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as archive:
        archive.addfile(_member("hello.txt"), io.BytesIO(b"x"))
    source_task, path = uuid.uuid4().hex, "public/image.tar"
    with pytest.raises(ImageError, match="Unknown docker archive format"):
        await _manager(docker_client, tmp_path).ensure_image(
            TaskImage(type="task-image", task_id=source_task, path=path),
            task_id="T",
            task_scopes=[],
            download=CopyDownloader({(source_task, path): junk}),
            log=Log(),
        )


async def test_concurrent_ensures_load_once(
    docker_client: docker.DockerClient,
    tmp_path: Path,
    image_files: dict[str, Path],
    busybox_id: str,
    cleanup_tags: list[str],
) -> None:
    source_task, path = uuid.uuid4().hex, "public/image.tar.lz4"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({(source_task, path): image_files[".tar.lz4"]}, delay=0.3)
    manager = _manager(docker_client, tmp_path)
    spec = TaskImage(type="task-image", task_id=source_task, path=path)
    logs = [Log() for _ in range(4)]

    results = await asyncio.gather(
        *(
            manager.ensure_image(spec, task_id=f"T{i}", task_scopes=[], download=downloader, log=log)
            for i, log in enumerate(logs)
        )
    )
    assert len(downloader.calls) == 1
    assert sum(log.count("Loading docker image") for log in logs) == 1
    assert {r.image_id for r in results} == {busybox_id}
    assert len(set(results)) == 1 and results[0].artifact_hash == _sha256(image_files[".tar.lz4"])
    # Every task's log still says which image it got.
    assert all(log.lines[-1].endswith(f"Using image ID {busybox_id}.") for log in logs)


async def test_cancelled_waiter_does_not_cancel_shared_load(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    source_task, path = uuid.uuid4().hex, "public/image.tar"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({(source_task, path): image_files[".tar"]}, delay=0.3)
    manager = _manager(docker_client, tmp_path)
    spec = TaskImage(type="task-image", task_id=source_task, path=path)
    first = asyncio.create_task(manager.ensure_image(spec, task_id="A", task_scopes=[], download=downloader, log=Log()))
    second = asyncio.create_task(
        manager.ensure_image(spec, task_id="B", task_scopes=[], download=downloader, log=Log())
    )
    await asyncio.sleep(0.1)
    first.cancel()
    resolved = await second
    assert resolved.name == _md5_name(source_task, path)
    assert len(downloader.calls) == 1


async def test_failed_download_is_reported_and_retried_next_time(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    source_task, path = uuid.uuid4().hex, "public/image.tar"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({})
    manager = _manager(docker_client, tmp_path)
    spec = TaskImage(type="task-image", task_id=source_task, path=path)
    with pytest.raises(ImageError, match=r"Error loading docker image\. 404: no artifact"):
        await manager.ensure_image(spec, task_id="T", task_scopes=[], download=downloader, log=Log())
    downloader.files[(source_task, path)] = image_files[".tar"]
    resolved = await manager.ensure_image(spec, task_id="T", task_scopes=[], download=downloader, log=Log())
    assert resolved.artifact_hash == _sha256(image_files[".tar"])


# -- garbage collection ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_gc_removes_idle_unused_images(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    clock = FakeClock()
    free = [10**12]
    manager = _manager(docker_client, tmp_path, options=ImageOptions(clock=clock, disk_free=lambda: free[0]))
    busybox = docker_client.images.get(BUSYBOX_IMAGE)
    idle, used = (f"megalodon-gc-test/{kind}:{uuid.uuid4().hex[:8]}" for kind in ("idle", "used"))
    # Two distinct images (a container pins its image *ID*, so shared IDs would keep both).
    for name in (idle, used):
        base = docker_client.containers.create(BUSYBOX_IMAGE, ["true"])
        repo, tag = name.split(":")
        base.commit(repository=repo, tag=tag, conf={"Labels": {"megalodon-gc-test": name}})
        base.remove()
    container = None
    try:
        for name in (idle, used):
            await manager.ensure_image(name, task_id="T", task_scopes=[], download=_no_download, log=Log())
        container = docker_client.containers.create(used, ["true"])

        assert await manager.gc(max_idle=3600) == []
        clock.now += 3601
        assert await manager.gc(max_idle=3600) == [idle]
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(idle)
        assert docker_client.images.get(BUSYBOX_IMAGE).id == busybox.id, "only the tag may go"

        container.remove()
        container = None
        manager.touch(used)
        assert await manager.gc(max_idle=3600) == []
        # Disk pressure removes even recently used images.
        free[0] = 0
        assert await manager.gc(max_idle=3600, min_free_bytes=1) == [used]
        assert manager.last_used(used) is None
    finally:
        if container is not None:
            container.remove(force=True)
        for name in (idle, used):
            try:
                docker_client.images.remove(name)
            except docker.errors.ImageNotFound:
                pass


async def test_event_loop_stays_responsive_during_load(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    """Decompression, hashing, tar rewriting and the engine calls all run off the event loop."""
    source_task, path = uuid.uuid4().hex, "public/image.tar.zst"
    cleanup_tags.append(_md5_name(source_task, path))
    downloader = CopyDownloader({(source_task, path): image_files[".tar.zst"]})
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        await _manager(docker_client, tmp_path).ensure_image(
            TaskImage(type="task-image", task_id=source_task, path=path),
            task_id="T",
            task_scopes=[],
            download=downloader,
            log=Log(),
        )
    finally:
        done.set()
        await tick
    assert gaps and max(gaps) < 0.1, f"event loop blocked for {max(gaps):.3f} s"


async def test_gc_under_disk_pressure_keeps_images_held_by_running_tasks(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A task holds its image from ensure to cleanup: disk-pressure GC must not pull it from under the task."""
    manager = _manager(docker_client, tmp_path, options=ImageOptions(disk_free=lambda: 0))
    held, idle = (f"megalodon-gc-test/{kind}:{uuid.uuid4().hex[:8]}" for kind in ("held", "idle"))
    for name in (held, idle):
        # An image of its own (a label makes a new image ID): a container anyone else left on the engine
        # from the shared test image must not make this one "in use".
        dockerfile = f"FROM {BUSYBOX_IMAGE}\nLABEL megalodon-gc-test={name}\n".encode()
        docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=name, pull=False, rm=True)
    try:
        await manager.ensure_image(held, task_id="A", task_scopes=[], download=_no_download, log=Log(), hold=True)
        await manager.ensure_image(held, task_id="B", task_scopes=[], download=_no_download, log=Log(), hold=True)
        await manager.ensure_image(idle, task_id="C", task_scopes=[], download=_no_download, log=Log())
        assert await manager.gc(min_free_bytes=1) == [idle]
        manager.release(held)
        assert await manager.gc(min_free_bytes=1) == [], "still held by the second task"
        manager.release(held)
        assert await manager.gc(min_free_bytes=1) == [held]
        assert docker_client.images.get(BUSYBOX_IMAGE), "removing a tag never removes the shared image"
    finally:
        for name in (held, idle):
            try:
                docker_client.images.remove(name)
            except docker.errors.ImageNotFound:
                pass


# -- a registry name must not reach an image the task may not use -------------------------------------------


async def test_artifact_image_name_as_registry_image_needs_the_artifact_scope(
    docker_client: docker.DockerClient, tmp_path: Path, image_files: dict[str, Path], cleanup_tags: list[str]
) -> None:
    """A private artifact image is cached as ``md5(taskId + path):latest``; naming that tag as a plain
    registry image must not hand it to a task without ``queue:get-artifact:<path>``."""
    source_task, path = uuid.uuid4().hex, "private/docker-worker-tests/image.tar"
    name = _md5_name(source_task, path)
    cleanup_tags.append(name)
    downloader = CopyDownloader({(source_task, path): image_files[".tar"]})
    manager = _manager(docker_client, tmp_path)
    spec = TaskImage(type="task-image", task_id=source_task, path=path)
    await manager.ensure_image(
        spec, task_id="A", task_scopes=[f"queue:get-artifact:{path}"], download=downloader, log=Log()
    )
    for alias in (name, name.removesuffix(":latest")):
        with pytest.raises(ImagePullRejected, match="reserved for images loaded from task artifacts"):
            await manager.ensure_image(alias, task_id="B", task_scopes=[], download=_no_download, log=Log())


async def test_private_registry_image_is_not_reachable_by_its_image_id(
    docker_client: docker.DockerClient, tmp_path: Path, busybox_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image present locally is used without a pull only under the name it carries: its ID (printed in
    every task log) or an ID prefix must not skip the credentials' ``docker-worker:image:`` scope check."""
    creds = {"username": "user", "password": "secret"}
    manager = _manager(docker_client, tmp_path, registries={REGISTRY: creds})
    await manager.ensure_image(
        REGISTRY_BUSYBOX_IMAGE,
        task_id="A",
        task_scopes=[f"docker-worker:image:{REGISTRY}/*"],
        download=_no_download,
        log=Log(),
    )
    pulled: list[str] = []

    def no_pull(repo: str, *args: object, **kwargs: object) -> None:
        pulled.append(repo)
        raise docker.errors.NotFound(f"pull access denied for {repo}, repository does not exist")

    monkeypatch.setattr(docker_client.api, "pull", no_pull)
    hex_id = busybox_id.removeprefix("sha256:")
    for alias in (busybox_id, hex_id, hex_id[:12]):
        with pytest.raises(ImageError) as info:
            await manager.ensure_image(alias, task_id="B", task_scopes=[], download=_no_download, log=Log())
        assert not isinstance(info.value, ImageNotAuthorizedError)
    assert "sha256" not in pulled  # an image ID is refused, never pulled as repository "sha256"
    # The name it carries still resolves without a pull.
    resolved = await _manager(docker_client, tmp_path).ensure_image(
        BUSYBOX_IMAGE, task_id="C", task_scopes=[], download=_no_download, log=Log()
    )
    assert resolved.image_id == busybox_id


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
async def test_docker_hub_aliases_need_the_image_scope_of_hub_credentials(
    docker_client: docker.DockerClient, tmp_path: Path, host: str
) -> None:
    """Docker Hub has several names; credentials configured under one of them guard the image under all, or a
    task writing ``docker.io/someone/private`` would reach the private image (present, so never pulled)
    without ``docker-worker:image:``."""
    creds = {"username": "user", "password": "secret"}
    manager = _manager(docker_client, tmp_path, registries={"registry.hub.docker.com/someone": creds})
    with pytest.raises(ImageNotAuthorizedError, match=rf"docker-worker:image:{host}/someone/private:v1"):
        await manager.ensure_image(
            f"{host}/someone/private:v1", task_id="T", task_scopes=[], download=_no_download, log=Log()
        )
