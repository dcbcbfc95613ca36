"""Where MLflow lives: tracking URI, the client, experiments, MLflow's errors and retries.

The tracking/registry store is the project's PostgreSQL (database ``Settings.mlflow_database``,
``postgresql+psycopg://``), unless the entry point passes an override -- typically the value of
``MLFLOW_TRACKING_URI`` (compose sets ``http://mlflow:5000``).  Only entry points read the
environment; library code receives the override as an argument.

Artifacts: with a database URI every experiment gets an explicit artifact location under
``Settings.mlflow_artifacts`` (``mlruns/`` by default; MLflow's implicit default would be
``./mlartifacts`` relative to the current directory).  With an ``http(s)://`` tracking server
the server decides (``--artifacts-destination``), so experiments are created without one.

This module imports MLflow lazily (``import mlflow`` costs ~2 s), as does every module of
``registry``: importing them is free for a worker or the API at startup.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "HTTP_RETRY_DEFAULTS",
    "ML_EXPERIMENT_TAGS",
    "artifact_location",
    "client",
    "ensure_experiment",
    "installed",
    "is_missing",
    "is_server_uri",
    "limit_sql_retries",
    "resolve_tracking_uri",
    "use",
]

log = logging.getLogger(__name__)

#: Experiment that ``eventops train`` and the notebooks log to.
DEFAULT_EXPERIMENT = "eventops-detector"

#: Tags of every experiment we create: MLflow 3's UI opens an experiment of kind
#: ``custom_model_development`` on its runs table (model training), not on the GenAI views.
ML_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

#: MLflow's HTTP client defaults retry a refused connection 7 times with backoff factor 2
#: (minutes); an entry point sets these in its environment unless the environment does.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def installed() -> bool:
    """True when the ``mlflow`` package can be imported (without importing it)."""
    return importlib.util.find_spec("mlflow") is not None


def resolve_tracking_uri(settings: Settings, override: str | None = None) -> str:
    """The tracking (and registry) URI: ``override`` when given and non-empty, else Postgres.

    >>> resolve_tracking_uri(Settings(), "http://mlflow:5000")
    'http://mlflow:5000'
    >>> resolve_tracking_uri(Settings()).startswith("postgresql+psycopg://")
    True
    """
    if override is not None and override.strip():
        return override.strip()
    return settings.mlflow_tracking_uri()


def is_server_uri(uri: str) -> bool:
    """True for an MLflow tracking *server* (``http(s)://``), false for a database store.

    >>> is_server_uri("http://mlflow:5000"), is_server_uri("postgresql+psycopg://h/mlflow")
    (True, False)
    """
    return uri.startswith(("http://", "https://"))


def artifact_location(settings: Settings, experiment: str, uri: str) -> str | None:
    """Explicit artifact location of ``experiment`` (``None`` = let the tracking server decide)."""
    if is_server_uri(uri):
        return None
    return (Path(settings.mlflow_artifacts).resolve() / experiment).as_uri()


def client(settings: Settings, override: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` bound to the tracking *and* registry URI (no global state touched)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(settings, override)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use(settings: Settings, override: str | None = None) -> str:
    """Point MLflow's fluent API (``mlflow.start_run`` …) at our store; returns the URI."""
    import mlflow

    uri = resolve_tracking_uri(settings, override)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def is_missing(exc: Exception) -> bool:
    """True when an ``MlflowException`` says the model, version or alias does not exist."""
    code = getattr(exc, "error_code", "")
    # a missing model is RESOURCE_DOES_NOT_EXIST; a missing alias is INVALID_PARAMETER_VALUE
    # ("Registered model alias champion not found.") in MLflow 3.17
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()
    )


def ensure_experiment(
    settings: Settings, name: str = DEFAULT_EXPERIMENT, override: str | None = None
) -> str:
    """Id of experiment ``name``, created with an explicit artifact location when missing.

    Raises ``ValueError`` when an existing experiment stores its artifacts somewhere else than
    this configuration would (a store shared by two checkouts, say) -- better than writing models
    nobody can find.
    """
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(settings, override)
    c = client(settings, override)
    want = artifact_location(settings, name, uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=want, tags=ML_EXPERIMENT_TAGS)
        except MlflowException:  # created concurrently
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    for k, v in ML_EXPERIMENT_TAGS.items():  # experiments created before the tag existed
        if exp.tags.get(k) is None:
            c.set_experiment_tag(exp.experiment_id, k, v)
    if want is not None and exp.artifact_location.rstrip("/") != want.rstrip("/"):
        raise ValueError(
            f"experiment {name!r} stores artifacts at {exp.artifact_location}, expected {want}; "
            "use another experiment name or EVENTOPS_MLFLOW_ARTIFACTS"
        )
    return exp.experiment_id


def limit_sql_retries(max_retries: int = 3) -> None:
    """Bound the SQL store's connection retries for a store that goes away mid-command.

    MLflow 3.17 retries a refused connection ten times with exponential backoff (~100 s) and has
    no setting for it; it reads the module constant on each attempt, so lowering it here takes
    effect.  Call it from an entry point (it imports MLflow's SQL store).
    """
    try:
        import mlflow.store.db.utils as sql_store
    except ImportError:  # pragma: no cover - MLflow without its SQL store
        return
    if isinstance(getattr(sql_store, "MAX_RETRY_COUNT", None), int):
        sql_store.MAX_RETRY_COUNT = min(sql_store.MAX_RETRY_COUNT, max_retries)
