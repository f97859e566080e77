"""Worker-config keys of the docker executor (``dockerConfig``), declared through the config hook.

docker-worker kept these in its own config file; a generic-worker config has no place for them, so they
live under one key, validated with the rest of the config (unknown sub-keys are rejected too).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: ``dockerConfig.imagePullPolicy`` (see :class:`DockerConfig`); the image manager's meaning of each value is
#: documented in :mod:`megalodon_docker.images`.
PullPolicy = Literal["if-not-present", "always", "never"]


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
    #: When a registry image already present is pulled again: ``if-not-present`` (docker-worker's
    #: behaviour: never), ``always`` (before each task; the present image is used, with a task log line,
    #: when the registry cannot be reached) or ``never`` (an absent image is malformed-payload).
    imagePullPolicy: PullPolicy = "if-not-present"
    #: Pull attempts and the base of the exponential backoff between them (docker-worker: 5, 15 s); only
    #: transient failures (rate limits, 5xx, timeouts, connection errors) are retried.
    pullAttempts: int = Field(default=5, ge=1)
    pullBaseDelaySeconds: float = Field(default=15.0, ge=0)
    #: ``/dev/shm`` size of task containers (docker-worker's ShmSize).
    shmSize: int = Field(default=1_800_000_000, ge=0)
    #: Unused images are removed this long after their last use (docker-worker: 2 h).
    imageExpirationSeconds: int = Field(default=7200, ge=0)
    #: docker-worker's ``interactive.minTime`` and ``interactive.expirationAfterSession``: a task requesting
    #: ``features.interactive`` keeps its container (and the run) alive at least this long after it started,
    #: and this long after its last shell session closed, even when its command has ended.
    interactiveMinTimeSeconds: float = Field(default=180.0, ge=0)
    interactiveExpirationAfterSessionSeconds: float = Field(default=900.0, ge=0)
    #: Docker-API endpoint the executor talks to, e.g. ``unix:///run/podman/podman.sock`` for podman's
    #: Docker-compatible service (default: the docker SDK's from-environment one: ``DOCKER_HOST``, else
    #: ``unix:///var/run/docker.sock``).
    host: str = ""
    #: Timeout of one engine API call (the docker SDK's default).  Container output streams and waits
    #: are exempt: a task may stay silent for longer than any timeout.
    apiTimeoutSeconds: float = Field(default=60.0, gt=0)
