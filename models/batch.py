"""Batch-model slot: an sklearn estimator scoring windows vectorized.

The estimator (e.g. ``IsolationForest``) is given as an object or loaded from a joblib file;
MLflow wiring (``models:/<name>@champion``) lives outside ``models/``.  The score of a window is
``-estimator.score_samples(features)`` (IsolationForest: in (0, 1], 0.5 ~ neutral), clipped to
[0, 1].  The model is frozen: ``learn_*`` do nothing (training happens in ``training/``).

Examples
--------
>>> import numpy as np
>>> from sklearn.ensemble import IsolationForest
>>> rng = np.random.default_rng(0)
>>> X = {"series": np.zeros(200, np.int64), "mean": rng.normal(size=200),
...      "std": np.abs(rng.normal(size=200))}
>>> det = BatchModel.fit_isolation_forest(X, features=("mean", "std"), seed=0)
>>> s = det.score_many({"series": np.zeros(2, np.int64), "mean": np.array([0.0, 9.0]),
...                     "std": np.array([0.8, 0.8])})
>>> bool(s[1] > s[0])
True
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Detector, as_columns

__all__ = ["BatchModel"]


class BatchModel(Detector):
    """Score windows with a fitted sklearn estimator exposing ``score_samples``.

    Parameters
    ----------
    estimator : object
        Fitted estimator; ``-score_samples`` must be "higher = more anomalous".
    features : tuple of str
        Columns of ``X`` fed to the model, in order.
    version : str
        Model version recorded with every score (e.g. the MLflow registry version).
    """

    name = "batch"

    def __init__(self, estimator: Any, features: tuple[str, ...], version: str = "local") -> None:
        if not hasattr(estimator, "score_samples"):
            raise TypeError("estimator must implement score_samples")
        if not features:
            raise ValueError("features must not be empty")
        self.estimator, self.features, self.version = estimator, tuple(features), str(version)

    @classmethod
    def load(cls, path: Path, features: tuple[str, ...], version: str | None = None) -> BatchModel:
        """Load a joblib-pickled estimator (only load files you trust)."""
        import joblib

        return cls(joblib.load(path), features, version or Path(path).name)

    @classmethod
    def fit_isolation_forest(
        cls, X: dict[str, np.ndarray], features: tuple[str, ...], seed: int = 0, **kw: Any
    ) -> BatchModel:
        """Fit an ``IsolationForest`` on the window features ``X`` (training helper)."""
        from sklearn.ensemble import IsolationForest

        est = IsolationForest(random_state=seed, **kw).fit(cls._matrix(X, features))
        return cls(est, features, version="fit-local")

    @staticmethod
    def _matrix(X: dict[str, np.ndarray], features: tuple[str, ...]) -> np.ndarray:
        return np.nan_to_num(np.column_stack([np.asarray(X[f], np.float64) for f in features]))

    def score_many(self, X: dict[str, np.ndarray]) -> np.ndarray:
        if len(X["series"]) == 0:
            return np.empty(0)
        raw = -self.estimator.score_samples(self._matrix(X, self.features))
        return np.clip(np.asarray(raw, np.float64), 0.0, 1.0)

    def score_one(self, x: dict[str, Any]) -> float:
        return float(self.score_many(as_columns(x))[0])

    def learn_one(self, x: dict[str, Any]) -> None:  # frozen model
        return None

    def learn_many(self, X: dict[str, np.ndarray]) -> None:
        return None

    def to_state(self) -> dict[str, Any]:
        import joblib

        buf = io.BytesIO()
        joblib.dump(self.estimator, buf)
        return {"estimator": buf.getvalue(), "features": self.features, "version": self.version}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BatchModel:
        import joblib

        est = joblib.load(io.BytesIO(state["estimator"]))
        return cls(est, tuple(state["features"]), state["version"])
