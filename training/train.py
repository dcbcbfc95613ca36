"""Train a batch detector on window features, log it to MLflow, register it, promote it.

One call does the whole loop (:func:`train_and_register`)::

    ds = datasets.inject_anomalies(datasets.from_postgres(settings))
    result = train_and_register(settings, ds, TrainConfig(family="isolation_forest"))
    result.version, result.decision.action, result.decision.reason

Each run logs: params (family, hyper-parameters, features, dataset sizes), metrics (the
candidate's backtest metrics on the labelled set, see :func:`training.promotion.evaluate_scores`,
plus training time), the model (sklearn flavour, skops format with the project's estimator
classes trusted, an explicit ``pip_requirements`` list so MLflow does not spend 5-8 s inferring
it), its signature (window features in -> calibrated score out) and an input example.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.windows import FEATURES
from models.batch import BatchModel
from registry.champion import TAG_FEATURES
from registry.tracking import DEFAULT_EXPERIMENT, ensure_experiment, use
from training.datasets import WindowDataset
from training.estimators import CalibratedDetector
from training.promotion import Decision, PromotionPolicy, evaluate_and_promote, evaluate_model

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = ["TrainConfig", "TrainResult", "fit", "log_and_register", "train_and_register"]

log = logging.getLogger(__name__)

#: Types skops must trust to load our models (sklearn's own are trusted by default).
SKOPS_TRUSTED = [
    "sklearn.tree._tree.Tree",
    "training.estimators.CalibratedDetector",
    "training.estimators.RobustZScore",
]


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model (what scoring it needs)."""
    import importlib.metadata as md

    pins = {"scikit-learn": "scikit-learn", "numpy": "numpy", "skops": "skops", "mlflow": "mlflow"}
    return [f"{k}=={md.version(v)}" for k, v in pins.items()] + ["eventops"]


@dataclass
class TrainConfig:
    """What to train.

    Attributes
    ----------
    family : str
        ``"isolation_forest"`` or ``"robust_z"`` (:data:`training.estimators.FAMILIES`).
    features : tuple of str
        Raw window-feature columns the model reads (must include :data:`FEATURES` for the
        relative transform; add :data:`features.cross.CROSS_FEATURES` for the per-host
        cross-metric ones).
    params : dict
        Family hyper-parameters (IsolationForest: ``n_estimators``, ``max_samples`` …).
    quantile : float
        Calibration quantile (score 0.5).
    seed : int
    max_train_windows : int, optional
        Subsample the training windows (uniformly, seeded) above this size.
    """

    family: str = "isolation_forest"
    features: tuple[str, ...] = FEATURES
    params: dict[str, Any] = field(default_factory=dict)
    quantile: float = 0.995
    seed: int = 0
    max_train_windows: int | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train_and_register`."""

    version: str
    run_id: str
    metrics: dict[str, Any]
    decision: Decision | None
    timings: dict[str, float]


def fit(ds: WindowDataset, cfg: TrainConfig) -> BatchModel:
    """Fit ``cfg`` on the windows of ``ds`` not labelled anomalous; returns a local BatchModel."""
    rows = ds.training_rows()
    if cfg.max_train_windows is not None and rows.size > cfg.max_train_windows:
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(rows, cfg.max_train_windows, replace=False))
    X = ds.matrix(cfg.features)[rows]
    est = CalibratedDetector(cfg.family, cfg.features, cfg.quantile, cfg.seed, **cfg.params).fit(X)
    return BatchModel(est, cfg.features, version="local")


def log_and_register(
    settings: Settings,
    model: BatchModel,
    cfg: TrainConfig,
    ds: WindowDataset,
    metrics: dict[str, Any] | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    extra_params: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Log ``model`` with params/metrics/signature/example in a run and register it.

    Returns ``(version, run_id)``; the version is tagged with its feature columns.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    use(settings, tracking_uri)
    exp_id = ensure_experiment(settings, experiment, tracking_uri)
    example = pd.DataFrame(ds.matrix(cfg.features)[:5], columns=list(cfg.features))
    signature = infer_signature(example, model.estimator.predict(example))
    params = {
        "family": cfg.family,
        "features": ",".join(cfg.features),
        "quantile": cfg.quantile,
        "seed": cfg.seed,
        "max_train_windows": cfg.max_train_windows,
        "train_windows": model.estimator.n_train_,
        **{f"dataset_{k}": v for k, v in ds.summary().items()},
        **{f"model_{k}": v for k, v in cfg.params.items()},
        **(extra_params or {}),
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        info = mlflow.sklearn.log_model(
            model.estimator,
            name="model",
            registered_model_name=settings.model_name,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=SKOPS_TRUSTED,
        )
        version = str(info.registered_model_version)
    c = mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri(),
                            registry_uri=mlflow.get_registry_uri())
    c.set_model_version_tag(settings.model_name, version, TAG_FEATURES, json.dumps(cfg.features))
    c.set_model_version_tag(settings.model_name, version, "eventops.family", cfg.family)
    return version, run.info.run_id


def train_and_register(
    settings: Settings,
    ds: WindowDataset,
    cfg: TrainConfig | None = None,
    policy: PromotionPolicy | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    promote: bool = True,
) -> TrainResult:
    """Fit, evaluate on ``ds``'s labels, log + register, then (optionally) decide promotion."""
    cfg = cfg or TrainConfig()
    policy = policy or PromotionPolicy()
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    model = fit(ds, cfg)
    t["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate_model(model, ds, policy)
    t["evaluate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    version, run_id = log_and_register(
        settings, model, cfg, ds, {**metrics, "fit_s": t["fit_s"]},
        tracking_uri=tracking_uri, experiment=experiment, run_name=run_name,
    )  # fmt: skip
    t["log_register_s"] = time.perf_counter() - t0
    decision = None
    if promote:
        t0 = time.perf_counter()
        decision = evaluate_and_promote(
            settings, version, ds, policy, tracking_uri=tracking_uri, candidate_metrics=metrics
        )
        t["promote_s"] = time.perf_counter() - t0
    log.info("trained %s v%s (run %s): %s", settings.model_name, version, run_id,
             decision.reason if decision else "not evaluated for promotion")
    return TrainResult(version, run_id, metrics, decision, t)
