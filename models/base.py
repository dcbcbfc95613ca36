"""The detector protocol shared by every EventOps detector.

A detector sees *closed windows* described by their features (see :mod:`features.windows`):

* ``score_one(x) -> float`` / ``score_many(X) -> ndarray``: anomaly score in ``[0, 1]``,
  **higher = more anomalous**; scoring never mutates the detector;
* ``learn_one(x)`` / ``learn_many(X)``: update the state with windows, in the given order
  (a series may appear several times in ``X``: its windows are learnt in row order);
* ``to_state() -> dict`` / ``from_state(state)``: plain, picklable checkpoints.

``x`` is a dict of scalars, ``X`` a dict of aligned 1-D numpy arrays; both carry an int64
``series`` code (the row's series) next to the window features (``mean``, ``std``, …, ``start``).
The prequential order used by :class:`models.ensemble.Ensemble` is *score, then learn*.

Per-object detectors implement the ``*_one`` methods and inherit loops for ``*_many``.
Vectorized detectors (:class:`VectorDetector`) implement ``_score(X)`` and ``_learn_unique(X)``
(``X`` with distinct series) and inherit everything else.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np

__all__ = ["Detector", "VectorDetector", "as_columns", "rounds", "take"]


def as_columns(x: dict[str, Any]) -> dict[str, np.ndarray]:
    """One window (dict of scalars) as a 1-row ``X``.

    >>> as_columns({"series": 3, "mean": 1.5})["series"].dtype
    dtype('int64')
    """
    out = {k: np.asarray([v], dtype=np.int64 if k == "series" else None) for k, v in x.items()}
    return out


def take(X: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of every column of ``X``."""
    return {k: v[idx] for k, v in X.items()}


def rounds(series: np.ndarray) -> list[np.ndarray]:
    """Split row indices into rounds in which every series appears at most once.

    Round ``k`` holds the ``k``-th occurrence of each series, so processing rounds in order
    preserves the per-series order of rows.

    >>> [r.tolist() for r in rounds(np.array([5, 7, 5, 5, 7]))]
    [[0, 1], [2, 4], [3]]
    """
    series = np.asarray(series)
    n = series.size
    if n == 0:
        return []
    order = np.argsort(series, kind="stable")
    s = series[order]
    start = np.ones(n, dtype=bool)
    start[1:] = s[1:] != s[:-1]
    grp_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - grp_start
    if rank.max() == 0:
        return [np.arange(n)]
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(1, rank.max() + 1))
    return np.split(by_rank, bounds)


class Detector:
    """Base class: per-object detector; ``*_many`` loop over ``*_one``.

    Subclasses set ``name`` and implement ``learn_one``, ``score_one``, ``to_state`` and
    ``from_state``.  Scores are in ``[0, 1]``, higher = more anomalous.
    """

    name: ClassVar[str] = "detector"

    def learn_one(self, x: dict[str, Any]) -> None:
        raise NotImplementedError

    def score_one(self, x: dict[str, Any]) -> float:
        raise NotImplementedError

    def learn_many(self, X: dict[str, np.ndarray]) -> None:
        """Learn every row of ``X`` in order."""
        n = len(X["series"])
        for i in range(n):
            self.learn_one({k: v[i].item() for k, v in X.items()})

    def score_many(self, X: dict[str, np.ndarray]) -> np.ndarray:
        """Score every row of ``X`` against the current state; float64 (n,)."""
        n = len(X["series"])
        return np.fromiter(
            (self.score_one({k: v[i].item() for k, v in X.items()}) for i in range(n)),
            dtype=np.float64,
            count=n,
        )

    def to_state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Detector:
        raise NotImplementedError

    def clone(self) -> Detector:
        """Deep copy (a fresh detector with the same state)."""
        return copy.deepcopy(self)


def _grow(a: np.ndarray, n: int, fill) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    new = np.full((max(n, 2 * a.shape[0], 16),) + a.shape[1:], fill, dtype=a.dtype)
    new[: a.shape[0]] = a
    return new


class VectorDetector(Detector):
    """Base for detectors whose state is numpy arrays indexed by series code.

    Subclasses list their per-series arrays in ``_arrays`` (name -> fill value), implement
    ``_score(X)`` (pure) and ``_learn_unique(X)`` (``X`` has distinct series, arrays already
    grown), and list constructor parameters in ``_params``.
    """

    _arrays: ClassVar[dict[str, float]] = {}
    _params: ClassVar[tuple[str, ...]] = ()
    _shapes: ClassVar[dict[str, tuple[int, ...]]] = {}

    def _init_arrays(self) -> None:
        self.n_series = 0
        for k, fill in self._arrays.items():
            shape = (0,) + self._inner_shape(k)
            setattr(self, k, np.full(shape, fill, dtype=np.float64))

    def _inner_shape(self, k: str) -> tuple[int, ...]:
        return ()

    def _ensure(self, n: int) -> None:
        if n > self.n_series:
            for k, fill in self._arrays.items():
                setattr(self, k, _grow(getattr(self, k), n, fill))
            self.n_series = max(self.n_series, getattr(self, next(iter(self._arrays))).shape[0])

    def _known(self, s: np.ndarray) -> np.ndarray:
        """Boolean mask: series codes that already have state rows."""
        return s < self.n_series

    # -- protocol --------------------------------------------------------------------------
    def score_many(self, X: dict[str, np.ndarray]) -> np.ndarray:
        s = np.asarray(X["series"], dtype=np.int64)
        if s.size == 0:
            return np.empty(0)
        out = self._score(X)
        return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)

    def learn_many(self, X: dict[str, np.ndarray]) -> None:
        s = np.asarray(X["series"], dtype=np.int64)
        if s.size == 0:
            return
        if s.min() < 0:
            raise ValueError("series codes must be >= 0")
        self._ensure(int(s.max()) + 1)
        for r in rounds(s):
            self._learn_unique(take(X, r) if r.size != s.size else X)

    def score_one(self, x: dict[str, Any]) -> float:
        return float(self.score_many(as_columns(x))[0])

    def learn_one(self, x: dict[str, Any]) -> None:
        self.learn_many(as_columns(x))

    def _score(self, X: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _learn_unique(self, X: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def to_state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "class": type(self).__name__,
            "params": {p: getattr(self, p) for p in self._params},
        }
        st["arrays"] = {k: getattr(self, k)[: self.n_series].copy() for k in self._arrays}
        st["n_series"] = self.n_series
        st.update(self._extra_state())
        return st

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VectorDetector:
        if state.get("class") != cls.__name__:
            raise ValueError(f"state of {state.get('class')!r} given to {cls.__name__}")
        det = cls(**state["params"])
        for k, v in state["arrays"].items():
            setattr(det, k, np.array(v, dtype=np.float64))
        det.n_series = int(state["n_series"])
        for k, fill in cls._arrays.items():  # arrays added after the checkpoint was written
            if k not in state["arrays"]:
                shape = (det.n_series,) + det._inner_shape(k)
                setattr(det, k, np.full(shape, fill, dtype=np.float64))
        det._load_extra(state)
        return det
