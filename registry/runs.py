"""Logging a training run to MLflow and registering its model as a new version.

:func:`log_and_register_model` is the MLflow half of ``training.train.log_and_register``: one run
with the params and metrics training computed, the model in the sklearn flavour (skops format,
the given estimator classes trusted, an explicit :func:`pip_requirements` list so MLflow does not
spend 5-8 s inferring it), its signature (window features in -> calibrated score out, inferred
from the input example), and the new version tagged with its feature columns
(:data:`registry.tags.TAG_FEATURES`, what :func:`registry.loading.load_version` reads) plus
any extra version tags.

MLflow is imported when a run is logged, never at import of this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.client import DEFAULT_EXPERIMENT, client, ensure_experiment, use
from registry.tags import TAG_FEATURES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from core.settings import Settings

__all__ = ["log_and_register_model", "pip_requirements"]

log = logging.getLogger(__name__)


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model (what scoring it needs)."""
    import importlib.metadata as md

    pins = {"scikit-learn": "scikit-learn", "numpy": "numpy", "skops": "skops", "mlflow": "mlflow"}
    return [f"{k}=={md.version(v)}" for k, v in pins.items()] + ["eventops"]


def log_and_register_model(
    settings: Settings,
    estimator: Any,
    *,
    features: Sequence[str],
    example: pd.DataFrame,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    version_tags: Mapping[str, str] | None = None,
    skops_trusted: Sequence[str] = (),
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    name: str | None = None,
    datasets: Sequence[tuple[pd.DataFrame, str, str]] = (),
    artifacts: Mapping[str, Path] | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Log ``estimator`` in a new run of ``experiment`` and register it as ``settings.model_name``.

    Parameters
    ----------
    estimator
        A fitted sklearn-compatible estimator (``predict`` is called on ``example`` for the
        signature).
    features : sequence of str
        The columns the model reads, in order; written as the version's ``eventops.features``.
    example : DataFrame
        A few rows of ``features`` (the input example and the signature's input).
    params, metrics : mapping
        Run params; run metrics (``None`` values are skipped, the rest logged as floats).
    version_tags : mapping, optional
        More tags of the new version (e.g. ``eventops.family``).
    skops_trusted : sequence of str
        Types skops must trust to load the model (sklearn's own are trusted by default).
    name : str, optional
        The registered model (default ``settings.model_name``; a tenant's is
        :func:`registry.names.tenant_model`).
    datasets : sequence of (DataFrame, name, context)
        Logged as the run's inputs (``mlflow.data.from_pandas``; context ``training`` /
        ``evaluation``), so the MLflow UI shows what the model was fitted and judged on.
    artifacts : mapping of str to Path, optional
        Files logged under the run's artifact root (``artifact path -> local file``).
    tags : mapping, optional
        Run tags (the decision, the tenant …).

    Returns
    -------
    (version, run_id) : tuple of str
    """
    import mlflow
    import mlflow.data
    import mlflow.sklearn
    from mlflow.models import infer_signature

    name = name or settings.model_name
    use(settings, tracking_uri)
    exp_id = ensure_experiment(settings, experiment, tracking_uri)
    signature = infer_signature(example, np.asarray(estimator.predict(example), np.float64))
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params(dict(params))
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for df, ds_name, context in datasets:
            mlflow.log_input(mlflow.data.from_pandas(df, name=ds_name), context=context)
        for dest, local in (artifacts or {}).items():
            folder = str(Path(dest).parent)
            mlflow.log_artifact(str(local), artifact_path=None if folder == "." else folder)
        if tags:
            mlflow.set_tags(dict(tags))
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            registered_model_name=name,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=list(skops_trusted),
        )
        version = str(info.registered_model_version)
    c = client(settings, tracking_uri)
    vtags = {TAG_FEATURES: json.dumps(features), **(version_tags or {})}
    for k, v in vtags.items():
        c.set_model_version_tag(name, version, k, v)
    return version, run.info.run_id
