"""Learned per-series baselines, vectorized over series.

State is numpy arrays indexed by series code that grow on demand (bytes per series, not one
Python object per series).  Every detector turns a deviation ``z`` (in robust or Gaussian
standard units) into a score with :func:`tail_score`: the two-sided Gaussian tail probability
``p`` of ``z`` on a log scale, ``u = -log10(p) / decades`` and ``score = u / (1 + u)`` -- monotone
in ``z``, 0 for no deviation, 0.5 at ``p = 10**-decades`` and never saturating, so a bigger
deviation always scores higher.

Cold start: a series with fewer than ``warmup`` learnt windows is scored against a blend of its
own statistics and its *family prior* (the statistics of all series sharing its ``family`` code in
``X``; without a ``family`` column each series is its own family).  History is absorbed by calling
``learn_many`` on past windows before going live.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import log_ndtr, stdtr

from models.base import VectorDetector, _grow

__all__ = ["EWMAZScore", "RobustMAD", "SeasonalProfile", "tail_score"]

_LN10 = np.log(10.0)


def tail_score(z: np.ndarray, decades: float = 4.0) -> np.ndarray:
    """Map absolute deviations ``z`` (standard units) to ``[0, 1)``.

    >>> [round(float(v), 3) for v in tail_score(np.array([0.0, 2.0, 3.89, 10.0]))]
    [0.0, 0.251, 0.5, 0.851]
    """
    z = np.abs(np.asarray(z, dtype=np.float64))
    logp = np.log(2.0) + log_ndtr(-z)  # log of the two-sided tail probability
    u = np.maximum(-logp / _LN10, 0.0) / decades
    return u / (1.0 + u)


def t_tail_score(t: np.ndarray, df: np.ndarray, decades: float = 4.0) -> np.ndarray:
    """:func:`tail_score` for a Student-t statistic with ``df`` degrees of freedom: the same
    log-rarity scale, with the heavier tails of a variance estimated from few samples.

    >>> [round(float(v), 3) for v in t_tail_score(np.array([5.0, 5.0]), np.array([2.0, 1e6]))]
    [0.262, 0.609]
    """
    t = np.abs(np.asarray(t, np.float64))
    p = 2.0 * stdtr(np.asarray(df, np.float64), -t)
    u = np.maximum(-np.log10(np.maximum(p, 1e-300)), 0.0) / decades
    gauss = tail_score(t, decades)  # beyond float range the t tail is the Gaussian's
    return np.where(p > 1e-290, u / (1.0 + u), gauss)


def _family(X: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(X["family"] if "family" in X else X["series"], dtype=np.int64)


class EWMAZScore(VectorDetector):
    """Exponentially weighted mean/variance z-score of one window feature, per series.

    Parameters
    ----------
    feature : str
        Window feature to model (``mean``, ``max``, ``change``, …).
    alpha : float
        EWMA weight of a new window, in (0, 1).
    diff : bool
        Model the difference to the previous window's value instead of the value.
    warmup : int
        Windows before a series' own statistics get full weight (family prior before).
    decades : float
        Calibration of :func:`tail_score`.
    min_std : float
        Relative floor of the standard deviation (fraction of ``|mean| + 1e-9``... see code);
        avoids infinite scores on flat series.

    Examples
    --------
    >>> import numpy as np
    >>> det = EWMAZScore(alpha=0.1, warmup=5)
    >>> X = {"series": np.zeros(50, np.int64), "mean": np.sin(np.arange(50.0))}
    >>> det.learn_many(X)
    >>> spike = {"series": 0, "mean": 8.0}
    >>> det.score_one(spike) > 0.5 > det.score_one({"series": 0, "mean": 0.1})
    True
    """

    name = "ewma"
    _arrays: ClassVar[dict[str, float]] = {"n": 0.0, "m": 0.0, "v": 0.0, "prev": np.nan}
    _params = ("feature", "alpha", "diff", "warmup", "decades", "min_std")
    #: per-series state (float64, first axis = series code), made by ``_init_arrays``
    n: np.ndarray
    m: np.ndarray
    v: np.ndarray
    prev: np.ndarray

    def __init__(
        self,
        feature: str = "mean",
        alpha: float = 0.02,
        diff: bool = False,
        warmup: int = 30,
        decades: float = 4.0,
        min_std: float = 1e-3,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if warmup < 1 or decades <= 0 or min_std < 0:
            raise ValueError("warmup must be >= 1, decades > 0, min_std >= 0")
        self.feature, self.alpha, self.diff = feature, float(alpha), bool(diff)
        self.warmup, self.decades, self.min_std = int(warmup), float(decades), float(min_std)
        self._init_arrays()
        self.fam_m = np.zeros(0)
        self.fam_v = np.zeros(0)
        self.fam_n = np.zeros(0)

    def _input(self, X, s, known):
        x = np.asarray(X[self.feature], dtype=np.float64)
        if not self.diff:
            return x
        prev = np.full(s.size, np.nan)
        prev[known] = self.prev[s[known]]
        return x - prev

    def _stats(self, X):
        s = np.asarray(X["series"], dtype=np.int64)
        known = self._known(s)
        f = _family(X)
        fk = f < self.fam_n.size
        n = np.zeros(s.size)
        m = np.zeros(s.size)
        v = np.zeros(s.size)
        n[known], m[known], v[known] = self.n[s[known]], self.m[s[known]], self.v[s[known]]
        fm, fv, fn = np.zeros(s.size), np.zeros(s.size), np.zeros(s.size)
        fm[fk], fv[fk], fn[fk] = self.fam_m[f[fk]], self.fam_v[f[fk]], self.fam_n[f[fk]]
        w = np.minimum(n / self.warmup, 1.0)
        w = np.where(fn > 0, w, np.where(n > 0, 1.0, 0.0))
        m_eff = w * m + (1 - w) * fm
        v_eff = w * v + (1 - w) * fv
        return s, known, n + fn, m_eff, v_eff

    def expected_many(self, X):
        """Expected value and scale of the modelled feature (for explanations and the band):
        the series' own statistics (NaN before its first window).  Not the family blend: the
        family statistics depend on how series interleave in micro-batches, and the band of a
        replayed window must not."""
        s = np.asarray(X["series"], dtype=np.int64)
        known = self._known(s)
        m, v = np.full(s.size, np.nan), np.full(s.size, np.nan)
        sk = s[known]
        seen = self.n[sk] >= 1
        m[known] = np.where(seen, self.m[sk], np.nan)
        v[known] = np.where(seen, self.v[sk], np.nan)
        return m, np.sqrt(v)

    def _score(self, X):
        s, known, n, m, v = self._stats(X)
        x = self._input(X, s, known)
        sd = np.sqrt(v) + self.min_std * (np.abs(m) + 1e-9) + 1e-12
        z = np.abs(x - m) / sd
        z = np.where((n >= 2) & np.isfinite(z), z, 0.0)
        return tail_score(z, self.decades)

    def _learn_unique(self, X):
        s = np.asarray(X["series"], dtype=np.int64)
        x = self._input(X, s, np.ones(s.size, bool))
        raw = np.asarray(X[self.feature], dtype=np.float64)
        ok = np.isfinite(x)
        a = np.maximum(self.alpha, 1.0 / (self.n[s] + 1.0))  # exact mean/var while young
        d = x - self.m[s]
        m_new = self.m[s] + a * d
        v_new = (1 - a) * (self.v[s] + a * d * d)
        self.m[s] = np.where(ok, m_new, self.m[s])
        self.v[s] = np.where(ok, v_new, self.v[s])
        self.n[s] = self.n[s] + ok
        self.prev[s] = raw
        # family prior
        f = _family(X)
        if f.size and f.max() + 1 > self.fam_n.size:
            size = int(f.max()) + 1
            self.fam_m, self.fam_v = _grow(self.fam_m, size, 0.0), _grow(self.fam_v, size, 0.0)
            self.fam_n = _grow(self.fam_n, size, 0.0)
        fo, xo = f[ok], x[ok]
        if fo.size:
            cnt = np.bincount(fo, minlength=self.fam_n.size)
            mean_b = np.bincount(fo, weights=xo, minlength=cnt.size) / np.maximum(cnt, 1)
            has = cnt > 0
            a_f = np.where(has, np.maximum(self.alpha, cnt / np.maximum(self.fam_n + cnt, 1)), 0.0)
            d_f = mean_b - self.fam_m
            var_b = np.bincount(
                fo, weights=(xo - mean_b[fo]) ** 2, minlength=cnt.size
            ) / np.maximum(cnt, 1)
            self.fam_m = self.fam_m + a_f * d_f
            self.fam_v = (1 - a_f) * (self.fam_v + a_f * d_f * d_f) + a_f * var_b
            self.fam_n = self.fam_n + cnt

    def _extra_state(self):
        return {"family": {"m": self.fam_m.copy(), "v": self.fam_v.copy(), "n": self.fam_n.copy()}}

    def _load_extra(self, state):
        fam = state["family"]
        self.fam_m, self.fam_v, self.fam_n = (np.array(fam[k], np.float64) for k in "mvn")


class SeasonalProfile(VectorDetector):
    """Seasonal baseline: EWMA mean/variance per series and time-of-period bucket.

    The bucket of a window is ``floor((start mod period_s) / bucket_s)`` -- by default the hour of
    the day (``period_s=86400, bucket_s=3600``); use ``period_s=604800`` for hour-of-week.  A
    bucket scores only after ``min_count`` windows **and** once the series' history spans
    ``min_periods`` periods (a slot learnt on one day knows nothing of day-to-day variation);
    until then the score is 0 and the ensemble's non-seasonal components decide.

    Examples
    --------
    >>> import numpy as np
    >>> det = SeasonalProfile(alpha=0.2)
    >>> start = np.arange(0, 10 * 86400, 3600.0)
    >>> val = 10 + 5 * np.sin(2 * np.pi * start / 86400)
    >>> det.learn_many({"series": np.zeros(start.size, np.int64), "start": start, "mean": val})
    >>> usual = {"series": 0, "start": 10 * 86400.0 + 6 * 3600, "mean": 15.0}
    >>> odd = {"series": 0, "start": 10 * 86400.0 + 18 * 3600, "mean": 15.0}
    >>> det.score_one(odd) > 0.5 > det.score_one(usual)
    True
    """

    name = "seasonal"
    _arrays: ClassVar[dict[str, float]] = {"n": 0.0, "m": 0.0, "v": 0.0, "first": np.nan}
    _params = (
        "feature", "alpha", "period_s", "bucket_s", "min_count", "decades", "min_std",
        "min_periods", "small_sample",
    )  # fmt: skip
    #: per-series state (float64, axes: series code, bucket), made by ``_init_arrays``
    n: np.ndarray
    m: np.ndarray
    v: np.ndarray
    #: start of the first window learnt, per series
    first: np.ndarray

    def __init__(
        self,
        feature: str = "mean",
        alpha: float = 0.1,
        period_s: float = 86400.0,
        bucket_s: float = 3600.0,
        min_count: int = 3,
        decades: float = 4.0,
        min_std: float = 1e-3,
        min_periods: float = 0.0,
        small_sample: bool = False,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if min_periods < 0:
            raise ValueError("min_periods must be >= 0")
        self.min_periods, self.small_sample = float(min_periods), bool(small_sample)
        if bucket_s <= 0 or period_s < bucket_s or min_count < 1:
            raise ValueError("need 0 < bucket_s <= period_s and min_count >= 1")
        self.feature, self.alpha = feature, float(alpha)
        self.period_s, self.bucket_s = float(period_s), float(bucket_s)
        self.min_count, self.decades, self.min_std = int(min_count), float(decades), float(min_std)
        self.n_buckets = int(np.ceil(self.period_s / self.bucket_s))
        self._init_arrays()

    def _inner_shape(self, k):
        return () if k == "first" else (int(np.ceil(self.period_s / self.bucket_s)),)

    def _bucket(self, X):
        b = np.floor(np.mod(np.asarray(X["start"], np.float64), self.period_s) / self.bucket_s)
        return np.minimum(b.astype(np.int64), self.n_buckets - 1)

    def expected_many(self, X):
        s = np.asarray(X["series"], np.int64)
        b, known = self._bucket(X), self._known(s)
        # a (series, bucket) never learned has no expectation, whether or not its row exists:
        # rows are allocated when a higher series code learns, so that depends on batching
        known[known] = self.n[s[known], b[known]] > 0
        m, v = np.full(s.size, np.nan), np.full(s.size, np.nan)
        m[known], v[known] = self.m[s[known], b[known]], self.v[s[known], b[known]]
        return m, np.sqrt(v)

    def ready_many(self, X):
        """bool (n,): the window's slot has enough history to score (else it scores 0)."""
        s = np.asarray(X["series"], np.int64)
        b, known = self._bucket(X), self._known(s)
        n = np.zeros(s.size)
        n[known] = self.n[s[known], b[known]]
        return self._ready(X, s, known, n)

    def _ready(self, X, s, known, n):
        """Readiness of rows whose slot counts ``n`` are already looked up."""
        span = np.zeros(s.size)
        span[known] = np.asarray(X["start"], np.float64)[known] - self.first[s[known]]
        span[known & np.isnan(span)] = np.inf  # restored from before ``first`` was kept
        return (n >= self.min_count) & (span >= self.min_periods * self.period_s)

    def _score(self, X):
        s = np.asarray(X["series"], np.int64)
        b, known = self._bucket(X), self._known(s)
        x = np.asarray(X[self.feature], np.float64)
        n, m, v = np.zeros(s.size), np.zeros(s.size), np.zeros(s.size)
        n[known] = self.n[s[known], b[known]]
        m[known], v[known] = self.m[s[known], b[known]], self.v[s[known], b[known]]
        sd = np.sqrt(v) + self.min_std * (np.abs(m) + 1e-9) + 1e-12
        z = np.where(self._ready(X, s, known, n), np.abs(x - m) / sd, 0.0)
        if not self.small_sample:
            return tail_score(z, self.decades)
        # a young slot's variance comes from a handful of windows: Student's t with the slot's
        # sample size instead of the Gaussian (the same once the slot has seen many windows)
        df = np.maximum(n - 1.0, 1.0)
        return t_tail_score(z, df, self.decades)

    def _learn_unique(self, X):
        s = np.asarray(X["series"], np.int64)
        st = np.asarray(X["start"], np.float64)
        self.first[s] = np.where(np.isnan(self.first[s]), st, self.first[s])
        b = self._bucket(X)
        x = np.asarray(X[self.feature], np.float64)
        ok = np.isfinite(x)
        s, b, x = s[ok], b[ok], x[ok]
        n = self.n[s, b]
        a = np.maximum(self.alpha, 1.0 / (n + 1.0))
        d = x - self.m[s, b]
        self.m[s, b] += a * d
        self.v[s, b] = (1 - a) * (self.v[s, b] + a * d * d)
        self.n[s, b] = n + 1


