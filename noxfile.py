"""Development sessions for the megalodon monorepo.

`lint`, `typecheck` and the `tests` sessions run in the environment nox itself runs in (`./dev` creates it as
`.venv` with every distribution installed editable and every tool below, in one pip call, and skips that call
when nothing changed): a nox session per venv reinstalled everything for each of the five test suites and
made CI spend most of its time in pip.  `build` keeps a fresh venv of its own: it checks that the built wheels
install by path.  `.ci/run` runs `nox -s lint typecheck tests build`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).parent
DISTRIBUTIONS = ["megalodon-core", "megalodon-native", "megalodon-docker", "megalodon-features"]
#: Third-party plugin examples (their own distributions), installed and tested with the rest.
EXAMPLES = ["megalodon-script", "megalodon-hello-feature"]
#: The development environment's tools and test dependencies (also what `./dev` installs).
DEV_REQUIREMENTS = [
    line.strip()
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def _install_all(session: nox.Session, *extra: str) -> None:
    args: list[str] = []
    for dist in DISTRIBUTIONS:
        args += ["-e", f"packages/{dist}"]
    for example in EXAMPLES:
        args += ["-e", f"examples/{example}"]
    session.install(*args, *extra)


def _require_dev_env(session: nox.Session, *modules: str) -> None:
    """Sessions without a venv of their own need the `./dev` environment: say so instead of failing obscurely."""
    missing = [m for m in ("megalodon_core", *modules) if importlib.util.find_spec(m) is None]
    if missing:
        session.error(f"{', '.join(missing)} not importable by {sys.executable}: run nox through ./dev (./dev nox ...)")


@nox.session(venv_backend="none")
@nox.parametrize("suite", ["core", "native", "docker", "features", "e2e", "examples"])
def tests(session: nox.Session, suite: str) -> None:
    """Run one distribution's test folder (tests/<suite>) against real HTTP and, for docker, a real engine."""
    _require_dev_env(session, "pytest", "pytest_asyncio", "hypothesis")
    session.run(sys.executable, "-m", "pytest", f"tests/{suite}", *session.posargs)


#: podman's Docker-compatible service, as .ci/podman-setup.sh starts it (MEGALODON_PODMAN_HOST overrides).
PODMAN_HOST = os.environ.get("MEGALODON_PODMAN_HOST", "unix:///run/megalodon-podman/podman.sock")
#: The part of the docker suite the podman lane runs against podman: image from a tarball and from the
#: local registry, artifacts, caches, maxRunTime, the proxy.
PODMAN_DOCKER_TESTS = [
    "tests/docker/test_executor.py::test_hello_log_format_env_and_container_settings",
    "tests/docker/test_executor.py::test_artifact_images_from_the_double",
    "tests/docker/test_executor.py::test_registry_image_pulled_only_when_absent_with_private_credentials",
    "tests/docker/test_executor.py::test_artifacts_file_directory_volume_and_errors",
    "tests/docker/test_executor.py::test_cache_reused_across_tasks_and_purged_on_exit_status",
    "tests/docker/test_executor.py::test_max_run_time_kills_container_and_skips_artifacts",
    "tests/docker/test_proxy_in_container.py",
    "tests/docker/test_pull_policy.py::test_always_on_the_shared_registry_image",
]


@nox.session(venv_backend="none")
def podman(session: nox.Session) -> None:
    """The docker executor on podman's Docker-compatible API (.ci/podman-setup.sh): part of the docker suite
    with DOCKER_HOST on podman's socket, plus tests/podman (dockerConfig.host, podman's differences)."""
    _require_dev_env(session, "pytest", "pytest_asyncio")
    env = {"DOCKER_HOST": PODMAN_HOST, "MEGALODON_PODMAN_HOST": PODMAN_HOST}
    session.run(sys.executable, "-m", "pytest", *PODMAN_DOCKER_TESTS, "tests/podman", *session.posargs, env=env)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    _require_dev_env(session, "ruff")
    paths = ["packages", "examples", "tests", "benchmarks", "noxfile.py"]
    session.run(sys.executable, "-m", "ruff", "check", *paths)
    session.run(sys.executable, "-m", "ruff", "format", "--check", *paths)


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every distribution's sources."""
    _require_dev_env(session, "mypy")
    sources = [f"packages/{d}/src" for d in DISTRIBUTIONS] + [f"examples/{e}/src" for e in EXAMPLES]
    session.run(sys.executable, "-m", "mypy", *sources)


@nox.session
def build(session: nox.Session) -> None:
    """Build every wheel (and the examples), install them by path in a fresh venv, check list-plugins shows them."""
    session.install("build>=1.0")
    dist_dir = ROOT / "dist"
    dist_dir.mkdir(exist_ok=True)
    for old in dist_dir.glob("*.whl"):
        old.unlink()
    for dist in DISTRIBUTIONS:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist_dir), f"packages/{dist}")
    # The third-party examples build and install the same way, apart from the release wheels.
    example_dir = dist_dir / "examples"
    example_dir.mkdir(exist_ok=True)
    for old in example_dir.glob("*.whl"):
        old.unlink()
    for example in EXAMPLES:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(example_dir), f"examples/{example}")
    wheels = sorted(str(p) for p in [*dist_dir.glob("*.whl"), *example_dir.glob("*.whl")])
    venv = Path(session.create_tmp()) / "wheelcheck"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "-q", *wheels, external=True)
    out = session.run(str(venv / "bin" / "megalodon"), "list-plugins", "--json", external=True, silent=True)
    records = {r["distribution"]: r for r in json.loads(str(out))}
    for dist in DISTRIBUTIONS[1:] + EXAMPLES:
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
    _install_all(session, *DEV_REQUIREMENTS)
    env = {"MEGALODON_BENCH_QUICK": os.environ.get("MEGALODON_BENCH_QUICK", "")}
    session.run("python", "benchmarks/run.py", *session.posargs, env=env)
