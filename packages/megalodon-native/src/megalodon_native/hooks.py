"""Entry point of megalodon-native: registers the ``native`` executor (imported only when used).

Config key ``nativeEngine`` picks generic-worker's engine: ``insecure`` (default; tasks run as the worker's
own user) or ``multiuser`` (a fresh OS user per task, see :mod:`megalodon_native.multiuser`, whose executor's
``initialise`` carries the engine's start-up checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from megalodon_core import hookimpl
from megalodon_core.contracts import ExecutorInfo, payload_module_hooks

if TYPE_CHECKING:
    from megalodon_core.payloads import PublishedSchemas

# Nothing heavier at import: ``megalodon --help`` imports this module to ask for CLI commands only, so the
# payload schema module (pydantic) and the process module are imported inside the hooks that use them.


def _factory(worker: Any) -> Any:
    if worker.config.extra("nativeEngine", "insecure") == "multiuser":
        from .multiuser import MultiuserExecutor

        return MultiuserExecutor(worker)
    from .executor import NativeExecutor

    return NativeExecutor(worker)


_schema, _validate = payload_module_hooks(f"{__package__}.payload")


def _published_schemas() -> PublishedSchemas:
    """generic-worker's published schemas, one per engine (each of its binaries prints its own engine's)."""
    from megalodon_core.payloads import PublishedSchemas

    return PublishedSchemas(
        package=__package__ or "megalodon_native",
        files={"insecure": "schemas/insecure_posix.yml", "multiuser": "schemas/multiuser_posix.yml"},
        style="go",
        engine_key="nativeEngine",
    )


def _accepts(payload: Any) -> bool:
    # A generic-worker payload: it has ``command`` or ``maxRunTime`` (its required keys), and no top-level
    # ``image`` (generic-worker's d2g rule: that one is a docker-worker payload).  A third-party payload
    # without those keys is not taken, whatever order the plugins load in.
    return isinstance(payload, dict) and "image" not in payload and ("command" in payload or "maxRunTime" in payload)


# trylast: a third-party executor that accepts a payload takes precedence over megalodon's own.
@hookimpl(trylast=True)
def megalodon_register_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            name="native",
            factory=_factory,
            summary="generic-worker payloads (insecure or multiuser posix engine, config nativeEngine)",
            payload_schema=_schema,
            accepts=_accepts,
            validate=_validate,
            published_schemas=_published_schemas(),
        )
    ]


@hookimpl
def megalodon_config_fields() -> dict[str, tuple[Any, Any]]:
    from megalodon_core.process import MEMORY_LIMIT_FIELD, MEMORY_LIMIT_KEY

    return {
        # which generic-worker engine native payloads run under
        "nativeEngine": (Literal["insecure", "multiuser"], "insecure"),
        # path of this worker's config file, checked to be unreadable by task users (multiuser engine)
        "workerConfigFile": (str, ""),
        # optional per-task memory limit in MiB, enforced by the task's cgroup (0: none)
        MEMORY_LIMIT_KEY: MEMORY_LIMIT_FIELD,
    }
