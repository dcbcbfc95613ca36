"""Does a metric still move with the rest of its host?  A per-host model of window means.

Sensors of one machine (temperature, pressure, flow, current …) or metrics of one server move
together with its load: a load step moves all of them and is no fault, while a fault breaks their
relation -- a valve leak lowers pressure while flow rises -- and it can last for minutes without
any single metric leaving its own range.  Univariate baselines cannot tell the two apart;
:class:`HostCorrelation` can:

* every series keeps a slow EWMA mean/variance of its window mean and reports
  ``z = (mean - m) / sd``;
* every host keeps an EWMA covariance ``C`` of the ``z`` of its metrics (up to ``slots`` metrics,
  in the order they first appear; a host's later metrics beyond that are not modelled);
* a window's score is how far its ``z`` lies from what the host's *other* metrics in the same
  window predict: with ``P = (C + ridge I)^-1``, the regression residual of metric ``i`` on the
  others is ``(P z)_i / P_ii`` with variance ``1 / P_ii``, so ``r_i = |(P z)_i| / sqrt(P_ii)``
  in standard units, mapped by :func:`models.baselines.tail_score`.

Windows are grouped by ``(host, start)`` among the rows of one call (the detect stage closes all
windows of a host with the same start in one push; see :mod:`features.cross`).  A metric missing
from a window counts as "at its mean" there and its pairs are not updated.  A host with one metric
(every file of a NAB backtest), or a group with one window, scores 0.  Needs the ``host`` column
(host codes); without it every row is its own host.

State: four floats per series, ``slots**2 + 2`` per host (8 slots: ~530 bytes a host).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> n = 600
>>> load = np.repeat(rng.uniform(0.3, 0.8, n // 60), 60)  # load steps every 60 windows
>>> a = 10 + 20 * load + rng.normal(0, 0.1, n)
>>> b = 5 + 8 * load + rng.normal(0, 0.1, n)
>>> b[500:530] -= 2.0  # a fault: b drops while a holds
>>> det = HostCorrelation(alpha=0.01, cov_alpha=0.01)
>>> X = {"series": np.tile([0, 1], n), "host": np.zeros(2 * n, np.int64),
...      "start": np.repeat(np.arange(n) * 60.0, 2), "mean": np.column_stack([a, b]).ravel()}
>>> out = []
>>> for i in range(n):  # prequential, one window per metric at a time: score, then learn
...     x = {k: v[2 * i: 2 * i + 2] for k, v in X.items()}
...     out.append(det.score_many(x))
...     det.learn_many(x)
>>> out = np.concatenate(out)
>>> b_score = out[1::2]  # rows alternate a, b
>>> fault, steps = b_score[500:530].mean(), b_score[100:500].mean()
>>> bool(fault > 5 * steps), bool(b_score[100:500].max() < fault)
(True, True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from models.base import VectorDetector, _grow
from models.baselines import tail_score

__all__ = ["HostCorrelation"]


class HostCorrelation(VectorDetector):
    """Residual of each metric against the other metrics of its host (module doc).

    Parameters
    ----------
    feature : str
        Window feature modelled (``mean``).
    alpha : float
        EWMA weight of the per-series mean/variance (slow: the level that "normal" means).
    cov_alpha : float
        EWMA weight of the per-host covariance of ``z``.
    ridge : float
        Added to the covariance's diagonal before inverting (stability with few windows or
        collinear metrics).
    slots : int
        Metrics modelled per host.
    warmup : int
        Windows a host's covariance learns before it scores.
    decades : float
        Calibration of :func:`models.baselines.tail_score`.
    """

    name = "host_corr"
    _arrays: ClassVar[dict[str, float]] = {"n": 0.0, "m": 0.0, "v": 0.0, "slot": -1.0}
    _params = ("feature", "alpha", "cov_alpha", "ridge", "slots", "warmup", "decades")
    n: np.ndarray
    m: np.ndarray
    v: np.ndarray
    slot: np.ndarray

    def __init__(
        self,
        feature: str = "mean",
        alpha: float = 0.002,
        cov_alpha: float = 0.002,
        ridge: float = 0.03,
        slots: int = 8,
        warmup: int = 50,
        decades: float = 4.0,
    ) -> None:
        if not (0 < alpha < 1 and 0 < cov_alpha < 1) or ridge <= 0 or slots < 2 or warmup < 1:
            raise ValueError("need alpha, cov_alpha in (0, 1), ridge > 0, slots >= 2, warmup >= 1")
        self.feature, self.alpha, self.cov_alpha = feature, float(alpha), float(cov_alpha)
        self.ridge, self.slots, self.warmup = float(ridge), int(slots), int(warmup)
        self.decades = float(decades)
        self._init_arrays()
        self.cov = np.zeros((0, self.slots, self.slots))
        self.host_n = np.zeros(0)
        self.host_used = np.zeros(0)  # slots taken per host

    # -- helpers ---------------------------------------------------------------------------
    def _z(self, s: np.ndarray, x: np.ndarray) -> np.ndarray:
        known = self._known(s)
        z = np.full(s.size, np.nan)
        sk = s[known]
        ok = self.n[sk] >= 2
        z_k = np.where(ok, (x[known] - self.m[sk]) / (np.sqrt(self.v[sk]) + 1e-9), np.nan)
        z[known] = z_k
        return np.clip(z, -50.0, 50.0)

    @staticmethod
    def _groups(host: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group index per row (by host and start) and the host of each group."""
        key = np.rec.fromarrays([host, start])
        uniq, inv = np.unique(key, return_inverse=True)
        return inv.ravel(), np.asarray(uniq["f0"], np.int64)

    def _hosts(self, X: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        if "host" in X:
            return np.asarray(X["host"], np.int64)
        return -1 - s  # no host column: every series is a host of its own (never scores)

    # -- protocol --------------------------------------------------------------------------
    def _score(self, X: dict[str, np.ndarray]) -> np.ndarray:
        s = np.asarray(X["series"], np.int64)
        host = self._hosts(X, s)
        x = np.asarray(X[self.feature], np.float64)
        z = self._z(s, x)
        slot = np.full(s.size, -1)
        known = self._known(s)
        slot[known] = self.slot[s[known]].astype(np.int64)
        valid = np.isfinite(z) & (slot >= 0) & (host >= 0) & (host < self.host_n.size)
        out = np.zeros(s.size)
        if valid.sum() < 2:
            return out
        idx = np.flatnonzero(valid)
        g, g_host = self._groups(host[idx], np.asarray(X["start"], np.float64)[idx])
        size = np.bincount(g)
        ready = (size >= 2) & (self.host_n[g_host] >= self.warmup)
        if not ready.any():
            return out
        G = g_host.size
        Z = np.zeros((G, self.slots))
        Z[g, slot[idx]] = z[idx]
        P = np.linalg.inv(self.cov[g_host] + self.ridge * np.eye(self.slots))
        PZ = np.einsum("gij,gj->gi", P, Z)
        diag = np.einsum("gii->gi", P)
        r = np.abs(PZ[g, slot[idx]]) / np.sqrt(diag[g, slot[idx]])
        out[idx] = np.where(ready[g], tail_score(r, self.decades), 0.0)
        return out

    def _learn_unique(self, X: dict[str, np.ndarray]) -> None:
        s = np.asarray(X["series"], np.int64)
        host = self._hosts(X, s)
        x = np.asarray(X[self.feature], np.float64)
        has_host = host >= 0
        if has_host.any():
            self._grow_hosts(int(host[has_host].max()) + 1)
            self._assign_slots(s[has_host], host[has_host])
            z = self._z(s, x)
            slot = self.slot[s].astype(np.int64)
            ok = has_host & np.isfinite(z) & (slot >= 0)
            if ok.any():
                self._learn_cov(host[ok], np.asarray(X["start"], np.float64)[ok], slot[ok], z[ok])
        fin = np.isfinite(x)
        a = np.maximum(self.alpha, 1.0 / (self.n[s] + 1.0))
        d = x - self.m[s]
        self.m[s] = np.where(fin, self.m[s] + a * d, self.m[s])
        self.v[s] = np.where(fin, (1 - a) * (self.v[s] + a * d * d), self.v[s])
        self.n[s] = self.n[s] + fin

    def _grow_hosts(self, h: int) -> None:
        if h > self.host_n.size:
            old = self.host_n.size
            self.host_n = _grow(self.host_n, h, 0.0)
            self.host_used = _grow(self.host_used, h, 0.0)
            cov = np.zeros((self.host_n.size, self.slots, self.slots))
            cov[:old] = self.cov
            cov[old:] = np.eye(self.slots)  # unknown metrics: independent, unit variance
            self.cov = cov

    def _assign_slots(self, s: np.ndarray, host: np.ndarray) -> None:
        new = self.slot[s] < 0
        if not new.any():
            return
        sn, hn = s[new], host[new]
        order = np.lexsort((sn, hn))  # deterministic: by host, then series code
        sn, hn = sn[order], hn[order]
        first = np.r_[True, hn[1:] != hn[:-1]]
        start_idx = np.maximum.accumulate(np.where(first, np.arange(hn.size), 0))
        rank = np.arange(hn.size) - start_idx
        slot = self.host_used[hn] + rank
        take = slot < self.slots
        self.slot[sn[take]] = slot[take]
        np.add.at(self.host_used, hn[take], 1.0)
        self.host_used = np.minimum(self.host_used, self.slots)

    def _learn_cov(self, host, start, slot, z) -> None:
        g, g_host = self._groups(host, start)
        G = g_host.size
        Z = np.zeros((G, self.slots))
        M = np.zeros((G, self.slots))
        Z[g, slot], M[g, slot] = z, 1.0
        # a host with several groups in one call (windows of different starts): in start order
        order = np.argsort(g_host, kind="stable")
        first = np.r_[True, g_host[order][1:] != g_host[order][:-1]]
        start_idx = np.maximum.accumulate(np.where(first, np.arange(G), 0))
        rank = np.empty(G, np.int64)
        rank[order] = np.arange(G) - start_idx
        for k in range(int(rank.max()) + 1 if G else 0):
            sel = rank == k
            h = g_host[sel]
            zz = np.einsum("gi,gj->gij", Z[sel], Z[sel])
            mm = np.einsum("gi,gj->gij", M[sel], M[sel])
            b = np.maximum(self.cov_alpha, 1.0 / (self.host_n[h] + 1.0))[:, None, None]
            c = self.cov[h]
            self.cov[h] = np.where(mm > 0, (1 - b) * c + b * zz, c)
            self.host_n[h] += 1

    def expected_many(self, X: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(X["series"], np.int64)
        known = self._known(s)
        m, v = np.full(s.size, np.nan), np.full(s.size, np.nan)
        sk = s[known]
        warm = self.n[sk] >= 2
        m[known] = np.where(warm, self.m[sk], np.nan)
        v[known] = np.where(warm, self.v[sk], np.nan)
        return m, np.sqrt(v)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "hosts": {
                "cov": self.cov.copy(),
                "n": self.host_n.copy(),
                "used": self.host_used.copy(),
            }
        }

    def _load_extra(self, state: dict[str, Any]) -> None:
        h = state["hosts"]
        self.cov = np.array(h["cov"], np.float64).reshape(-1, self.slots, self.slots)
        self.host_n = np.array(h["n"], np.float64)
        self.host_used = np.array(h["used"], np.float64)
