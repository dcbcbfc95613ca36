"""River online detectors, shared per metric family, on a budget.

One River ``HalfSpaceTrees`` per *family* (``family`` column of ``X``; without it all series share
family 0), fed with window features scaled per series (z-scores against the series' own EWMA
mean/variance, squashed into [0, 1]), so series of different magnitudes share one model of what
a window's *shape* looks like (level, spread, change).  One HalfSpaceTrees is ~1 MB, so
per-series models do not scale; per family they do.

River has no batch API, so its calls are budgeted to keep the detect stage columnar:

* the scaler is numpy over the batch (bytes per series);
* a window is *scored* by the trees only when one of its scaled features is at least
  ``screen_z`` standard deviations out (``max |z| >= screen_z``); every other window scores 0
  (the trees could only call it normal) -- a few percent of windows on usual telemetry;
* the trees *learn* one window in ``learn_every`` of each series (by the series' own count, so
  the sample does not depend on batching).

Examples
--------
>>> import numpy as np
>>> det = FamilyHalfSpaceTrees(seed=1, n_trees=5, height=6, window_size=50, learn_every=1)
>>> rng = np.random.default_rng(0)
>>> X = {"series": np.zeros(300, np.int64), "mean": rng.normal(size=300),
...      "std": np.ones(300), "change": rng.normal(size=300)}
>>> det.learn_many(X)
>>> 0.0 <= det.score_one({"series": 0, "mean": 0.0, "std": 1.0, "change": 0.0}) <= 1.0
True
>>> det.score_one({"series": 0, "mean": 9.0, "std": 1.0, "change": 9.0}) > 0.5
True
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar

import numpy as np

from models.base import VectorDetector

__all__ = ["FamilyHalfSpaceTrees"]


class FamilyHalfSpaceTrees(VectorDetector):
    """River ``HalfSpaceTrees`` per metric family on per-series scaled features (module doc).

    Parameters
    ----------
    features : tuple of str
        Window features fed to the model (scaled per series, then squashed to [0, 1]).
    n_trees, height, window_size : int
        HalfSpaceTrees parameters.
    alpha : float
        EWMA weight of the per-series scaler.
    seed : int
        Random seed (deterministic results).
    screen_z : float
        Windows with every scaled feature within this many standard deviations score 0
        without asking the trees.
    learn_every : int
        The trees learn one window in this many of each series.
    warmup : int
        Windows a series' scaler learns before its windows are scored or fed to the trees.
    """

    name = "hst"
    _arrays: ClassVar[dict[str, float]] = {"n": 0.0, "m": 0.0, "v": 0.0}
    _params = (
        "features", "n_trees", "height", "window_size", "alpha", "seed", "screen_z",
        "learn_every", "warmup",
    )  # fmt: skip
    n: np.ndarray
    m: np.ndarray
    v: np.ndarray

    def __init__(
        self,
        features: tuple[str, ...] = ("mean", "std", "change"),
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        alpha: float = 0.02,
        seed: int = 42,
        screen_z: float = 3.0,
        learn_every: int = 8,
        warmup: int = 10,
    ) -> None:
        if not features or n_trees < 1 or height < 1 or window_size < 1 or not 0 < alpha < 1:
            raise ValueError("invalid FamilyHalfSpaceTrees parameters")
        if screen_z < 0 or learn_every < 1 or warmup < 2:
            raise ValueError("need screen_z >= 0, learn_every >= 1, warmup >= 2")
        self.features = tuple(features)
        self.n_trees, self.height, self.window_size = int(n_trees), int(height), int(window_size)
        self.alpha, self.seed = float(alpha), int(seed)
        self.screen_z, self.learn_every, self.warmup = (
            float(screen_z),
            int(learn_every),
            int(warmup),
        )
        self.models: dict[int, Any] = {}
        self._init_arrays()

    def _inner_shape(self, k: str) -> tuple[int, ...]:
        return () if k == "n" else (len(self.features),)

    def _new_model(self):
        from river import anomaly

        return anomaly.HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )

    def _values(self, X: dict[str, np.ndarray]) -> np.ndarray:
        n = len(X["series"])
        cols = [np.asarray(X.get(f, np.zeros(n)), np.float64) for f in self.features]
        return np.nan_to_num(np.column_stack(cols), nan=0.0, posinf=0.0, neginf=0.0)

    def _z(self, s: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled features and the per-row count of windows the scaler has learnt."""
        known = self._known(s)
        n = np.zeros(s.size)
        z = np.zeros_like(vals)
        n[known] = self.n[s[known]]
        sk = s[known]
        z[known] = (vals[known] - self.m[sk]) / (np.sqrt(self.v[sk]) + 1e-9)
        z = np.clip(np.nan_to_num(z), -20.0, 20.0)
        return z, n

    def _squash(self, z: np.ndarray) -> dict[str, float]:
        u = 1.0 / (1.0 + np.exp(-z / 2.0))
        return {f: float(v) for f, v in zip(self.features, u, strict=True)}

    def _score(self, X: dict[str, np.ndarray]) -> np.ndarray:
        s = np.asarray(X["series"], np.int64)
        z, n = self._z(s, self._values(X))
        out = np.zeros(s.size)
        fam = np.asarray(X.get("family", np.zeros(s.size, np.int64)), np.int64)
        ask = (n >= self.warmup) & (np.abs(z).max(axis=1) >= self.screen_z)
        for i in np.flatnonzero(ask).tolist():
            model = self.models.get(int(fam[i]))
            if model is not None:
                out[i] = model.score_one(self._squash(z[i]))
        return out

    def _learn_unique(self, X: dict[str, np.ndarray]) -> None:
        s = np.asarray(X["series"], np.int64)
        vals = self._values(X)
        z, n = self._z(s, vals)
        fam = np.asarray(X.get("family", np.zeros(s.size, np.int64)), np.int64)
        feed = (n >= self.warmup) & ((n - self.warmup) % self.learn_every == 0)
        for i in np.flatnonzero(feed).tolist():
            f = int(fam[i])
            if f not in self.models:
                self.models[f] = self._new_model()
            self.models[f].learn_one(self._squash(z[i]))
        a = np.maximum(self.alpha, 1.0 / (self.n[s] + 1.0))[:, None]
        d = vals - self.m[s]
        self.m[s] = self.m[s] + a * d
        self.v[s] = (1 - a) * (self.v[s] + a * d * d)
        self.n[s] = self.n[s] + 1

    def _extra_state(self) -> dict[str, Any]:
        return {"models": {k: pickle.dumps(m) for k, m in self.models.items()}}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.models = {int(k): pickle.loads(v) for k, v in state["models"].items()}
