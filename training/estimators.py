"""Batch detectors trained on window features, as sklearn-style estimators.

Every estimator here takes the raw window-feature matrix (columns in the order of its
``features``, as :class:`models.batch.BatchModel` builds it) and exposes ``score_samples`` with
sklearn's sign convention (higher = more normal), so ``BatchModel`` scores ``-score_samples``.

:class:`CalibratedDetector` wraps a *family* (IsolationForest, robust z-score …):

1. :func:`relative_features` turns raw window features into scale-free ones (a CPU series in
   percent and a memory series in bytes can share one model); a model whose ``features`` include
   the per-host cross-metric columns (:data:`features.cross.CROSS_FEATURES`) also gets their
   scale-free view (:data:`RELATIVE_CROSS`), one without them sees exactly what it saw before;
2. the family is fitted on them;
3. raw anomaly scores are *calibrated* to [0, 1] from the training distribution: the median
   training window scores 0, the ``quantile`` (default 99.5 %) scores 0.5, and the score
   approaches 1 as the raw score moves further out (``1 - 2 ** -(d / d_q)``).  A calibrated score
   means the same thing for every family, which is what the ensemble and the alert thresholds
   need.

Pure numpy / scikit-learn: no MLflow, no database.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> n = 500
>>> mean = 50 + rng.normal(size=n)
>>> X = np.column_stack([np.full(n, 12.0), mean, np.abs(rng.normal(1, .1, n)), mean - 2,
...                      mean + 2, mean, np.zeros(n), rng.normal(size=n), np.zeros(n)])
>>> det = CalibratedDetector("robust_z", seed=0).fit(X)
>>> spike = X[:1].copy(); spike[0, 4] = 500.0
>>> s = -det.score_samples(np.vstack([X[:1], spike]))
>>> bool(s[0] < 0.5 < s[1] <= 1.0)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.cross import CROSS_FEATURES, change_z
from features.windows import FEATURES

__all__ = [
    "FAMILIES",
    "RELATIVE",
    "RELATIVE_CROSS",
    "CalibratedDetector",
    "RobustZScore",
    "relative_features",
    "relative_names",
]

#: Detector families :class:`CalibratedDetector` can wrap.
FAMILIES: tuple[str, ...] = ("isolation_forest", "robust_z")

#: Names of the scale-free columns computed by :func:`relative_features`.
RELATIVE: tuple[str, ...] = (
    "rel_std",
    "rel_range",
    "rel_change",
    "z_last",
    "z_max",
    "z_min",
    "log_count",
    "gap",
)

#: Scale-free view of the cross-metric columns (appended when ``features`` has them): the
#: *co-deviation* of the window with the rest of its host, with ``z`` the window's own
#: standardized change (:func:`features.cross.change_z`):
#:
#: * ``host_co_max_z = log1p(min(z, host_max_z))`` -- this metric and at least one other moved;
#: * ``host_co_mean_z = log1p(min(z, host_mean_z))`` -- this metric and the others on average.
#:
#: Why these (``python -m benchmarks.eval_xmetric``, README "Cross-metric features"): the raw
#: ``host_max_z`` / deviating fraction are high on every healthy *sibling* of a single deviating
#: metric, and a model reading them flags the siblings (-3 to -9 NAB points on single-metric
#: anomalies); a deviating fraction gated by ``z`` still cost 2-4 points there.  The ``min`` with
#: the window's own ``z`` keeps the siblings quiet.  The number of metrics is left out: it tells
#: hosts apart (a host with 40 metrics is not anomalous), not windows.
RELATIVE_CROSS: tuple[str, ...] = ("host_co_max_z", "host_co_mean_z")


def _slog(x: np.ndarray) -> np.ndarray:
    """Signed log1p: keeps the sign, compresses the tails."""
    return np.sign(x) * np.log1p(np.abs(x))


def relative_names(features: tuple[str, ...] = FEATURES) -> tuple[str, ...]:
    """Column names of :func:`relative_features` for raw columns ``features``.

    >>> relative_names(FEATURES + CROSS_FEATURES)[-2:]
    ('host_co_max_z', 'host_co_mean_z')
    """
    present = [k for k in CROSS_FEATURES if k in features]
    if present and len(present) != len(CROSS_FEATURES):
        raise ValueError(f"cross-metric features go together: {CROSS_FEATURES}, got {present}")
    return RELATIVE + (RELATIVE_CROSS if present else ())


def relative_features(X: np.ndarray, features: tuple[str, ...] = FEATURES) -> np.ndarray:
    """Scale-free view of raw window features.

    Parameters
    ----------
    X : numpy.ndarray
        float64, shape (n, len(features)); must contain the columns named in
        :data:`features.windows.FEATURES`.
    features : tuple of str
        Column names of ``X``.

    Returns
    -------
    numpy.ndarray
        float64, shape (n, 8): :data:`RELATIVE` -- spread and change relative to the window's
        level, and the position of last/max/min in window standard deviations (signed log);
        shape (n, 10) with :data:`RELATIVE_CROSS` appended when ``features`` has all of
        :data:`features.cross.CROSS_FEATURES` (see :func:`relative_names`).

    >>> X = np.array([[4, 10, 1, 9, 12, 11, 0, 2, 0]], float)
    >>> np.round(relative_features(X), 2).tolist()[0][:4]
    [0.1, 0.26, 0.18, 0.69]
    """
    X = np.asarray(X, dtype=np.float64)
    col = {f: X[:, i] for i, f in enumerate(features)}
    missing = set(FEATURES) - set(col)
    if missing:
        raise ValueError(f"relative_features needs the columns {sorted(missing)}")
    level = np.abs(col["mean"])
    scale = np.maximum(level, np.maximum(col["std"], 1e-9))
    sd = np.maximum(col["std"], 1e-9 * np.maximum(level, 1.0))
    out = np.column_stack([
        _slog(col["std"] / scale),
        _slog((col["max"] - col["min"]) / scale),
        _slog(col["change"] / scale),
        _slog((col["last"] - col["mean"]) / sd),
        _slog((col["max"] - col["mean"]) / sd),
        _slog((col["mean"] - col["min"]) / sd),
        np.log1p(np.maximum(col["count"], 0.0)),
        np.log1p(np.maximum(col["gap"], 0.0)),
    ])  # fmt: skip
    if len(relative_names(features)) > len(RELATIVE):
        z = change_z(col["count"], col["mean"], col["std"], col["change"])
        out = np.column_stack([
            out,
            np.log1p(np.clip(np.fmin(z, col["host_max_z"]), 0.0, None)),
            np.log1p(np.clip(np.fmin(z, col["host_mean_z"]), 0.0, None)),
        ])  # fmt: skip
    return np.nan_to_num(out, nan=0.0, posinf=50.0, neginf=-50.0)


class RobustZScore:
    """Robust z-score per column (median / MAD); raw anomaly score = largest ``|z|``.

    ``score_samples`` follows sklearn's convention (negative of the anomaly score).

    >>> rz = RobustZScore().fit(np.array([[1.0], [2.0], [3.0], [2.0]]))
    >>> (-rz.score_samples(np.array([[2.0], [12.0]]))).tolist()
    [0.0, 13.49]
    """

    def fit(self, X: np.ndarray, y: Any = None) -> RobustZScore:
        X = np.asarray(X, dtype=np.float64)
        self.median_ = np.median(X, axis=0)
        mad = np.median(np.abs(X - self.median_), axis=0) / 0.6745
        std = X.std(axis=0)
        self.scale_ = np.where(mad > 1e-12, mad, np.where(std > 1e-12, std, 1.0))
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        z = np.abs((np.asarray(X, dtype=np.float64) - self.median_) / self.scale_)
        return -np.round(z.max(axis=1), 12)


class CalibratedDetector:
    """Relative features -> detector family -> score calibrated to [0, 1].

    Parameters
    ----------
    family : {"isolation_forest", "robust_z"}
    features : tuple of str
        Raw feature columns, in the order the caller passes them (``BatchModel.features``).
    quantile : float
        Training quantile of the raw score that maps to 0.5 (in (0.5, 1)).
    seed : int
    **params
        Passed to the family (e.g. ``n_estimators``, ``max_samples`` for IsolationForest).
    """

    def __init__(
        self,
        family: str = "isolation_forest",
        features: tuple[str, ...] = FEATURES,
        quantile: float = 0.995,
        seed: int = 0,
        **params: Any,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
        if not 0.5 < quantile < 1.0:
            raise ValueError("quantile must be in (0.5, 1)")
        self.family, self.features, self.quantile = family, tuple(features), float(quantile)
        self.seed, self.params = int(seed), dict(params)

    def _make(self) -> Any:
        if self.family == "isolation_forest":
            from sklearn.ensemble import IsolationForest

            kw = {"n_estimators": 100, "max_samples": 256, **self.params}
            return IsolationForest(random_state=self.seed, **kw)
        return RobustZScore()

    def fit(self, X: np.ndarray, y: Any = None) -> CalibratedDetector:
        """Fit on windows assumed (mostly) normal; ``X`` float64 (n, len(features))."""
        R = relative_features(X, self.features)
        if R.shape[0] < 10:
            raise ValueError(f"need at least 10 windows to train, got {R.shape[0]}")
        self.model_ = self._make().fit(R)
        raw = -self.model_.score_samples(R)
        self.center_ = float(np.median(raw))
        self.spread_ = max(float(np.quantile(raw, self.quantile)) - self.center_, 1e-9)
        self.n_train_ = int(R.shape[0])
        return self

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """Calibrated anomaly score in [0, 1], float64 (n,)."""
        raw = -self.model_.score_samples(relative_features(X, self.features))
        d = np.maximum(raw - self.center_, 0.0) / self.spread_
        return 1.0 - np.exp2(-d)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """sklearn convention: ``-anomaly_score`` (higher = more normal)."""
        return -self.anomaly_score(X)

    def predict(self, X: Any) -> np.ndarray:
        """The calibrated anomaly score (what MLflow's pyfunc flavour serves; not ±1 labels)."""
        return self.anomaly_score(np.asarray(X, dtype=np.float64))

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {"family": self.family, "features": self.features, "quantile": self.quantile,
                "seed": self.seed, **self.params}  # fmt: skip
