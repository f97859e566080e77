"""Entry point of megalodon-docker: the ``docker`` executor and its ``dockerConfig`` key.

The Docker SDK and the executor are imported only when a worker actually builds the executor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megalodon_core import hookimpl
from megalodon_core.contracts import ExecutorInfo, payload_module_hooks

if TYPE_CHECKING:
    from megalodon_core.payloads import PublishedSchemas


def _factory(worker: Any) -> Any:
    from .executor import DockerExecutor

    return DockerExecutor(worker)


def _accepts(payload: Any) -> bool:
    # generic-worker's d2g rule: a payload with a top-level ``image`` is a docker-worker payload.
    return isinstance(payload, dict) and "image" in payload


_schema, _validate = payload_module_hooks(f"{__package__}.payload")


def _published_schemas() -> PublishedSchemas:
    """docker-worker's published payload schema (``tools/d2g/schemas/docker-worker/v1/payload.yml`` in the
    monorepo since docker-worker's removal; unchanged since), as the services serve it.

    Made when executors are registered: the schema module (pydantic) is not imported with this module,
    which ``megalodon --help`` imports to ask for CLI commands only.
    """
    from megalodon_core.payloads import PublishedSchemas

    return PublishedSchemas(
        package=__package__ or "megalodon_docker", files={"docker": "schemas/payload.yml"}, style="node"
    )


# trylast: a third-party executor that accepts a payload takes precedence over megalodon's own.
@hookimpl(trylast=True)
def megalodon_register_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            name="docker",
            factory=_factory,
            summary="docker-worker payloads, run in containers on the Docker engine",
            payload_schema=_schema,
            accepts=_accepts,
            validate=_validate,
            published_schemas=_published_schemas(),
        )
    ]


@hookimpl
def megalodon_config_fields() -> dict[str, tuple[Any, Any]]:
    from megalodon_core.process import MEMORY_LIMIT_FIELD, MEMORY_LIMIT_KEY

    from .settings import DockerConfig

    # taskMemoryLimitMegabytes: the container's memory limit (the native executor's cgroup limit there)
    return {"dockerConfig": (DockerConfig, DockerConfig()), MEMORY_LIMIT_KEY: MEMORY_LIMIT_FIELD}
