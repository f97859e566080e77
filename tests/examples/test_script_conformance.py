"""The executor conformance suite run against the example third-party executor (examples/megalodon-script)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from megalodon_core.testing.conformance import CONFORMANCE_FEATURES, ExecutorConformance, ExecutorKit, FileArtifact


class ScriptKit(ExecutorKit):
    """``script`` payloads: every conformance feature, generic-worker's artifact and maxRunTime rules."""

    executor = "script"
    features = frozenset(CONFORMANCE_FEATURES)

    def shell(
        self,
        script: str,
        *,
        max_run_time: int = 30,
        features: Mapping[str, bool] | None = None,
        artifacts: Sequence[FileArtifact] = (),
    ) -> Any:
        payload: dict[str, Any] = {"script": script, "maxRunTime": max_run_time}
        if features:
            payload["features"] = dict(features)
        if artifacts:
            payload["artifacts"] = [{"name": a.name, "path": a.path} for a in artifacts]
        return payload


@pytest.fixture
def executor_kit() -> ExecutorKit:
    return ScriptKit()


class TestScriptConformance(ExecutorConformance):
    pass
