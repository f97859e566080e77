"""``megalodon_core.testing`` as a plugin author meets it: a test suite outside this repository (no conftest,
no pytest configuration, so pytest-asyncio's default strict mode) gets the fixtures from the ``pytest11``
entry point and runs the conformance suite with one fixture."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

THIRD_PARTY_TESTS = textwrap.dedent(
    """
    import pytest

    from megalodon_core.testing import Harness
    from megalodon_core.testing.conformance import ExecutorConformance, ExecutorKit


    @pytest.mark.asyncio
    async def test_harness_fixture_comes_from_the_entry_point(harness: Harness) -> None:
        out = await harness.run({"script": "echo third-party", "maxRunTime": 10}, executor="script")
        assert out.state == "completed", out.log
        assert "third-party" in out.log


    class Kit(ExecutorKit):
        executor = "script"

        def shell(self, script, *, max_run_time=30, features=None, artifacts=()):
            return {"script": script, "maxRunTime": max_run_time, "features": dict(features or {}),
                    "artifacts": [{"name": a.name, "path": a.path} for a in artifacts]}


    @pytest.fixture
    def executor_kit() -> ExecutorKit:
        return Kit()


    class TestKitConformance(ExecutorConformance):
        pass
    """
)


def test_fixtures_and_conformance_suite_work_outside_the_repository(tmp_path: Path) -> None:
    (tmp_path / "test_third_party.py").write_text(THIRD_PARTY_TESTS)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    ]
    selection = ["-k", "entry_point or success_completes or non_zero_exit"]
    command = [*argv, *selection, "test_third_party.py"]
    proc = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "megalodon-core" in proc.stdout  # pytest lists the plugin the entry point registered
    assert "mode=Mode.STRICT" in proc.stdout, proc.stdout  # nothing relied on asyncio auto mode
    assert "4 passed" in proc.stdout, proc.stdout


def test_testing_extra_and_pytest_entry_point_are_declared() -> None:
    """``pip install 'megalodon-core[testing]'`` brings what the fixtures need; pytest finds the plugin."""
    dist = importlib.metadata.distribution("megalodon-core")
    assert "testing" in (dist.metadata.get_all("Provides-Extra") or [])
    extra = [
        r.split(";")[0].replace(" ", "") for r in dist.requires or [] if "extra == 'testing'" in r.replace('"', "'")
    ]
    assert {r.split(">")[0] for r in extra} == {"pytest", "pytest-asyncio"}
    (entry,) = [ep for ep in dist.entry_points if ep.group == "pytest11"]
    assert (entry.name, entry.value) == ("megalodon_core.testing", "megalodon_core.testing")
