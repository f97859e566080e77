"""The plugin host: entry-point loading, broken plugins, duplicates, hook documentation."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import megalodon_core
from megalodon_core.contracts import ExecutorInfo
from megalodon_core.hookspec import MegalodonSpec
from megalodon_core.plugins import PluginError, PluginHost


def _fake_distribution(site: Path, name: str, module_src: str, module: str) -> None:
    """A real installed distribution (dist-info + entry point) on a private sys.path entry."""
    (site / f"{module}.py").write_text(module_src)
    info = site / f"{name.replace('-', '_')}-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9.9\n")
    (info / "entry_points.txt").write_text(f"[megalodon]\n{name} = {module}\n")


def _megalodon(
    site: Path, *args: str, extra_env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``megalodon *args`` in a fresh interpreter that also sees the distributions installed in ``site``."""
    env = {**os.environ, "PYTHONPATH": str(site), **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "megalodon_core", *args], capture_output=True, text=True, env=env, check=check
    )


def _plugins_by_name(site: Path, extra_env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``megalodon list-plugins --json``'s records, by distribution name."""
    proc = _megalodon(site, "list-plugins", "--json", extra_env=extra_env, check=True)
    return {r["name"]: r for r in json.loads(proc.stdout)}


def test_broken_plugin_is_listed_with_its_error_and_others_still_load(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "broken-plugin", "import does_not_exist_anywhere\n", "broken_plugin_hooks")
    records = _plugins_by_name(tmp_path)
    broken = records["broken-plugin"]
    assert broken["status"] == "failed"
    assert "does_not_exist_anywhere" in broken["error"]
    assert broken["version"] == "9.9.9"
    assert records["megalodon-native"]["status"] == "loaded"
    assert records["megalodon-native"]["executors"] == ["native"]


def test_third_party_executor_is_discovered_through_the_entry_point(tmp_path: Path) -> None:
    src = (
        "from megalodon_core import hookimpl\n"
        "from megalodon_core.contracts import ExecutorInfo\n"
        "@hookimpl\n"
        "def megalodon_register_executors():\n"
        "    return [ExecutorInfo(name='thirdparty', factory=lambda w: None, summary='x',\n"
        "                         payload_schema=lambda: {'type': 'object'})]\n"
    )
    _fake_distribution(tmp_path, "thirdparty-exec", src, "thirdparty_hooks")
    records = _plugins_by_name(tmp_path)
    assert records["thirdparty-exec"]["status"] == "loaded"
    assert records["thirdparty-exec"]["executors"] == ["thirdparty"]
    blocked = _plugins_by_name(tmp_path, {"MEGALODON_BLOCK_PLUGINS": "thirdparty-exec"})
    assert blocked["thirdparty-exec"]["status"] == "blocked"


class _Dup:
    @megalodon_core.hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [ExecutorInfo(name="native", factory=lambda w: None, summary="dup", payload_schema=dict)]  # type: ignore[arg-type,return-value]


def test_duplicate_executor_names_fail_loudly() -> None:
    with pytest.raises(PluginError, match="registered twice"):
        PluginHost(plugins=[_Dup()])


class _Misspelt:
    @megalodon_core.hookimpl
    def megalodon_regster_executors(self) -> list[ExecutorInfo]:
        return []


def test_misspelt_hook_fails_loudly() -> None:
    with pytest.raises(Exception, match="megalodon_regster_executors"):
        PluginHost(load_entry_points=False, plugins=[_Misspelt()])


def test_every_hook_is_documented() -> None:
    hooks = [name for name, _ in inspect.getmembers(MegalodonSpec, inspect.isfunction) if name.startswith("megalodon_")]
    assert hooks
    for name in hooks:
        doc = inspect.getdoc(getattr(MegalodonSpec, name)) or ""
        assert len(doc) > 80, f"hook {name} lacks documentation"
        params = [p for p in inspect.signature(getattr(MegalodonSpec, name)).parameters if p != "self"]
        for param in params:
            assert f":param {param}:" in doc, f"hook {name} does not document {param}"


def test_core_imports_no_plugin() -> None:
    src = Path(megalodon_core.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        for plugin in ("megalodon_native", "megalodon_docker", "megalodon_features"):
            assert f"import {plugin}" not in text and f"from {plugin}" not in text, f"{path} imports {plugin}"


def test_version_is_cheap_and_needs_no_plugins(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "broken-plugin", "raise SystemExit('must not be imported')\n", "broken_hooks2")
    proc = _megalodon(tmp_path, "--version", check=True)
    assert proc.stdout.strip() == f"megalodon {megalodon_core.__version__}"


def test_plugin_can_add_a_cli_command(tmp_path: Path) -> None:
    src = (
        "from megalodon_core import hookimpl\n"
        "from megalodon_core.contracts import CommandInfo\n"
        "def hello(name: str = 'world') -> None:\n"
        "    print(f'hello {name}')\n"
        "@hookimpl\n"
        "def megalodon_cli_commands():\n"
        "    return [CommandInfo(name='say-hello', callback=hello, help='Say hello.')]\n"
    )
    _fake_distribution(tmp_path, "cmd-plugin", src, "cmd_plugin_hooks")
    proc = _megalodon(tmp_path, "say-hello", "--name", "there")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello there"


def test_plugin_whose_registration_hook_raises_is_listed_broken_and_the_rest_works(tmp_path: Path) -> None:
    src = (
        "from megalodon_core import hookimpl\n"
        "@hookimpl\n"
        "def megalodon_register_features():\n"
        "    raise RuntimeError('registration exploded')\n"
    )
    _fake_distribution(tmp_path, "raising-plugin", src, "raising_plugin_hooks")
    records = _plugins_by_name(tmp_path)
    broken = records["raising-plugin"]
    assert broken["status"] == "failed"
    assert broken["error"] == "RuntimeError: registration exploded"
    assert records["megalodon-native"]["status"] == "loaded"
    assert records["megalodon-native"]["executors"] == ["native"]
    # The table form keeps working too.
    proc = _megalodon(tmp_path, "list-plugins", extra_env={"COLUMNS": "300"}, check=True)
    assert "registration exploded" in proc.stdout


def test_registration_hook_returning_a_non_record_is_broken_not_a_crash(tmp_path: Path) -> None:
    src = (
        "from megalodon_core import hookimpl\n"
        "@hookimpl\n"
        "def megalodon_register_executors():\n"
        "    return ['not-a-record']\n"
    )
    _fake_distribution(tmp_path, "wrong-type-plugin", src, "wrong_type_hooks")
    records = _plugins_by_name(tmp_path)
    assert records["wrong-type-plugin"]["status"] == "failed"
    assert "not a ExecutorInfo" in records["wrong-type-plugin"]["error"]


def _executor(name: str) -> ExecutorInfo:
    return ExecutorInfo(name=name, factory=lambda w: None, summary=name, payload_schema=dict, accepts=lambda p: True)  # type: ignore[arg-type,return-value]


class _Early:
    @megalodon_core.hookimpl(tryfirst=True)
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [_executor("early")]


class _Late:
    @megalodon_core.hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [_executor("late")]


class _Last:
    @megalodon_core.hookimpl(trylast=True)
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [_executor("last")]


def test_hooks_are_called_through_pluggy_so_order_markers_count() -> None:
    # Registered early, late, last: pluggy calls tryfirst first, then last-registered first, trylast last.
    host = PluginHost(load_entry_points=False, plugins=[_Last(), _Early(), _Late()])
    assert list(host.executors) == ["early", "late", "last"]
    assert host.executor_for_payload({}) is host.executors["early"]


class _Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    @megalodon_core.hookimpl
    def megalodon_running_changed(self, running: int) -> None:
        self.seen.append(("running", running))

    @megalodon_core.hookimpl
    def megalodon_task_resolved(self, state: str, reason: str, duration: float | None) -> None:
        self.seen.append(("resolved", (state, reason, duration)))


class _RaisingObserver:
    @megalodon_core.hookimpl
    def megalodon_running_changed(self, running: int) -> None:
        raise RuntimeError("observer bug")


def test_lifecycle_hooks_reach_plugins_and_a_raising_observer_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    observer = _Observer()
    # The raising one is registered first, so pluggy calls it last: the other still sees the call.
    host = PluginHost(load_entry_points=False, plugins=[_RaisingObserver(), observer])
    host.running_changed(running=3)
    host.task_resolved(task_id="t", run_id=0, state="failed", reason="failed", duration=1.5)
    assert observer.seen == [("running", 3), ("resolved", ("failed", "failed", 1.5))]
    assert "megalodon_running_changed raised" in caplog.text


def test_third_party_executor_loaded_before_native_still_gets_the_payloads_it_accepts(tmp_path: Path) -> None:
    # "aaa-..." sorts before "megalodon-native", so native registers later; it registers trylast.
    src = (
        "from megalodon_core import hookimpl\n"
        "from megalodon_core.contracts import ExecutorInfo\n"
        "@hookimpl\n"
        "def megalodon_register_executors():\n"
        "    return [ExecutorInfo(name='recipe', factory=lambda w: None, summary='x', payload_schema=dict,\n"
        "                         accepts=lambda p: isinstance(p, dict) and 'recipe' in p, validate=lambda p: [])]\n"
    )
    _fake_distribution(tmp_path, "aaa-recipe", src, "aaa_recipe_hooks")
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"recipe": "x", "maxRunTime": 30}))  # native's predicate accepts it too
    proc = _megalodon(tmp_path, "validate-payload", str(payload))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "valid recipe payload"
