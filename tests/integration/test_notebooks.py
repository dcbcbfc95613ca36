"""The notebooks run top to bottom against the stack's PostgreSQL, on a small data set.

Each notebook gets the venv's kernel, a private MLflow database (template copy) and a temporary
artifact root, through the environment variables its first cell reads.
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


def _env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({
        "EVENTOPS_PG_HOST": s.pg_host, "EVENTOPS_PG_PORT": str(s.pg_port),
        "EVENTOPS_PG_USER": s.pg_user, "EVENTOPS_PG_PASSWORD": s.pg_password.get_secret_value(),
        "EVENTOPS_MLFLOW_DATABASE": s.mlflow_database,
        "EVENTOPS_MLFLOW_ARTIFACTS": str(s.mlflow_artifacts),
        "EVENTOPS_MODEL_NAME": f"nb-{uuid.uuid4().hex[:8]}",
        "EVENTOPS_NB_SOURCE": "csv",
        "EVENTOPS_NB_CSV": str(nab_dir() / "data" / "artificialWithAnomaly"),
        "EVENTOPS_NB_WINDOWS": str(nab_dir() / "windows.json"),
        "EVENTOPS_NB_INJECT": "2",
        "PYTHONPATH": str(REPO_ROOT),
    })  # fmt: skip
    return env


@pytest.mark.parametrize("name", ["01_explore.ipynb", "02_train_and_promote.ipynb"])
def test_notebook_runs_top_to_bottom(name: str, nb_store: Settings):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "strip outputs"
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )  # fmt: skip
    client.execute(env=_env(nb_store))
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
