"""The notebooks run top to bottom against the stack's PostgreSQL, on a small data set.

Each notebook gets the venv's kernel, a private MLflow database (template copy), a temporary
artifact root and a directory for its figures, through the ``EVENTOPS_NB_*`` variables that
override its parameters cell. The figures are kept as test output (their paths are printed).
"""

from __future__ import annotations

import os
import uuid

import pytest

from core.settings import REPO_ROOT, Settings
from tests.integration.conftest import nab_dir

pytestmark = pytest.mark.integration

NOTEBOOKS = REPO_ROOT / "notebooks"


@pytest.fixture(scope="module")
def nb_store(base_settings: Settings, tmp_path_factory):
    from registry import scratch

    s = scratch.create_scratch_store(base_settings, prefix="mlflow_nb")
    s = s.model_copy(update={"mlflow_artifacts": tmp_path_factory.mktemp("nb-mlruns")})
    yield s
    scratch.drop_scratch_store(s)


@pytest.fixture(scope="module")
def nb_data(tmp_path_factory):
    """Three of the generated labelled series (enough for a split and injected anomalies)."""
    import shutil

    src = nab_dir() / "data" / "artificialWithAnomaly"
    dst = tmp_path_factory.mktemp("nb-data")
    for f in sorted(src.glob("*.csv"))[:3]:
        shutil.copy(f, dst / f.name)
    return dst


EXPECTED = {
    "01_explore.ipynb": ["01_series.png", "01_distributions.png", "01_missed.png"],
    "02_train_and_promote.ipynb": ["02_pr_curve.png", "02_alerts_per_day.png", "replay.png"],
}


def _env(s: Settings, data, out) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({
        "EVENTOPS_PG_HOST": s.pg_host, "EVENTOPS_PG_PORT": str(s.pg_port),
        "EVENTOPS_PG_USER": s.pg_user, "EVENTOPS_PG_PASSWORD": s.pg_password.get_secret_value(),
        "EVENTOPS_MLFLOW_DATABASE": s.mlflow_database,
        "EVENTOPS_MLFLOW_ARTIFACTS": str(s.mlflow_artifacts),
        "EVENTOPS_MODEL_NAME": f"nb-{uuid.uuid4().hex[:8]}",
        "EVENTOPS_NB_SOURCE": "csv",
        "EVENTOPS_NB_CSV": str(data),
        "EVENTOPS_NB_TENANT": "nb",
        "EVENTOPS_NB_INJECT": "2",
        "EVENTOPS_NB_PROMOTE": "false",
        "EVENTOPS_NB_OUT": str(out),
        "PYTHONPATH": str(REPO_ROOT),
    })  # fmt: skip
    return env


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_top_to_bottom(name: str, nb_store: Settings, nb_data, tmp_path_factory):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "strip outputs"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "parameters cell"
    out = tmp_path_factory.mktemp(name.split("_")[0] + "-figures")
    env = _env(nb_store, nb_data, out)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )  # fmt: skip
    client.execute(env=env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for png in EXPECTED[name]:
        p = out / png
        assert p.exists() and p.stat().st_size > 5_000, p
        print("figure:", p)
    if name.startswith("02"):
        from registry.aliases import alias_version
        from registry.client import client as mlflow_client
        from registry.names import tenant_model

        s = nb_store.model_copy(update={"model_name": env["EVENTOPS_MODEL_NAME"]})
        c = mlflow_client(s)
        name_ = tenant_model(s, "nb")
        assert c.search_model_versions(f"name = '{name_}'"), "the candidate is registered"
        assert alias_version(c, name_, "champion") is None  # PROMOTE is false: no alias moved
