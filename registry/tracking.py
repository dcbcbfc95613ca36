"""Where MLflow lives: tracking URI, experiment artifact locations, scratch stores for tests.

The tracking/registry store is the project's PostgreSQL (database ``Settings.mlflow_database``,
``postgresql+psycopg://``), unless the entry point passes an override -- typically the value of
``MLFLOW_TRACKING_URI`` (compose sets ``http://mlflow:5000``).  Only entry points read the
environment; library code receives the override as an argument.

Artifacts: with a database URI every experiment gets an explicit artifact location under
``Settings.mlflow_artifacts`` (``mlruns/`` by default; MLflow's implicit default would be
``./mlartifacts`` relative to the current directory).  With an ``http(s)://`` tracking server
the server decides (``--artifacts-destination``), so experiments are created without one.

This module imports MLflow lazily (``import mlflow`` costs ~2 s).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "client",
    "create_scratch_store",
    "drop_scratch_store",
    "ensure_experiment",
    "is_server_uri",
    "resolve_tracking_uri",
    "use",
]

log = logging.getLogger(__name__)

#: Experiment that ``eventops train`` and the notebooks log to.
DEFAULT_EXPERIMENT = "eventops-detector"


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
    """True for an MLflow tracking *server* (``http(s)://``), false for a database store."""
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
            return c.create_experiment(name, artifact_location=want)
        except MlflowException:  # created concurrently
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if want is not None and exp.artifact_location.rstrip("/") != want.rstrip("/"):
        raise ValueError(
            f"experiment {name!r} stores artifacts at {exp.artifact_location}, expected {want}; "
            "use another experiment name or EVENTOPS_MLFLOW_ARTIFACTS"
        )
    return exp.experiment_id


# --- scratch stores (tests, notebooks in CI, benchmarks) ---------------------------------------


def _template_name() -> str:
    import importlib.metadata as md

    v = md.version("mlflow")
    return f"mlflow_template_{hashlib.sha1(v.encode()).hexdigest()[:8]}"


def _ensure_template(settings: Settings) -> str:
    """A database with MLflow's schema fully migrated, created once per MLflow version.

    The ~68 schema migrations take 2-3 s; copying the template takes ~80 ms.
    """
    import psycopg

    name = _template_name()
    with psycopg.connect(settings.pg_dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(727275)")
        try:
            row = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            ready = row is not None and admin.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (name,),
            ).fetchone()[0] == "migrated"
            if not ready:
                if row is not None:
                    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                admin.execute(f'CREATE DATABASE "{name}"')
                _migrate(settings.model_copy(update={"mlflow_database": name}))
                admin.execute(f"COMMENT ON DATABASE \"{name}\" IS 'migrated'")
        finally:
            admin.execute("SELECT pg_advisory_unlock(727275)")
    return name


def _migrate(settings: Settings) -> None:
    """Create MLflow's schema in ``settings.mlflow_database`` and close every connection."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(settings.mlflow_tracking_uri(), str(settings.mlflow_artifacts))
    store.engine.dispose()


def create_scratch_store(settings: Settings, prefix: str = "mlflow_test") -> Settings:
    """A fresh, migrated MLflow database (``<prefix>_<uuid>``); returns settings pointing at it.

    Made by ``CREATE DATABASE … TEMPLATE`` from a migrated template (created on first use).
    Drop it with :func:`drop_scratch_store`.
    """
    import psycopg

    tmpl = _ensure_template(settings)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.pg_dsn(), autocommit=True) as admin:
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template
        admin.execute("SELECT pg_advisory_lock(727275)")
        try:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tmpl}"')
        finally:
            admin.execute("SELECT pg_advisory_unlock(727275)")
    return settings.model_copy(update={"mlflow_database": name})


def drop_scratch_store(settings: Settings) -> None:
    """Drop the scratch MLflow database of ``settings`` (refuses the configured production one)."""
    import psycopg

    name = settings.mlflow_database
    if name == Settings.model_fields["mlflow_database"].default or "_" not in name:
        raise ValueError(f"refusing to drop MLflow database {name!r}")
    with psycopg.connect(settings.pg_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
