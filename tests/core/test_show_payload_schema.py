"""``megalodon show-payload-schema`` prints the schema the peer publishes, for the engine the worker runs.

generic-worker is one binary per engine and prints that engine's ``JSONSchema()`` (the official YAML through
Go's ``json.MarshalIndent``); megalodon's native executor serves both engines, so ``--engine`` or the worker
config's ``nativeEngine`` picks one.  The docker executor prints docker-worker's published ``payload.yml``.
The package data are checked against the reference copies in ``../shared/reference/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megalodon_core.payloads import PublishedSchemas, SchemaStyle, render_published_schema

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
MEGALODON = [sys.executable, "-m", "megalodon_core"]


def megalodon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEGALODON, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "worker.json"
    base = {"rootURL": "http://127.0.0.1:1", "clientId": "c", "accessToken": "a", "workerId": "w", "workerType": "t"}
    path.write_text(json.dumps(base | extra))
    return path


def test_native_prints_generic_workers_published_schema_per_engine(tmp_path: Path) -> None:
    insecure = (REFERENCE / "generic-worker" / "insecure_posix.yml").read_text()
    multiuser = (REFERENCE / "generic-worker" / "multiuser_posix.yml").read_text()

    default = megalodon("show-payload-schema", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    # generic-worker's text (sorted keys, escaped <>), not the pydantic model's export
    assert default.stdout.startswith('{\n  "$id": "/schemas/generic-worker/insecure_posix.json#"')
    assert "$defs" not in default.stdout and "\\u003cartifact-name\\u003e" in default.stdout
    assert json.loads(default.stdout) == yaml.safe_load(insecure)

    chosen = megalodon("show-payload-schema", "--executor", "native", "--engine", "multiuser", cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout) == yaml.safe_load(multiuser)

    # the configured engine, as the worker that reads this config would validate payloads
    config = _config(tmp_path, executor="native", nativeEngine="multiuser")
    configured = megalodon("show-payload-schema", "--config", str(config), cwd=tmp_path)
    assert configured.returncode == 0, configured.stderr
    assert configured.stdout == chosen.stdout
    # an explicit --engine wins over the config
    overridden = megalodon("show-payload-schema", "--config", str(config), "--engine", "insecure", cwd=tmp_path)
    assert overridden.stdout == default.stdout


def test_docker_prints_docker_workers_published_schema(tmp_path: Path) -> None:
    proc = megalodon("show-payload-schema", "--executor", "docker", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    published = yaml.safe_load((REFERENCE / "docker-worker" / "payload.yml").read_text())
    assert json.loads(proc.stdout) == published
    # the YAML's own key order, as the services serve it (JSON.stringify), not sorted
    assert proc.stdout.startswith('{\n  "$schema": "http://json-schema.org/draft-06/schema#",\n  "$id"')
    config = _config(tmp_path, executor="docker")
    assert megalodon("show-payload-schema", "--config", str(config), cwd=tmp_path).stdout == proc.stdout


def test_unknown_engine_or_executor_is_a_clear_error(tmp_path: Path) -> None:
    bad_engine = megalodon("show-payload-schema", "--engine", "windows", cwd=tmp_path)
    assert bad_engine.returncode == 2
    assert "Executor 'native' has no engine 'windows' (engines: insecure, multiuser)" in bad_engine.stderr
    assert "Traceback" not in bad_engine.stderr
    docker_engine = megalodon("show-payload-schema", "--executor", "docker", "--engine", "multiuser", cwd=tmp_path)
    assert docker_engine.returncode == 2 and "no engine 'multiuser'" in docker_engine.stderr
    bad_config = tmp_path / "bad.json"
    bad_config.write_text("{")
    assert megalodon("show-payload-schema", "--config", str(bad_config), cwd=tmp_path).returncode == 64


@pytest.mark.parametrize(
    ("package", "resource", "reference"),
    [
        ("megalodon_native", "schemas/insecure_posix.yml", "generic-worker/insecure_posix.yml"),
        ("megalodon_native", "schemas/multiuser_posix.yml", "generic-worker/multiuser_posix.yml"),
        ("megalodon_docker", "schemas/payload.yml", "docker-worker/payload.yml"),
    ],
)
def test_package_data_is_the_reference_schema(package: str, resource: str, reference: str) -> None:
    styles: tuple[SchemaStyle, ...] = ("go", "node")
    for style in styles:
        text = render_published_schema(package, resource, style)
        assert json.loads(text) == yaml.safe_load((REFERENCE / reference).read_text())


def test_published_schemas_default_is_the_first_engine() -> None:
    schemas = PublishedSchemas(package="megalodon_native", files={"insecure": "schemas/insecure_posix.yml"}, style="go")
    assert schemas.default_engine == "insecure"
    assert schemas.text() == schemas.text("insecure")
    with pytest.raises(KeyError):
        schemas.text("multiuser")
    with pytest.raises(ValueError, match="at least one file"):
        PublishedSchemas(package="megalodon_native", files={}, style="go")
