"""Per-series calibration of raw detector scores ("anomaly likelihood", after HTM/NAB).

A raw score ``s`` in ``[0, 1]`` (e.g. a :func:`models.baselines.tail_score`) means different things
on different series: a noisy series produces high raw scores all the time, a quiet one rarely.
:class:`ScoreLikelihood` keeps, per series, an exponentially weighted mean and variance of the
series' *own* raw scores and reports how far the current raw score lies in that distribution's
upper tail: ``z = (s - mean) / (sd + floor)``, ``p = 2 P(Z > z)`` (Gaussian, the same scale as
:func:`models.baselines.tail_score`), and the calibrated
score ``u / (1 + u)`` with ``u = -log10(p) / decades`` (0.5 at ``p = 10**-decades``).  One global
threshold then means "as unusual *for this series* as 1 in ``10**decades``", which is what makes a
single configuration work across series of very different noise levels.

The floor on the standard deviation keeps series whose raw scores are constant (flat or perfectly
periodic signals) from turning the smallest blip into a certain anomaly.  The first
``min_windows`` windows of a series only learn (score 0), like NAB's probation period.

State: three float64 per series (count, mean, variance).

Examples
--------
>>> import numpy as np
>>> lk = ScoreLikelihood(min_windows=10)
>>> s = np.zeros(200, np.int64)
>>> raw = np.r_[np.full(199, 0.1), 0.9]
>>> out = np.array([lk.step(s[i:i + 1], raw[i:i + 1])[0] for i in range(200)])
>>> bool(out[-1] > 0.5 > out[-2])
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.base import _grow
from models.baselines import _LN10

__all__ = ["ScoreLikelihood"]


def _upper_tail_log10(z: np.ndarray) -> np.ndarray:
    """``-log10 (2 P(Z > z))`` for a standard normal ``Z``, floored at 0 (0 for ``z <= 0``)."""
    from scipy.special import log_ndtr

    return np.maximum(-log_ndtr(-np.maximum(z, 0.0)) / _LN10 - np.log10(2.0), 0.0)


class ScoreLikelihood:
    """Calibrate raw scores per series against the series' own score history.

    Parameters
    ----------
    alpha : float
        EWMA weight of the long-run mean/variance of raw scores (``1/alpha`` ≈ memory in windows).
    floor : float
        Added to the standard deviation of raw scores (raw-score units, i.e. in ``[0, 1]``).
    decades : float
        ``-log10`` tail probability that maps to a calibrated score of 0.5.
    min_windows : int
        Windows a series learns before it is scored.
    """

    def __init__(
        self,
        alpha: float = 0.001,
        floor: float = 0.05,
        decades: float = 4.0,
        min_windows: int = 100,
    ) -> None:
        if not 0.0 < alpha < 1.0 or floor < 0 or decades <= 0 or min_windows < 0:
            raise ValueError("need 0 < alpha < 1, floor >= 0, decades > 0, min_windows >= 0")
        self.alpha, self.floor = float(alpha), float(floor)
        self.decades, self.min_windows = float(decades), int(min_windows)
        self.state = np.zeros((0, 3))  # count, mean, variance of raw scores

    def score(self, s: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores of ``raw`` (float64 (n,)) for series ``s``; pure."""
        s = np.asarray(s, np.int64)
        st = np.zeros((s.size, 3))
        known = s < self.state.shape[0]
        st[known] = self.state[s[known]]
        n, m, v = st.T
        z = (np.asarray(raw, np.float64) - m) / (np.sqrt(v) + self.floor + 1e-12)
        u = _upper_tail_log10(z) / self.decades
        return np.where(n >= self.min_windows, u / (1.0 + u), 0.0)

    def learn(self, s: np.ndarray, raw: np.ndarray) -> None:
        """Absorb ``raw`` scores; ``s`` must hold distinct series codes."""
        s = np.asarray(s, np.int64)
        if s.size == 0:
            return
        self.state = _grow(self.state, int(s.max()) + 1, 0.0)
        raw = np.asarray(raw, np.float64)
        n, m, v = self.state[s].T
        a = np.maximum(self.alpha, 1.0 / (n + 1.0))
        d = raw - m
        self.state[s, 0] = n + 1
        self.state[s, 1] = m + a * d
        self.state[s, 2] = (1 - a) * (v + a * d * d)

    def step(self, s: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Score then learn (distinct series codes)."""
        out = self.score(s, raw)
        self.learn(s, raw)
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "params": {"alpha": self.alpha, "floor": self.floor, "decades": self.decades,
                       "min_windows": self.min_windows},
            "state": self.state.copy(),
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ScoreLikelihood:
        lk = cls(**state["params"])
        lk.state = np.array(state["state"], np.float64).reshape(-1, 3)
        return lk
