"""Train a batch detector on window features, log it to MLflow, register it, promote it.

One call does the whole loop (:func:`train_and_register`)::

    ds = datasets.inject_anomalies(datasets.from_postgres(settings))
    result = train_and_register(settings, ds, TrainConfig(family="isolation_forest"))
    result.version, result.decision.action, result.decision.reason

Each run logs: params (family, hyper-parameters, features, dataset sizes), metrics (the
candidate's backtest metrics on the labelled set, see :func:`training.promotion.evaluate_scores`,
plus training time), the model (sklearn flavour, skops format with the project's estimator
classes trusted, an explicit ``pip_requirements`` list so MLflow does not spend 5-8 s inferring
it), its signature (window features in -> calibrated score out) and an input example.  This
module decides what is logged; the MLflow calls are :mod:`registry.runs`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.windows import FEATURES
from models.batch import BatchModel
from registry.client import DEFAULT_EXPERIMENT
from registry.runs import log_and_register_model
from registry.tags import TAG_FAMILY
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

    Returns ``(version, run_id)``; the version is tagged with its feature columns and family
    (:func:`registry.runs.log_and_register_model` does the MLflow part).
    """
    example = pd.DataFrame(ds.matrix(cfg.features)[:5], columns=list(cfg.features))
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
    return log_and_register_model(
        settings, model.estimator, features=cfg.features, example=example, params=params,
        metrics=metrics, version_tags={TAG_FAMILY: cfg.family}, skops_trusted=SKOPS_TRUSTED,
        tracking_uri=tracking_uri, experiment=experiment, run_name=run_name,
    )  # fmt: skip


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
    log.info(
        "trained %s v%s (run %s): %s",
        settings.model_name,
        version,
        run_id,
        decision.reason if decision else "not evaluated for promotion",
    )
    return TrainResult(version, run_id, metrics, decision, t)