class RobustMAD(VectorDetector):
    """Robust z-score against the median/MAD of the last ``size`` windows of each series.

    State: a ring buffer ``(n_series, size)`` per series (NaN = empty slot).

    Examples
    --------
    >>> import numpy as np
    >>> det = RobustMAD(size=32)
    >>> rng = np.random.default_rng(0)
    >>> det.learn_many({"series": np.zeros(40, np.int64), "mean": rng.normal(size=40)})
    >>> det.score_one({"series": 0, "mean": 9.0}) > 0.5 > det.score_one({"series": 0, "mean": 0.0})
    True
    """

    name = "mad"
    _arrays: ClassVar[dict[str, float]] = {"buf": np.nan, "pos": 0.0}
    _params = ("feature", "size", "min_count", "decades", "min_scale")
    #: per-series state (float64, first axis = series code), made by ``_init_arrays``
    buf: np.ndarray
    pos: np.ndarray

    def __init__(
        self,
        feature: str = "mean",
        size: int = 64,
        min_count: int = 8,
        decades: float = 4.0,
        min_scale: float = 1e-3,
    ) -> None:
        if size < 3 or not 1 <= min_count <= size:
            raise ValueError("need size >= 3 and 1 <= min_count <= size")
        self.feature, self.size, self.min_count = feature, int(size), int(min_count)
        self.decades, self.min_scale = float(decades), float(min_scale)
        self._init_arrays()

    def _inner_shape(self, k):
        return (self.size,) if k == "buf" else ()

    def _med_mad(self, s):
        known = self._known(s)
        med, mad, cnt = np.zeros(s.size), np.zeros(s.size), np.zeros(s.size)
        if known.any():
            buf = np.sort(self.buf[s[known]], axis=1)  # NaN (empty slots) sort last
            c = np.sum(~np.isnan(buf), axis=1)
            cnt[known] = c
            rows = np.arange(buf.shape[0])
            lo, hi = np.maximum((c - 1) // 2, 0), np.maximum(c // 2, 0)
            m = 0.5 * (buf[rows, lo] + buf[rows, hi])
            dev = np.sort(np.abs(buf - m[:, None]), axis=1)
            med[known] = m
            mad_k = 1.4826 * 0.5 * (dev[rows, lo] + dev[rows, hi])
            # quantised/flat data: MAD = 0 -> fall back to the mean absolute deviation
            mean_ad = 1.2533 * np.nansum(dev, axis=1) / np.maximum(c, 1)
            mad[known] = np.where(mad_k > 0, mad_k, mean_ad)
        return med, mad, cnt

    def expected_many(self, X):
        med, mad, _ = self._med_mad(np.asarray(X["series"], np.int64))
        return med, mad

    def _score(self, X):
        s = np.asarray(X["series"], np.int64)
        med, mad, cnt = self._med_mad(s)
        x = np.asarray(X[self.feature], np.float64)
        scale = mad + self.min_scale * (np.abs(med) + 1e-9) + 1e-12
        z = np.where(cnt >= self.min_count, np.abs(x - med) / scale, 0.0)
        return tail_score(z, self.decades)

    def _learn_unique(self, X):
        s = np.asarray(X["series"], np.int64)
        x = np.asarray(X[self.feature], np.float64)
        pos = self.pos[s].astype(np.int64)
        self.buf[s, pos % self.size] = np.where(np.isfinite(x), x, np.nan)
        self.pos[s] = (pos + 1) % self.size
