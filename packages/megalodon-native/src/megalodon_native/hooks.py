"""Entry point of megalodon-native: registers the ``native`` executor (imported only when used)."""

from __future__ import annotations

from typing import Any

from megalodon_core import hookimpl
from megalodon_core.contracts import ExecutorInfo


def _factory(worker: Any) -> Any:
    from .executor import NativeExecutor

    return NativeExecutor(worker)


def _schema() -> dict[str, Any]:
    from .payload import payload_json_schema

    return payload_json_schema()


def _validate(payload: Any) -> list[tuple[str, str]]:
    from .payload import PayloadError, validate_payload

    try:
        validate_payload(payload)
    except PayloadError as exc:
        return list(exc.errors)
    return []


def _accepts(payload: Any) -> bool:
    # generic-worker's rule: a payload with a top-level ``image`` is a docker-worker payload.
    return isinstance(payload, dict) and "image" not in payload


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
