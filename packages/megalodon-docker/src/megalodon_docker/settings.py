"""Worker-config keys of the docker executor (``dockerConfig``), declared through the config hook.

docker-worker kept these in its own config file; a generic-worker config has no place for them, so they
live under one key, validated with the rest of the config (unknown sub-keys are rejected too).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RegistryCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    username: str
    password: str


class DockerConfig(BaseModel):
    """``dockerConfig`` in the worker config file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: docker-worker's ``dockerConfig.allowPrivileged``: privileged containers need this *and* a scope.
    allowPrivileged: bool = False
    #: Registry host assumed for two-part image names when looking up credentials.
    defaultRegistry: str = "registry.hub.docker.com"
    #: Private registry credentials keyed by ``host`` or ``host/user`` (docker-worker's ``registries``).
    registries: dict[str, RegistryCredentials] = Field(default_factory=dict)
    #: Pull attempts and the base of the exponential backoff between them (docker-worker: 5, 15 s).
    pullAttempts: int = Field(default=5, ge=1)
    pullBaseDelaySeconds: float = Field(default=15.0, ge=0)
    #: ``/dev/shm`` size of task containers (docker-worker's ShmSize).
    shmSize: int = Field(default=1_800_000_000, ge=0)
    #: Unused images are removed this long after their last use (docker-worker: 2 h).
    imageExpirationSeconds: int = Field(default=7200, ge=0)
    #: Docker daemon URL (default: the environment, i.e. DOCKER_HOST or the local socket).
    baseUrl: str = ""
    #: Timeout of one engine API call (the docker SDK's default).  Container output streams and waits
    #: are exempt: a task may stay silent for longer than any timeout.
    apiTimeoutSeconds: float = Field(default=60.0, gt=0)
