"""One version string: ``core.__version__``, read by pyproject, reported by the API and the CLI."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.version import Version
from typer.testing import CliRunner

from core import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_a_pep440_version():
    assert str(Version(__version__)) == __version__


def test_pyproject_reads_the_version_from_core_and_writes_none_of_its_own():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "core.__version__"}


def test_the_installed_distribution_has_the_same_version():
    # a mismatch means the editable install is older than core/__init__.py: `make venv`
    assert importlib.metadata.version("eventops") == __version__


def test_the_api_reports_the_version():
    from core.settings import Settings
    from serving.app import create_app

    app = create_app(Settings())
    assert app.version == __version__
    assert app.openapi()["info"]["version"] == __version__


def test_eventops_version_prints_it_and_exits_0():
    from cli.main import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"eventops {__version__}"
