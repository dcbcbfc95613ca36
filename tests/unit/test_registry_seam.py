"""The registry seam (registry/): MLflow is imported only when called, and the doctests hold.

That no package but ``registry`` imports MLflow is import-linter's contract (``make lint``);
what it cannot see is *when* an import runs, which is what this file checks.
"""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import registry.client
import registry.tags
from core.settings import REPO_ROOT

#: every module of the seam, and what workers, the API and the CLI import at startup
STARTUP = [
    "registry",
    "registry.tags",
    "registry.client",
    "registry.aliases",
    "registry.loading",
    "registry.watcher",
    "registry.runs",
    "registry.status",
    "registry.scratch",
    "pipeline.kafka_worker",
    "pipeline.embedded",
    "serving.app",
    "cli.main",
    "training.train",
    "training.promotion",
]


def test_importing_the_seam_and_the_entry_points_does_not_import_mlflow():
    """``import mlflow`` costs ~2 s: a worker or the API pays it in the watcher thread or on the
    first ``/models`` request, never at startup."""
    code = (
        "import importlib, sys\n"
        f"for m in {STARTUP!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("module", [registry.tags, registry.client], ids=lambda m: m.__name__)
def test_registry_doctests(module):
    res = doctest.testmod(module)
    assert res.attempted > 0 and res.failed == 0


def test_every_tag_name_is_an_eventops_name():
    names = {k: v for k, v in vars(registry.tags).items() if k.startswith("TAG_")}
    assert names and all(v.startswith("eventops.") for v in names.values())
    assert len(set(names.values())) == len(names), "two constants spell the same tag"
