"""The executor conformance suite (megalodon_core.testing.conformance) run against the docker executor.

Needs the Docker engine and the test image (``.ci/docker-setup.sh``); fails, never skips, without them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from megalodon_core.testing.conformance import ExecutorConformance, ExecutorKit, FileArtifact

BUSYBOX_IMAGE = "megalodon-test/busybox:latest"
#: Conformance feature names -> docker-worker's payload feature names.
FEATURE_NAMES = {"liveLog": "localLiveLog"}


class DockerKit(ExecutorKit):
    """docker-worker payloads in the busybox test image.  docker-worker's differences, declared: a missing
    artifact is only an error artifact, and maxRunTime says it killed the container."""

    executor = "docker"
    features = frozenset({"taskclusterProxy", "liveLog", "chainOfTrust"})
    missing_artifact_fails = False
    # The container's file system is the task's: a symlink to a host path dangles there, so the artifact is
    # missing (an error artifact, which docker-worker does not fail on).
    escaping_artifact_resolutions = frozenset({("completed", "completed")})
    max_run_time_message = "seconds. Force killing container."

    def config(self) -> dict[str, Any]:
        return {"requiredDiskSpaceMegabytes": 0}

    def shell(
        self,
        script: str,
        *,
        max_run_time: int = 30,
        features: Mapping[str, bool] | None = None,
        artifacts: Sequence[FileArtifact] = (),
    ) -> Any:
        payload: dict[str, Any] = {
            "image": BUSYBOX_IMAGE,
            "command": ["/bin/sh", "-c", script],
            "maxRunTime": max_run_time,
        }
        if features:
            payload["features"] = {FEATURE_NAMES.get(name, name): on for name, on in features.items()}
        if artifacts:
            payload["artifacts"] = {a.name: {"type": "file", "path": a.path} for a in artifacts}
        return payload

    def artifact_path(self, filename: str) -> str:
        return f"/{filename}"

    def proxy_get(self, path: str) -> str:
        # busybox's wget; docker-worker tasks reach the proxy as http://taskcluster.
        return f'wget -q -O - "$TASKCLUSTER_PROXY_URL"{shlex.quote(path)}'


@pytest.fixture
def executor_kit() -> ExecutorKit:
    return DockerKit()


class TestDockerConformance(ExecutorConformance):
    pass
