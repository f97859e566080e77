"""Entry point of megalodon-hello-feature: the ``hello`` feature and its ``helloGreeting`` config key."""

from __future__ import annotations

from typing import Any

from megalodon_core import hookimpl
from megalodon_core.contracts import FeatureInfo


def _factory(worker: Any) -> Any:
    from .feature import HelloFeature

    return HelloFeature(worker)


@hookimpl
def megalodon_register_features() -> list[FeatureInfo]:
    return [FeatureInfo(name="hello", factory=_factory, summary="example: a greeting env var and artifact")]


@hookimpl
def megalodon_config_fields() -> dict[str, tuple[Any, Any]]:
    return {"helloGreeting": (str, "hello")}
