"""Removing a finished task's small directory on the loop (issue 13), and leaving big ones to a thread."""

from __future__ import annotations

import os
from pathlib import Path

from megalodon_core.worker.small_tree import remove_small_tree


def _tree(root: Path, files: int) -> None:
    (root / "generic-worker").mkdir(parents=True)
    (root / "generic-worker" / "live_backing.log").write_text("log\n")
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(files):
        (root / "sub" / "deeper" / f"f{i}").write_text("x")
    os.symlink("/nonexistent", root / "dangling")


def test_a_small_tree_is_removed(tmp_path: Path) -> None:
    task_dir = tmp_path / "task_x_0"
    _tree(task_dir, 5)
    assert remove_small_tree(task_dir)
    assert not task_dir.exists() and not task_dir.is_symlink()


def test_a_tree_over_the_budget_is_left_for_rmtree(tmp_path: Path) -> None:
    task_dir = tmp_path / "task_x_0"
    _tree(task_dir, 100)
    assert not remove_small_tree(task_dir, budget=64)
    assert task_dir.is_dir(), "a tree over the budget must not be removed on the loop"


def test_a_missing_directory_counts_as_removed(tmp_path: Path) -> None:
    assert remove_small_tree(tmp_path / "never-made")


def test_symlinks_are_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    task_dir = tmp_path / "task_x_0"
    task_dir.mkdir()
    os.symlink(outside, task_dir / "link-to-dir")
    os.symlink(outside / "precious", task_dir / "link-to-file")
    assert remove_small_tree(task_dir)
    assert not task_dir.exists()
    assert (outside / "precious").read_text() == "keep"


def test_the_task_directory_itself_being_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    os.symlink(outside, tmp_path / "task_x_0")
    assert not remove_small_tree(tmp_path / "task_x_0")
    assert (outside / "precious").read_text() == "keep"
