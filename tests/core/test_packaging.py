"""Every distribution stands alone on a package index page: license file, URLs, classifiers, a README that
says what it is, how to install it with the core, and one example."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ["megalodon-core", "megalodon-native", "megalodon-docker", "megalodon-features"]


def test_repository_has_the_license_the_wheels_declare() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Mozilla Public License Version 2.0" in text


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_distribution_metadata_stands_alone(dist: str) -> None:
    folder = ROOT / "packages" / dist
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MPL-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert (folder / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert project["urls"], "project URLs"
    assert any(c.startswith("Programming Language :: Python :: 3") for c in project["classifiers"])
    # PEP 639: a license expression and a license classifier together are a build error.
    assert not any(c.startswith("License ::") for c in project["classifiers"])
    readme = (folder / project["readme"]).read_text()
    assert "See the repository README" not in readme, "the page must stand alone on a package index"
    assert "pip install megalodon-core" in readme, "how to install it with the core"
    assert "```sh" in readme and "megalodon " in readme, "one example"
