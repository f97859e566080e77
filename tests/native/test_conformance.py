"""The executor conformance suite (megalodon_core.testing.conformance) run against the native executor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from megalodon_core.testing.conformance import ExecutorConformance, ExecutorKit, FileArtifact


class NativeKit(ExecutorKit):
    """generic-worker payloads on the insecure engine: no chain of trust (the key would be readable by the
    task, generic-worker's insecure engine refuses it too)."""

    executor = "native"
    features = frozenset({"taskclusterProxy", "liveLog"})
    # generic-worker's insecure engine: the task runs as the worker's user, artifact paths may be absolute
    # and symlinks are followed (docs/compatibility.md).
    artifacts_confined = False

    def config(self) -> dict[str, Any]:
        # Port 0: the kernel picks the proxy's port, so suites running side by side never clash.
        return {"taskclusterProxyPort": 0}

    def shell(
        self,
        script: str,
        *,
        max_run_time: int = 30,
        features: Mapping[str, bool] | None = None,
        artifacts: Sequence[FileArtifact] = (),
    ) -> Any:
        payload: dict[str, Any] = {"command": [["/bin/sh", "-c", script]], "maxRunTime": max_run_time}
        if features:
            payload["features"] = dict(features)
        if artifacts:
            payload["artifacts"] = [{"type": "file", "name": a.name, "path": a.path} for a in artifacts]
        return payload


@pytest.fixture
def executor_kit() -> ExecutorKit:
    return NativeKit()


class TestNativeConformance(ExecutorConformance):
    pass
