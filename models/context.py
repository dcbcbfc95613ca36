"""Contextual novelty detector (after CAD OSE), vectorized over series.

The Contextual Anomaly Detector (CAD OSE, NAB 2016) discretises recent values and flags windows
whose *context* -- the sequence of recent discretised values leading to the current one -- has
never been seen before.  :class:`ContextNovelty` keeps that idea with bounded, flat per-series
state:

* each window's feature is mapped to one of ``n_bins`` equal-width bins of the series' running
  range ``[min, max]`` learnt so far, plus one symbol for "below the range" and one for "above";
* for every order ``k = 1 .. order`` the context ``(symbol[t-k], …, symbol[t-1], symbol[t])`` is
  hashed into a per-series bit table of ``table_size`` slots (``uint8``);
* the score is the fraction of those ``order`` contexts whose slot has never been set -- 0 when
  the path to the current value is familiar, 1 when even the last transition is new;
* learning sets the slots and updates the range and the symbol history.

A familiar daily pattern, a noisy but stationary series and a repeated spike pattern all become
"seen" contexts; a new level, a new shape or a never-seen transition do not.  Hash collisions only
make the detector quieter.  State: ``table_size + order + 3`` numbers per series (about 1.1 KB
with the defaults).

Examples
--------
>>> import numpy as np
>>> det = ContextNovelty(min_count=10)
>>> x = np.tile([0.0, 1.0, 2.0, 3.0], 50)
>>> det.learn_many({"series": np.zeros(x.size, np.int64), "mean": x})
>>> det.score_one({"series": 0, "mean": 0.0}) == 0.0   # 3 -> 0 is the usual step
True
>>> det.score_one({"series": 0, "mean": 2.0}) > 0.5    # 3 -> 2 was never seen
True
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from models.base import VectorDetector, _grow

__all__ = ["ContextNovelty"]

_MULT = np.int64(2654435761)  # Knuth's multiplicative hash constant


class ContextNovelty(VectorDetector):
    """Fraction of never-seen discretised contexts of one window feature, per series.

    Parameters
    ----------
    feature : str
        Window feature to discretise (``mean`` by default).
    n_bins : int
        Equal-width bins of the running range (CAD OSE uses 2**3).
    order : int
        Longest context, in previous windows.
    table_size : int
        Slots of the per-series context table (``uint8`` each).
    min_count : int
        Windows a series learns before it is scored (score 0 before).
    """

    name = "context"
    _arrays: ClassVar[dict[str, float]] = {"n": 0.0, "lo": np.inf, "hi": -np.inf, "hist": -1.0}
    _params = ("feature", "n_bins", "order", "table_size", "min_count")
    #: per-series state (float64, first axis = series code), made by ``_init_arrays``
    n: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    hist: np.ndarray

    def __init__(
        self,
        feature: str = "mean",
        n_bins: int = 8,
        order: int = 6,
        table_size: int = 1024,
        min_count: int = 30,
    ) -> None:
        if n_bins < 2 or order < 1 or table_size < 16 or min_count < 1:
            raise ValueError("need n_bins >= 2, order >= 1, table_size >= 16, min_count >= 1")
        if (n_bins + 3) ** (order + 1) > 2**31:
            raise ValueError("n_bins and order too large for the context hash")
        self.feature, self.n_bins, self.order = feature, int(n_bins), int(order)
        self.table_size, self.min_count = int(table_size), int(min_count)
        self._init_arrays()
        self.table = np.zeros((0, self.table_size), np.uint8)

    def _inner_shape(self, k):
        return (self.order,) if k == "hist" else ()

    def _ensure(self, n: int) -> None:
        super()._ensure(n)
        self.table = _grow(self.table, self.n_series, 0)

    # -- helpers ---------------------------------------------------------------------------
    def _state(self, s: np.ndarray):
        known = self._known(s)
        n = np.zeros(s.size)
        lo, hi = np.full(s.size, np.inf), np.full(s.size, -np.inf)
        hist = np.full((s.size, self.order), -1.0)
        n[known], lo[known], hi[known] = self.n[s[known]], self.lo[s[known]], self.hi[s[known]]
        hist[known] = self.hist[s[known]]
        return known, n, lo, hi, hist

    def _symbol(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """0 = below range, 1..n_bins = bins, n_bins + 1 = above range (int64)."""
        width = np.where(hi > lo, hi - lo, 1.0)
        b = np.floor((x - lo) / width * self.n_bins)
        b = np.clip(b, 0, self.n_bins - 1) + 1
        b = np.where(x < lo, 0, np.where(x > hi, self.n_bins + 1, b))
        b = np.where(np.isfinite(lo) & np.isfinite(x), b, 1)
        return b.astype(np.int64)

    def _slots(self, sym: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """Table slots of the ``order`` contexts ending in ``sym``; int64 (n, order)."""
        base = self.n_bins + 3
        h = sym.copy()
        out = np.empty((sym.size, self.order), np.int64)
        for k in range(self.order):
            h = h * base + (hist[:, k].astype(np.int64) + 1)  # hist -1 (none) -> 0
            out[:, k] = ((h + k * 7919) * _MULT) % self.table_size
        return out

    # -- protocol --------------------------------------------------------------------------
    def _score(self, X):
        s = np.asarray(X["series"], np.int64)
        known, n, lo, hi, hist = self._state(s)
        x = np.asarray(X[self.feature], np.float64)
        sym = self._symbol(x, lo, hi)
        slots = self._slots(sym, hist)
        seen = np.zeros(slots.shape, bool)
        if known.any():
            seen[known] = np.take_along_axis(self.table[s[known]], slots[known], axis=1) > 0
        novel = 1.0 - seen.mean(axis=1)
        return np.where((n >= self.min_count) & np.isfinite(x), novel, 0.0)

    def _learn_unique(self, X):
        s = np.asarray(X["series"], np.int64)
        x = np.asarray(X[self.feature], np.float64)
        ok = np.isfinite(x)
        s, x = s[ok], x[ok]
        if s.size == 0:
            return
        lo, hi, hist = self.lo[s], self.hi[s], self.hist[s]
        sym = self._symbol(x, lo, hi)
        slots = self._slots(sym, hist)
        self.table[s[:, None], slots] = 1
        self.hist[s] = np.concatenate([sym[:, None].astype(np.float64), hist[:, :-1]], axis=1)
        self.lo[s] = np.minimum(lo, x)
        self.hi[s] = np.maximum(hi, x)
        self.n[s] += 1

    def _extra_state(self) -> dict[str, Any]:
        return {"table": self.table[: self.n_series].copy()}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.table = np.array(state["table"], np.uint8).reshape(-1, self.table_size)
