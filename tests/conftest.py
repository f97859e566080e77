"""Root conftest: the core's reusable fixtures (the Taskcluster double, the worker harness)."""

pytest_plugins = ["megalodon_core.testing"]
