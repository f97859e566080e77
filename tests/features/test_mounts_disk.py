"""When disk is short, the mounts feature gives back what no task holds: downloads and idle caches."""

from __future__ import annotations

from pathlib import Path

from megalodon_features.cache_store import CacheStore


async def test_evict_idle_keeps_what_tasks_hold(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "caches", tmp_path / "downloads", capacity=2)
    store.load()
    idle_file = store.new_download_path()
    idle_file.write_bytes(b"idle")
    held_file = store.new_download_path()
    held_file.write_bytes(b"held")
    idle_entry = store.add_file("urlcontent:idle", idle_file, "")
    held_entry = store.add_file("urlcontent:held", held_file, "")
    lease = store.lease(held_entry)
    idle_dir = store.new_directory("build")
    Path(idle_dir.location).mkdir(parents=True)
    await store.release_directory(idle_dir)
    busy_dir = store.new_directory("build")
    Path(busy_dir.location).mkdir(parents=True)

    assert await store.evict_idle() == 2
    assert not idle_file.exists() and "urlcontent:idle" not in store.files
    assert held_file.exists() and store.files["urlcontent:held"] is held_entry
    assert not Path(idle_dir.location).exists()
    assert Path(busy_dir.location).exists() and busy_dir in store.directories["build"]
    assert idle_entry not in store.files.values()
    await lease.release()
    # The state file no longer lists what was evicted, so a restart does not resurrect it.
    reloaded = CacheStore(tmp_path / "caches", tmp_path / "downloads", capacity=2)
    reloaded.load()
    assert "urlcontent:idle" not in reloaded.files
