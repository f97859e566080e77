"""The features plugin registers every feature it ships, each importable and named as tasks request it."""

from __future__ import annotations

import importlib

from megalodon_core.contracts import Feature
from megalodon_core.plugins import PluginHost
from megalodon_features.hooks import FEATURES


def test_features_plugin_loads() -> None:
    host = PluginHost()
    record = next(r for r in host.records if r.name == "megalodon-features")
    assert record.status == "loaded", record.error
    assert record.features == [name for name, *_ in FEATURES]


def test_every_registered_feature_is_a_feature_with_its_registered_name() -> None:
    for name, module, cls, summary in FEATURES:
        feature_class = getattr(importlib.import_module(f"megalodon_features.{module}"), cls)
        assert issubclass(feature_class, Feature)
        assert feature_class.name == name
        assert summary
