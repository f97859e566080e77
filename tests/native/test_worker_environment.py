"""The insecure engine's base environment is the worker's own, read once per worker (reading ``os.environ``
decodes every variable, a few hundred calls on every task: issue 13), and each task gets its own copy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megalodon_native.executor import NativeExecutor


def test_the_worker_environment_is_read_once_and_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKCLUSTER_ACCESS_TOKEN", "worker-secret-token")
    monkeypatch.setenv("FROM_WORKER", "inherited")
    executor = NativeExecutor(SimpleNamespace(config=None))
    first = executor.worker_environment()
    assert first["FROM_WORKER"] == "inherited" and "TASKCLUSTER_ACCESS_TOKEN" not in first
    first["FROM_WORKER"] = "changed by a task"
    monkeypatch.setenv("SET_LATER", "x")
    second = executor.worker_environment()
    assert second["FROM_WORKER"] == "inherited", "one task's environment reached the next"
    assert "SET_LATER" not in second  # as at the first task
    assert NativeExecutor(SimpleNamespace(config=None)).worker_environment()["SET_LATER"] == "x"
