"""Development sessions for the megalodon monorepo.

Every session installs the distributions it needs in one pip call (editable installs freeze entry
points, so a session always reinstalls).  `.ci/run` runs `nox -s lint typecheck tests build`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).parent
DISTRIBUTIONS = ["megalodon-core", "megalodon-native", "megalodon-docker", "megalodon-features"]
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.24", "jsonschema>=4.18", "psutil>=5.9"]


def _install_all(session: nox.Session, *extra: str) -> None:
    args: list[str] = []
    for dist in DISTRIBUTIONS:
        args += ["-e", f"packages/{dist}"]
    session.install(*args, *extra)


@nox.session
@nox.parametrize("suite", ["core", "native", "docker", "features", "e2e"])
def tests(session: nox.Session, suite: str) -> None:
    """Run one distribution's test folder (tests/<suite>) against real HTTP and, for docker, a real engine."""
    _install_all(session, *TEST_DEPS)
    session.run("pytest", f"tests/{suite}", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "packages", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "packages", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every distribution's sources."""
    _install_all(session, "mypy>=1.10", "types-PyYAML", *TEST_DEPS)
    session.run("mypy", *[f"packages/{d}/src" for d in DISTRIBUTIONS])


@nox.session
def build(session: nox.Session) -> None:
    """Build every wheel, install them by path in a fresh venv, check list-plugins shows them all."""
    session.install("build>=1.0")
    dist_dir = ROOT / "dist"
    dist_dir.mkdir(exist_ok=True)
    for old in dist_dir.glob("*.whl"):
        old.unlink()
    for dist in DISTRIBUTIONS:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist_dir), f"packages/{dist}")
    wheels = sorted(str(p) for p in dist_dir.glob("*.whl"))
    venv = Path(session.create_tmp()) / "wheelcheck"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "-q", *wheels, external=True)
    out = session.run(str(venv / "bin" / "megalodon"), "list-plugins", "--json", external=True, silent=True)
    records = {r["distribution"]: r for r in json.loads(str(out))}
    for dist in DISTRIBUTIONS[1:]:
        if dist not in records or records[dist]["status"] != "loaded":
            session.error(f"{dist} is not listed as loaded by list-plugins: {records.get(dist)}")
    session.log("wheel check: " + ", ".join(f"{d} {r['version']} {r['status']}" for d, r in records.items()))


@nox.session
def demo(session: nox.Session) -> None:
    """Run the example task end to end on the embedded Taskcluster double."""
    _install_all(session)
    session.run("megalodon", "run-task", *(session.posargs or ["examples/hello.yml"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: per-task overhead, upload memory, log throughput (figures printed, never asserted)."""
    _install_all(session, "psutil>=5.9")
    env = {"MEGALODON_BENCH_QUICK": os.environ.get("MEGALODON_BENCH_QUICK", "")}
    session.run("python", "benchmarks/run.py", *session.posargs, env=env)
