"""``megalodon --help`` lists plugin commands by name and help without importing them; they still run.

Plugins declare a command's callback as ``"package.module:function"``; the CLI builds the command line from
the plugins' ``megalodon_cli_commands`` alone (a commands-only plugin host) and imports the target only
when the command runs, with its own options and ``--help``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megalodon_core.contracts import CommandInfo
from megalodon_core.plugins import PluginHost

from .test_plugins import _fake_distribution, _megalodon, _plugins_by_name

#: A plugin whose command lives in a module of its own, imported only when the command runs.
_HOOKS = (
    "from megalodon_core import hookimpl\n"
    "from megalodon_core.contracts import CommandInfo\n"
    "@hookimpl\n"
    "def megalodon_cli_commands():\n"
    "    return [CommandInfo(name='say-hello', callback='lazy_cmd_impl:hello', help='Say hello to someone.')]\n"
)
_IMPL = (
    "from typing import Annotated\n"
    "import typer\n"
    "def hello(name: Annotated[str, typer.Option('--name', help='Whom to greet.')] = 'world') -> None:\n"
    "    '''Say hello.'''\n"
    "    if name == 'nobody':\n"
    "        raise typer.Exit(7)\n"
    "    print(f'hello {name}')\n"
)

#: Run ``megalodon --help`` in this interpreter, then print which modules it had imported.
_MODULES_AFTER_HELP = """
import json, sys
sys.argv = ["megalodon", "--help"]
from megalodon_core.entry import main
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("\\n--modules--\\n" + json.dumps(sorted(sys.modules)))
"""


def _lazy_plugin(site: Path) -> None:
    _fake_distribution(site, "lazy-cmd-plugin", _HOOKS, "lazy_cmd_hooks")
    (site / "lazy_cmd_impl.py").write_text(_IMPL)


def test_help_lists_plugin_commands_and_imports_no_plugin_implementation(tmp_path: Path) -> None:
    _lazy_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER_HELP], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    help_text, _, modules_json = proc.stdout.partition("\n--modules--\n")
    modules = set(json.loads(modules_json))
    # Listed with the help they declared: the third party's and megalodon-features' own.
    assert "say-hello" in help_text and "Say hello to someone." in help_text
    assert "new-ed25519-keypair" in help_text and "chain-of-trust signing key" in help_text
    # The plugins' light hooks modules were asked; nothing they declare or register was imported.
    assert {"lazy_cmd_hooks", "megalodon_features.hooks", "megalodon_native.hooks"} <= modules
    plugin_impls = sorted(
        m
        for m in modules
        if m.split(".")[0] in ("megalodon_native", "megalodon_docker", "megalodon_features")
        and m.partition(".")[2] not in ("", "hooks")
    )
    assert plugin_impls == []
    heavy = {"lazy_cmd_impl", "cryptography", "pydantic", "megalodon_core.payloads", "megalodon_core.pipeline"}
    assert heavy & modules == set()


def test_deferred_command_runs_with_its_options_help_and_exit_code(tmp_path: Path) -> None:
    _lazy_plugin(tmp_path)
    ran = _megalodon(tmp_path, "say-hello", "--name", "there")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hello there"
    assert _megalodon(tmp_path, "say-hello").stdout.strip() == "hello world"
    # Its own --help: the command's options, under the full command path.
    helped = _megalodon(tmp_path, "say-hello", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "say-hello [OPTIONS]" in helped.stdout and "--name" in helped.stdout and "Whom to greet." in helped.stdout
    # typer.Exit codes and click's usage errors end the process as a core command's do.
    assert _megalodon(tmp_path, "say-hello", "--name", "nobody").returncode == 7
    bad = _megalodon(tmp_path, "say-hello", "--nmae", "x")
    assert bad.returncode == 2
    assert "No such option: --nmae" in bad.stderr


def test_real_plugin_command_runs_deferred(tmp_path: Path) -> None:
    helped = _megalodon(tmp_path, "new-ed25519-keypair", "--help", check=True)
    assert "--file" in helped.stdout
    key = tmp_path / "signing.key"
    made = _megalodon(tmp_path, "new-ed25519-keypair", "--file", str(key), check=True)
    assert key.stat().st_size > 0 and len(made.stdout.strip()) == 44  # base64 of a 32-byte public key


def test_malformed_command_target_makes_the_plugin_broken_not_the_cli(tmp_path: Path) -> None:
    src = _HOOKS.replace("'lazy_cmd_impl:hello'", "'lazy_cmd_impl.hello'")
    _fake_distribution(tmp_path, "bad-target-plugin", src, "bad_target_hooks")
    helped = _megalodon(tmp_path, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "list-plugins" in helped.stdout and "say-hello" not in helped.stdout
    broken = _plugins_by_name(tmp_path)["bad-target-plugin"]
    assert broken["status"] == "failed"
    assert "not 'package.module:function'" in broken["error"]


def test_help_survives_a_plugin_that_fails_to_import(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "broken-plugin", "import does_not_exist_anywhere\n", "broken_help_hooks")
    helped = _megalodon(tmp_path, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "new-ed25519-keypair" in helped.stdout
    assert _plugins_by_name(tmp_path)["broken-plugin"]["status"] == "failed"


def test_command_info_loads_its_target_and_accepts_a_callable() -> None:
    by_name = CommandInfo(name="x", callback="json:dumps", help="")
    assert by_name.load() is json.dumps
    assert CommandInfo(name="y", callback=json.loads, help="").load() is json.loads
    with pytest.raises(ValueError, match=r"package\.module:function"):
        CommandInfo(name="z", callback="json", help="")


def test_commands_only_host_refuses_questions_it_cannot_answer() -> None:
    host = PluginHost(commands_only=True)
    assert "new-ed25519-keypair" in [c.name for c in host.commands()]
    with pytest.raises(RuntimeError, match="CLI commands only"):
        host.executors  # noqa: B018 - the property access is the test
    with pytest.raises(RuntimeError, match="CLI commands only"):
        host.config_fields()
