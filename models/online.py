"""River online detectors, shared per metric family.

One River model per *family* (``family`` column of ``X``; without it all series share family 0),
fed with window features scaled per series (z-scores against the series' own EWMA mean/variance),
so that series of different magnitudes can share a model.  River has no batch API: ``score_many``
and ``learn_many`` loop over closed windows (not events), as ARCHITECTURE.md allows.  One
HalfSpaceTrees is ~1 MB, so per-series models do not scale; per family they do.

Examples
--------
>>> import numpy as np
>>> det = FamilyHalfSpaceTrees(seed=1, n_trees=5, height=6, window_size=50)
>>> rng = np.random.default_rng(0)
>>> X = {"series": np.zeros(300, np.int64), "mean": rng.normal(size=300),
...      "std": np.ones(300), "change": rng.normal(size=300)}
>>> det.learn_many(X)
>>> 0.0 <= det.score_one({"series": 0, "mean": 0.0, "std": 1.0, "change": 0.0}) <= 1.0
True
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np

from models.base import Detector, _grow

__all__ = ["FamilyHalfSpaceTrees"]


class FamilyHalfSpaceTrees(Detector):
    """River ``HalfSpaceTrees`` per metric family on per-series scaled features.

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
    """

    name = "hst"

    def __init__(
        self,
        features: tuple[str, ...] = ("mean", "std", "change"),
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        alpha: float = 0.02,
        seed: int = 42,
    ) -> None:
        if not features or n_trees < 1 or height < 1 or window_size < 1 or not 0 < alpha < 1:
            raise ValueError("invalid FamilyHalfSpaceTrees parameters")
        self.features = tuple(features)
        self.n_trees, self.height, self.window_size = int(n_trees), int(height), int(window_size)
        self.alpha, self.seed = float(alpha), int(seed)
        self.models: dict[int, Any] = {}
        k = len(self.features)
        self._n = np.zeros(0)
        self._m = np.zeros((0, k))
        self._v = np.zeros((0, k))

    def _new_model(self):
        from river import anomaly

        return anomaly.HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )

    def _scaled(self, x: dict[str, Any]) -> dict[str, float]:
        s = int(x["series"])
        vals = np.array([float(x.get(f, 0.0)) for f in self.features])
        if s < self._n.size and self._n[s] >= 2:
            z = (vals - self._m[s]) / (np.sqrt(self._v[s]) + 1e-9)
        else:
            z = np.zeros(vals.size)
        z = np.nan_to_num(z)
        u = 1.0 / (1.0 + np.exp(-np.clip(z, -20, 20) / 2.0))  # squash into [0, 1] for HST
        return {f: float(v) for f, v in zip(self.features, u, strict=False)}

    def score_one(self, x: dict[str, Any]) -> float:
        model = self.models.get(int(x.get("family", 0)))
        if model is None:
            return 0.0
        return float(min(max(model.score_one(self._scaled(x)), 0.0), 1.0))

    def learn_one(self, x: dict[str, Any]) -> None:
        fam = int(x.get("family", 0))
        if fam not in self.models:
            self.models[fam] = self._new_model()
        self.models[fam].learn_one(self._scaled(x))
        s = int(x["series"])
        if s >= self._n.size:
            self._n = _grow(self._n, s + 1, 0.0)
            self._m = _grow(self._m, s + 1, 0.0)
            self._v = _grow(self._v, s + 1, 0.0)
        vals = np.nan_to_num(np.array([float(x.get(f, 0.0)) for f in self.features]))
        a = max(self.alpha, 1.0 / (self._n[s] + 1))
        d = vals - self._m[s]
        self._m[s] += a * d
        self._v[s] = (1 - a) * (self._v[s] + a * d * d)
        self._n[s] += 1

    def to_state(self) -> dict[str, Any]:
        return {
            "params": {
                "features": self.features, "n_trees": self.n_trees, "height": self.height,
                "window_size": self.window_size, "alpha": self.alpha, "seed": self.seed,
            },
            "models": {k: pickle.dumps(m) for k, m in self.models.items()},
            "scaler": {"n": self._n.copy(), "m": self._m.copy(), "v": self._v.copy()},
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FamilyHalfSpaceTrees:
        det = cls(**state["params"])
        det.models = {int(k): pickle.loads(v) for k, v in state["models"].items()}
        sc = state["scaler"]
        det._n, det._m, det._v = (np.array(sc[k], np.float64) for k in ("n", "m", "v"))
        return det

    def clone(self) -> FamilyHalfSpaceTrees:
        return copy.deepcopy(self)
