"""Entry point of megalodon-native: registers the ``native`` executor (imported only when used)."""

from __future__ import annotations

from typing import Any

from megalodon_core import hookimpl
from megalodon_core.contracts import ExecutorInfo, payload_module_hooks


def _factory(worker: Any) -> Any:
    from .executor import NativeExecutor

    return NativeExecutor(worker)


def _accepts(payload: Any) -> bool:
    # generic-worker's rule: a payload with a top-level ``image`` is a docker-worker payload.
    return isinstance(payload, dict) and "image" not in payload


_schema, _validate = payload_module_hooks(f"{__package__}.payload")


@hookimpl
def megalodon_register_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            name="native",
            factory=_factory,
            summary="generic-worker payloads (insecure posix engine), run on the host",
            payload_schema=_schema,
            accepts=_accepts,
            validate=_validate,
        )
    ]
