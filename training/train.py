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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.windows import FEATURES
from models.batch import BatchModel
from registry.client import DEFAULT_EXPERIMENT
from registry.names import tenant_model
from registry.runs import log_and_register_model
from registry.tags import TAG_FAMILY
from training.datasets import WindowDataset
from training.estimators import CalibratedDetector
from training.promotion import (
    Decision,
    PromotionPolicy,
    decide_replay,
    evaluate_and_promote,
    evaluate_model,
    record_replay_decision,
)
from training.replay import Events, ReplayReport, judge

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = [
    "Judgement",
    "TrainConfig",
    "TrainResult",
    "fit",
    "fit_rows",
    "log_and_register",
    "train_and_judge",
    "train_and_register",
]

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
    return fit_rows(ds.X, ds.training_rows(), cfg)


def fit_rows(X: dict[str, np.ndarray], rows: np.ndarray, cfg: TrainConfig) -> BatchModel:
    """Fit ``cfg`` on rows ``rows`` of the window columns ``X`` (subsampled, seeded, above
    ``cfg.max_train_windows``); returns a local BatchModel."""
    if cfg.max_train_windows is not None and rows.size > cfg.max_train_windows:
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(rows, cfg.max_train_windows, replace=False))
    M = np.nan_to_num(np.column_stack([np.asarray(X[k], np.float64)[rows] for k in cfg.features]))
    est = CalibratedDetector(cfg.family, cfg.features, cfg.quantile, cfg.seed, **cfg.params).fit(M)
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
    tenant: str | None = None,
) -> tuple[str, str]:
    """Log ``model`` with params/metrics/signature/example in a run and register it (as
    ``tenant``'s model, :func:`registry.names.tenant_model`; ``None``: ``settings.model_name``).

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
        name=None if tenant is None else tenant_model(settings, tenant),
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
    tenant: str | None = None,
) -> TrainResult:
    """Fit, evaluate on ``ds``'s labels, log + register, then (optionally) decide promotion.

    **In sample**: the model is evaluated on the windows it was fitted on. Entry points judge
    out of sample with :func:`train_and_judge`; this is the building block for tests and
    experiments on a labelled window set. ``tenant`` registers the version as that tenant's
    (``None``: ``settings.model_name``).
    """
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
        tracking_uri=tracking_uri, experiment=experiment, run_name=run_name, tenant=tenant,
    )  # fmt: skip
    t["log_register_s"] = time.perf_counter() - t0
    decision = None
    if promote:
        t0 = time.perf_counter()
        name = None if tenant is None else tenant_model(settings, tenant)
        decision = evaluate_and_promote(
            settings, version, ds, policy, tracking_uri=tracking_uri,
            candidate_metrics=metrics, name=name,
        )  # fmt: skip
        t["promote_s"] = time.perf_counter() - t0
    log.info(
        "trained %s v%s (run %s): %s",
        settings.model_name,
        version,
        run_id,
        decision.reason if decision else "not evaluated for promotion",
    )
    return TrainResult(version, run_id, metrics, decision, t)


@dataclass
class Judgement:
    """Outcome of :func:`train_and_judge`: the registered version, its MLflow run, the decision
    and the replay comparison it rests on."""

    version: str
    run_id: str
    decision: Decision
    report: ReplayReport
    timings: dict[str, float]
    #: ``promoted``, ``rejected`` or ``would_promote`` (better, but ``promote=False``)
    action: str = "rejected"

    def summary(self) -> str:
        """One line: the decision with the out-of-sample figures of each arm."""
        arms = self.report.arms
        figs = ", ".join(
            f"{a} nab {m['nab_standard']} P {_f(m['precision'])} R {_f(m['recall'])} "
            f"{_f(m['alerts_per_series_day'])} alerts/series-day"
            for a, m in arms.items()
        )
        what = (
            self.decision.action
            if self.decision.promoted or not self.decision.reason
            else ("rejected")
        )
        return f"v{self.version} {what} ({self.decision.reason}); out of sample: {figs}"


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def run_name(family: str, tenant: str, at: float | None = None) -> str:
    """``<family>-<tenant>-<UTC yyyymmdd-hhmm>``: what the MLflow UI lists.

    >>> run_name("isolation_forest", "acme", 0.0)
    'isolation_forest-acme-19700101-0000'
    """
    from datetime import UTC, datetime

    t = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return f"{family}-{tenant}-{t:%Y%m%d-%H%M}"


def train_and_judge(
    settings: Settings,
    tenant: str,
    events: Events,
    cfg: TrainConfig | None = None,
    policy: PromotionPolicy | None = None,
    *,
    train_fraction: float = 0.7,
    per_series: int = 2,
    seed: int = 0,
    feedback: Sequence[tuple[str, str, str, float, float]] = (),
    promote: bool = True,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    artifacts_dir: Path | None = None,
) -> Judgement:
    """Fit on the older part of ``events``, judge by replay on the newer part, log, decide.

    ``events`` are ``tenant``'s only (:meth:`training.replay.Events.from_postgres` reads no
    other tenant). The candidate is fitted on the training part's windows
    (:func:`training.replay.judge`), compared with ``tenant``'s current champion and with the
    ensemble alone (:func:`training.promotion.decide_replay`), logged as one MLflow run named
    :func:`run_name` -- params, the out-of-sample metrics of every arm (``oos_<arm>_<metric>``)
    and the candidate's in-sample ones (``ins_candidate_<metric>``), the training and
    evaluation windows as datasets, the evaluation table and the replay plot as artifacts, the
    decision as tags -- and registered as a version of ``tenant``'s model, on which the decision
    is tagged. ``promote=False`` never moves an alias (decision ``would_promote`` or
    ``rejected``).
    """
    import tempfile

    from registry.aliases import alias_version
    from registry.client import client as make_client
    from registry.loading import load_version
    from registry.tags import CHAMPION

    cfg = cfg or TrainConfig()
    policy = policy or PromotionPolicy()
    name = tenant_model(settings, tenant)
    if events.tenant != tenant:
        raise ValueError(f"events of tenant {events.tenant!r} cannot train {tenant!r}'s model")
    t: dict[str, float] = {}
    mc = make_client(settings, tracking_uri)
    champ_v = alias_version(mc, name, CHAMPION)
    champion = None
    if champ_v is not None:
        champion = (champ_v, load_version(mc, name, champ_v, tracking_uri))

    t0 = time.perf_counter()
    candidate, report = judge(
        events, lambda X, rows: fit_rows(X, rows, cfg), champion,
        train_fraction=train_fraction, per_series=per_series, seed=seed, feedback=feedback,
    )  # fmt: skip
    t["replay_s"] = time.perf_counter() - t0
    ok, reason = decide_replay(report.arms, report.in_sample, policy)

    t0 = time.perf_counter()
    base = report.replays["ensemble"]
    cols = {"host": base.host, "metric": base.metric, "start": base.start, "end": base.end}
    win = pd.DataFrame(
        {**cols, **{k: np.asarray(base.features[k], np.float64) for k in cfg.features}}
    )
    train_df = win[win.end <= report.split_ts]
    eval_df = win[win.end > report.split_ts]
    metrics = {f"oos_{a}_{k}": v for a, m in report.arms.items() for k, v in m.items()}
    metrics.update({f"ins_candidate_{k}": v for k, v in report.in_sample["candidate"].items()})
    metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    action = ("promoted" if promote else "would_promote") if ok else "rejected"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(artifacts_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        table = out / "evaluation.csv"
        report.table().to_csv(table, index=False)
        plot = report.plot(out / "replay.png")
        version, run_id = log_and_register_model(
            settings, candidate.estimator, features=cfg.features,
            example=train_df[list(cfg.features)].head(5).astype(np.float64),
            params={
                "family": cfg.family, "tenant": tenant, "features": ",".join(cfg.features),
                "quantile": cfg.quantile, "seed": cfg.seed, "train_fraction": train_fraction,
                "split_ts": report.split_ts, "train_windows": candidate.estimator.n_train_,
                "eval_windows": len(eval_df), "injected_per_series_part": per_series,
                "feedback_labels": len(feedback), "champion_compared": champ_v or "none",
                **{f"model_{k}": v for k, v in cfg.params.items()},
            },
            metrics=metrics, version_tags={TAG_FAMILY: cfg.family}, skops_trusted=SKOPS_TRUSTED,
            tracking_uri=tracking_uri, experiment=experiment,
            run_name=run_name(cfg.family, tenant), name=name,
            datasets=[(train_df, f"{tenant}-train", "training"),
                      (eval_df, f"{tenant}-evaluation", "evaluation")],
            artifacts={"evaluation/evaluation.csv": table, "evaluation/replay.png": plot},
            tags={"eventops.tenant": tenant, "eventops.decision": action,
                  "eventops.reason": reason[:4000]},
        )  # fmt: skip
    t["log_register_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    decision = record_replay_decision(
        settings, name, version, ok, reason, report.arms, policy, champion_version=champ_v,
        tracking_uri=tracking_uri, promote_alias=promote,
    )  # fmt: skip
    t["decide_s"] = time.perf_counter() - t0
    log.info("tenant %s: v%s %s (%s)", tenant, version, action, reason)
    return Judgement(version, run_id, decision, report, t, action)
