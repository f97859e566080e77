"""Entry point of megalodon-script: registers the ``script`` executor and its ``scriptShell`` config key.

Light on purpose: the executor module (pydantic model, process handling) is imported only when a worker
builds the executor or a command asks for the schema.
"""

from __future__ import annotations

from typing import Any

from megalodon_core import hookimpl
from megalodon_core.contracts import ExecutorInfo, payload_module_hooks

NAME = "script"


def _factory(worker: Any) -> Any:
    from .executor import ScriptExecutor

    return ScriptExecutor(worker)


_schema, _validate = payload_module_hooks(f"{__package__}.payload")


def _accepts(payload: Any) -> bool:
    # A payload with a ``script`` string is ours; generic-worker's (``command``) and docker-worker's
    # (``image``) payloads never have one.
    return isinstance(payload, dict) and isinstance(payload.get("script"), str)


@hookimpl
def megalodon_register_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            name=NAME,
            factory=_factory,
            summary="example third-party executor: a shell script string run by /bin/sh on the host",
            payload_schema=_schema,
            accepts=_accepts,
            validate=_validate,
        )
    ]


@hookimpl
def megalodon_config_fields() -> dict[str, tuple[Any, Any]]:
    # the shell that runs each task's script (checked to be executable when the worker starts)
    return {"scriptShell": (str, "/bin/sh")}
