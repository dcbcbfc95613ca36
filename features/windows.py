"""Event-time tumbling windows over columnar micro-batches.

One code path computes window features live (detect stage), in backtests and in training.

Input batches are three aligned 1-D columns: ``series`` (int64 codes, a stable integer per series
assigned by the caller), ``ts`` (float64 epoch seconds) and ``value`` (float64).  Window ``k`` of
length ``W`` covers ``[k*W, (k+1)*W)`` (aligned to the epoch).

Lateness policy
---------------
The *watermark* is ``max event time seen - allowed_lateness_s`` (it never goes back).  A window is
closed and emitted as soon as ``window end <= watermark``.  An event whose window is already closed
when its batch arrives is *late*: it is not aggregated, it is counted, and its index in the batch is
returned (``ClosedWindows.late_idx``) so the caller can dead-letter it with reason ``ts_too_old``.
Events with a non-finite ``ts``/``value`` are returned in ``ClosedWindows.invalid_idx``.

Features per (series, window) -- all float64 except ``count``/``gap`` (int64):

``count, mean, std`` (population, ddof=0), ``min, max, last`` (value with the largest ts, ties
broken by arrival order), ``slope`` (least squares of value on time in the window, units/second,
0 when the window has a single distinct time), ``change`` (mean minus the mean of the previous
closed window of the same series, 0 for a series' first window) and ``gap`` (number of windows
missing between this one and the series' previous closed window, 0 for the first one).

Implementation: events become partial aggregates (count, mean, M2, mean of time, M2 of time,
co-moment, min, max, last) grouped with ``np.bincount`` / ``np.minimum.at`` (no sort when the key
space is dense), merged with the open partials using the parallel (Chan) formulas -- no Python loop
over events or series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FEATURES", "ClosedWindows", "WindowAggregator", "window_features"]

#: Names of the per-window feature columns, in output order.
FEATURES: tuple[str, ...] = (
    "count",
    "mean",
    "std",
    "min",
    "max",
    "last",
    "slope",
    "change",
    "gap",
)

_PARTS = ("n", "mv", "m2v", "mt", "m2t", "ctv", "vmin", "vmax", "tlast", "vlast", "seqlast")


@dataclass
class ClosedWindows:
    """Windows closed by one ``push``/``flush``.

    Attributes
    ----------
    series : numpy.ndarray
        int64, shape (m,), series code of each closed window (sorted by series, then start).
    start, end : numpy.ndarray
        float64, shape (m,), window bounds in epoch seconds (``[start, end)``).
    features : dict of str to numpy.ndarray
        One column per name in :data:`FEATURES`, shape (m,).
    late_idx : numpy.ndarray
        int64 indices (into the pushed batch) of late events (reason ``ts_too_old``).
    invalid_idx : numpy.ndarray
        int64 indices of events with a non-finite ts or value.
    watermark : float
        Watermark after the push.
    """

    series: np.ndarray
    start: np.ndarray
    end: np.ndarray
    features: dict[str, np.ndarray]
    late_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    invalid_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    watermark: float = -np.inf

    def __len__(self) -> int:
        return int(self.series.size)

    @property
    def n_late(self) -> int:
        """Number of late events in the batch."""
        return int(self.late_idx.size)

    def columns(self) -> dict[str, np.ndarray]:
        """Feature columns plus ``series``, ``start``, ``end`` (the detectors' input ``X``)."""
        out = {"series": self.series, "start": self.start, "end": self.end}
        out.update(self.features)
        return out

    @staticmethod
    def concat(parts: list[ClosedWindows]) -> ClosedWindows:
        """Concatenate several results (e.g. a push followed by a flush)."""
        if not parts:
            return _empty_closed(-np.inf)
        cat = np.concatenate
        return ClosedWindows(
            cat([p.series for p in parts]),
            cat([p.start for p in parts]),
            cat([p.end for p in parts]),
            {k: cat([p.features[k] for p in parts]) for k in FEATURES},
            cat([p.late_idx for p in parts]),
            cat([p.invalid_idx for p in parts]),
            parts[-1].watermark,
        )


def _empty_closed(wm: float) -> ClosedWindows:
    e = np.empty(0)
    feats = {k: (np.empty(0, np.int64) if k in ("count", "gap") else e.copy()) for k in FEATURES}
    return ClosedWindows(np.empty(0, np.int64), e.copy(), e.copy(), feats, watermark=wm)


def _group(series: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group ids of (series, win) pairs; returns (gid, key_series, key_win), keys sorted."""
    if series.size == 0:
        z = np.empty(0, np.int64)
        return z, z, z
    s0, s1 = int(series.min()), int(series.max())
    w0, w1 = int(win.min()), int(win.max())
    ns, nw = s1 - s0 + 1, w1 - w0 + 1
    if ns * nw <= 4 * series.size + 1024:  # dense key space: no sort
        key = (series - s0) * nw + (win - w0)
        present = np.bincount(key, minlength=ns * nw) > 0
        uniq = np.flatnonzero(present)
        remap = np.cumsum(present) - 1
        gid = remap[key]
    else:
        key = np.stack([series, win])
        uniq_pairs, gid = np.unique(key, axis=1, return_inverse=True)
        gid = gid.reshape(-1)
        return gid, uniq_pairs[0].astype(np.int64), uniq_pairs[1].astype(np.int64)
    return gid, uniq // nw + s0, uniq % nw + w0


def _combine(gid: np.ndarray, m: int, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge partial aggregates that share a group id (parallel variance formulas)."""
    n = np.bincount(gid, weights=p["n"], minlength=m)
    mv = np.bincount(gid, weights=p["n"] * p["mv"], minlength=m) / n
    mt = np.bincount(gid, weights=p["n"] * p["mt"], minlength=m) / n
    dv = p["mv"] - mv[gid]
    dt = p["mt"] - mt[gid]
    m2v = np.bincount(gid, weights=p["m2v"] + p["n"] * dv * dv, minlength=m)
    m2t = np.bincount(gid, weights=p["m2t"] + p["n"] * dt * dt, minlength=m)
    ctv = np.bincount(gid, weights=p["ctv"] + p["n"] * dt * dv, minlength=m)
    vmin = np.full(m, np.inf)
    np.minimum.at(vmin, gid, p["vmin"])
    vmax = np.full(m, -np.inf)
    np.maximum.at(vmax, gid, p["vmax"])
    # last = value at the largest time, ties -> largest arrival sequence number
    tlast = np.full(m, -np.inf)
    np.maximum.at(tlast, gid, p["tlast"])
    at_last = p["tlast"] == tlast[gid]
    seqlast = np.full(m, -1, dtype=np.int64)
    np.maximum.at(seqlast, gid[at_last], p["seqlast"][at_last])
    pick = np.flatnonzero(at_last & (p["seqlast"] == seqlast[gid]))
    vlast = np.empty(m)
    vlast[gid[pick]] = p["vlast"][pick]
    return {
        "n": n, "mv": mv, "m2v": m2v, "mt": mt, "m2t": m2t, "ctv": ctv,
        "vmin": vmin, "vmax": vmax, "tlast": tlast, "vlast": vlast, "seqlast": seqlast,
    }  # fmt: skip


def _grow(a: np.ndarray, size: int, fill) -> np.ndarray:
    if a.size >= size:
        return a
    out = np.full(max(size, 2 * a.size, 16), fill, dtype=a.dtype)
    out[: a.size] = a
    return out


class WindowAggregator:
    """Event-time tumbling-window aggregator with explicit, checkpointable state.

    Parameters
    ----------
    window_s : float
        Window length in seconds (> 0).
    allowed_lateness_s : float
        How far behind the maximum event time seen an event may be and still be aggregated (>= 0).

    Examples
    --------
    >>> import numpy as np
    >>> agg = WindowAggregator(window_s=60.0, allowed_lateness_s=0.0)
    >>> s = np.array([0, 0, 1, 0], dtype=np.int64)
    >>> out = agg.push(s, np.array([0.0, 30.0, 10.0, 65.0]), np.array([1.0, 3.0, 5.0, 7.0]))
    >>> out.series.tolist(), out.features["mean"].tolist(), out.features["last"].tolist()
    ([0, 1], [2.0, 5.0], [3.0, 5.0])
    >>> late = agg.push(s[:1], np.array([59.0]), np.array([9.0]))  # window [0, 60) is closed
    >>> late.late_idx.tolist(), agg.n_late
    ([0], 1)
    >>> agg.flush().features["change"].tolist()  # series 0: 7.0 - 2.0
    [5.0]
    """

    def __init__(self, window_s: float = 60.0, allowed_lateness_s: float = 0.0) -> None:
        if not np.isfinite(window_s) or window_s <= 0:
            raise ValueError(f"window_s must be a positive number, got {window_s!r}")
        if not np.isfinite(allowed_lateness_s) or allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {allowed_lateness_s!r}")
        self.window_s = float(window_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.max_ts = -np.inf
        self.closed_upto = np.iinfo(np.int64).min  # windows with index < this are closed
        self.n_late = 0
        self.n_events = 0
        self._seq = 0
        self._open_series = np.empty(0, np.int64)
        self._open_win = np.empty(0, np.int64)
        self._open = {k: np.empty(0, np.int64 if k == "seqlast" else np.float64) for k in _PARTS}
        self._prev_mean = np.empty(0)
        self._prev_win = np.empty(0, np.int64)

    # ------------------------------------------------------------------ properties
    @property
    def watermark(self) -> float:
        """Max event time seen minus the allowed lateness (``-inf`` before any event)."""
        return self.max_ts - self.allowed_lateness_s

    @property
    def n_open(self) -> int:
        """Number of open (series, window) aggregates."""
        return int(self._open_series.size)

    # ------------------------------------------------------------------ main API
    def push(self, series: np.ndarray, ts: np.ndarray, value: np.ndarray) -> ClosedWindows:
        """Add one micro-batch; return the windows it closes and the late events.

        Parameters
        ----------
        series : numpy.ndarray
            int64 codes, shape (n,), ``>= 0``.
        ts : numpy.ndarray
            float64 epoch seconds, shape (n,).
        value : numpy.ndarray
            float64, shape (n,).
        """
        series = np.asarray(series)
        ts = np.asarray(ts, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        if not (series.ndim == ts.ndim == value.ndim == 1) or not (
            series.size == ts.size == value.size
        ):
            raise ValueError("series, ts and value must be 1-D arrays of equal length")
        if series.size and not np.issubdtype(series.dtype, np.integer):
            raise TypeError(f"series must be integer codes, got {series.dtype}")
        series = series.astype(np.int64, copy=False)
        if series.size and series.min() < 0:
            raise ValueError("series codes must be >= 0")
        seq = self._seq + np.arange(series.size, dtype=np.int64)
        self._seq += series.size
        ok = np.isfinite(ts) & np.isfinite(value)
        invalid_idx = np.flatnonzero(~ok)
        win = np.floor(np.where(ok, ts, 0.0) / self.window_s).astype(np.int64)
        late = ok & (win < self.closed_upto)
        late_idx = np.flatnonzero(late)
        keep = np.flatnonzero(ok & ~late)
        self.n_late += late_idx.size
        self.n_events += keep.size
        if keep.size:
            self.max_ts = max(self.max_ts, float(ts[keep].max()))
            self._absorb(series[keep], win[keep], ts[keep], value[keep], seq[keep])
        out = self._close(self._closable_upto())
        out.late_idx = late_idx
        out.invalid_idx = invalid_idx
        return out

    def flush(self) -> ClosedWindows:
        """Close every open window (end of a backtest or shutdown)."""
        if self._open_win.size == 0:
            return _empty_closed(self.watermark)
        return self._close(int(self._open_win.max()) + 1)

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict:
        """Plain, picklable checkpoint of the whole aggregator."""
        return {
            "version": 1,
            "window_s": self.window_s,
            "allowed_lateness_s": self.allowed_lateness_s,
            "max_ts": self.max_ts,
            "closed_upto": int(self.closed_upto),
            "n_late": int(self.n_late),
            "n_events": int(self.n_events),
            "seq": int(self._seq),
            "open_series": self._open_series.copy(),
            "open_win": self._open_win.copy(),
            "open": {k: v.copy() for k, v in self._open.items()},
            "prev_mean": self._prev_mean.copy(),
            "prev_win": self._prev_win.copy(),
        }

    @classmethod
    def from_state(cls, state: dict) -> WindowAggregator:
        """Rebuild an aggregator from :meth:`to_state` output."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported WindowAggregator state version {state.get('version')!r}")
        agg = cls(state["window_s"], state["allowed_lateness_s"])
        agg.max_ts = float(state["max_ts"])
        agg.closed_upto = int(state["closed_upto"])
        agg.n_late = int(state["n_late"])
        agg.n_events = int(state["n_events"])
        agg._seq = int(state["seq"])
        agg._open_series = np.asarray(state["open_series"], np.int64).copy()
        agg._open_win = np.asarray(state["open_win"], np.int64).copy()
        agg._open = {k: np.asarray(v).copy() for k, v in state["open"].items()}
        agg._prev_mean = np.asarray(state["prev_mean"], np.float64).copy()
        agg._prev_win = np.asarray(state["prev_win"], np.int64).copy()
        return agg

    # ------------------------------------------------------------------ internals
    def _closable_upto(self) -> int:
        if not np.isfinite(self.watermark):
            return self.closed_upto
        # window k is closable when (k+1)*W <= watermark
        return max(self.closed_upto, int(np.floor(self.watermark / self.window_s)))

    def _absorb(self, s, w, t, v, seq) -> None:
        n = s.size
        trel = t - w * self.window_s
        ev = {
            "n": np.ones(n), "mv": v, "m2v": np.zeros(n), "mt": trel, "m2t": np.zeros(n),
            "ctv": np.zeros(n), "vmin": v, "vmax": v, "tlast": trel, "vlast": v, "seqlast": seq,
        }  # fmt: skip
        if self._open_series.size:
            s = np.concatenate([self._open_series, s])
            w = np.concatenate([self._open_win, w])
            ev = {k: np.concatenate([self._open[k], ev[k]]) for k in _PARTS}
        gid, ks, kw = _group(s, w)
        self._open = _combine(gid, ks.size, ev)
        self._open_series, self._open_win = ks, kw

    def _close(self, upto: int) -> ClosedWindows:
        self.closed_upto = max(self.closed_upto, upto)
        sel = self._open_win < self.closed_upto
        if not sel.any():
            return _empty_closed(self.watermark)
        keep = ~sel
        s, w = self._open_series[sel], self._open_win[sel]
        p = {k: v[sel] for k, v in self._open.items()}
        self._open_series, self._open_win = self._open_series[keep], self._open_win[keep]
        self._open = {k: v[keep] for k, v in self._open.items()}
        order = np.lexsort((w, s))  # by series then window
        s, w = s[order], w[order]
        p = {k: v[order] for k, v in p.items()}
        n = p["n"]
        mean = p["mv"]
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(p["m2t"] > 0, p["ctv"] / p["m2t"], 0.0)
        # previous window of the same series: within this batch, else from state
        smax = int(s.max()) + 1
        self._prev_mean = _grow(self._prev_mean, smax, np.nan)
        self._prev_win = _grow(self._prev_win, smax, -1)
        first = np.ones(s.size, dtype=bool)
        first[1:] = s[1:] != s[:-1]
        prev_mean = np.empty(s.size)
        prev_win = np.empty(s.size, np.int64)
        prev_mean[1:], prev_win[1:] = mean[:-1], w[:-1]
        prev_mean[first] = self._prev_mean[s[first]]
        prev_win[first] = self._prev_win[s[first]]
        has_prev = prev_win >= 0
        change = np.where(has_prev, mean - np.where(has_prev, prev_mean, 0.0), 0.0)
        gap = np.where(has_prev, w - prev_win - 1, 0).astype(np.int64)
        lastpos = np.ones(s.size, dtype=bool)
        lastpos[:-1] = s[1:] != s[:-1]
        self._prev_mean[s[lastpos]] = mean[lastpos]
        self._prev_win[s[lastpos]] = w[lastpos]
        feats = {
            "count": n.astype(np.int64),
            "mean": mean,
            "std": np.sqrt(np.maximum(p["m2v"], 0.0) / n),
            "min": p["vmin"],
            "max": p["vmax"],
            "last": p["vlast"],
            "slope": slope,
            "change": change,
            "gap": gap,
        }
        start = w * self.window_s
        return ClosedWindows(s, start, start + self.window_s, feats, watermark=self.watermark)


def window_features(
    series: np.ndarray, ts: np.ndarray, value: np.ndarray, window_s: float
) -> ClosedWindows:
    """Features of every window of a complete, finite data set (training / offline use).

    Same code path as the live aggregator: one ``push`` with infinite lateness, then ``flush``.

    >>> out = window_features(np.array([0, 0]), np.array([0.0, 90.0]), np.array([1.0, 2.0]), 60.0)
    >>> out.features["gap"].tolist(), out.features["change"].tolist()
    ([0, 0], [0.0, 1.0])
    """
    agg = WindowAggregator(window_s=window_s, allowed_lateness_s=np.finfo(np.float64).max)
    return ClosedWindows.concat([agg.push(series, ts, value), agg.flush()])
