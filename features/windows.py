"""Event-time tumbling windows over columnar micro-batches.

One code path computes window features live (detect stage), in backtests and in training.

Input batches are three aligned 1-D columns: ``series`` (int64 codes, a stable integer per series
assigned by the caller), ``ts`` (float64 epoch seconds) and ``value`` (float64).  Window ``k`` of
length ``W`` covers ``[k*W, (k+1)*W)`` (aligned to the epoch).

Lateness policy (event-time state per host)
-------------------------------------------
Event time is kept per *host* (any grouping of series the caller passes as ``host`` codes; the
detect stage passes one code per ``tenant|host``, the Kafka key): a host's clock is the largest
``ts`` of its valid events, and its watermark is that clock minus ``allowed_lateness_s``.  The
windows of a host close when ``window end <= host watermark`` -- all series of the host at once
(:mod:`features.cross` relies on it), and no other host's clock takes part, so one tenant stamping
events minutes ahead (clock skew) cannot make another tenant's events late.

A host that stops sending must still get its windows closed: the *partition clock* (the largest
``ts`` of all hosts) closes every host's windows that end ``idle_close_s`` or more before it.
Choose ``idle_close_s`` larger than the accepted future skew plus a window plus the allowed lateness
(``core.settings`` enforces it), so no host stamping within the skew can close another host's
current window.  The cost: a silent host's last windows are emitted ``idle_close_s`` late, and a
host whose clock lags the partition's newest event by more than ``idle_close_s`` is late.

A partition that receives nothing at all (no clock moves) keeps its windows open; the caller
can close them by processing time with :meth:`WindowAggregator.advance` (the detect stage's
idle tick): every host's windows close as if its clock had moved on by the wall-clock time since
the partition's last event, up to the window holding its newest event.  A source that resumes
after that with timestamps inside a window so closed finds it late.

An event is *late* when its window is closed at the moment it arrives: its window index is below
the host's closed bound, i.e. the bound given by every valid event *before it* in the input order
(its host's clock, the partition clock, plus :meth:`WindowAggregator.flush`).  Late events are not
aggregated; they are counted and their indices returned (``ClosedWindows.late_idx``) so the caller
can dead-letter them with reason ``ts_too_old``.  Deciding per event, in input order, makes the
result a function of the event sequence only: any micro-batch split and any checkpoint/restore
point give the same windows and the same late events.  Clocks count every valid event (a late one
is behind its host's closed windows, so it moves no bound -- unless :meth:`WindowAggregator.flush`
closed windows ahead of the clocks).  Events with a non-finite ``ts``/``value`` are returned in
``ClosedWindows.invalid_idx`` and touch no clock.

Features per (series, window) -- all float64 except ``count``/``gap`` (int64):

``count, mean, std`` (population, ddof=0), ``min, max, last`` (value with the largest ts, ties
broken by arrival order), ``slope`` (least squares of value on time in the window, units/second,
0 when the window has a single distinct time), ``change`` (mean minus the mean of the previous
closed window of the same series, 0 for a series' first window) and ``gap`` (number of windows
missing between this one and the series' previous closed window, 0 for the first one).

Implementation: events become partial aggregates (count, mean, M2, mean of time, M2 of time,
co-moment, min, max, last) grouped with ``np.bincount`` / ``np.minimum.at`` (no sort when the key
space is dense), merged with the open partials using the parallel (Chan) formulas -- no Python loop
over events, series or hosts.  A host's clock is kept as the window index it closes up to (int64
array indexed by host code, grown as hosts appear); whether an earlier event of the same batch
closed an event's window is only worked out when some earlier event of any host could have, and
then for those hosts only, with a first-position table per (host, closing level) (a stable sort
by host when that table would be sparse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

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
        Partition watermark after the push (the partition clock minus the allowed lateness);
        windows close by their host's bound (:meth:`WindowAggregator.closed_upto`).

    Examples
    --------
    >>> cw = window_features(np.array([1, 0, 0]), np.array([5.0, 0.0, 70.0]),
    ...                      np.array([4.0, 1.0, 2.0]), window_s=60.0)
    >>> len(cw), cw.series.tolist(), cw.start.tolist(), cw.end.tolist()
    (3, [0, 0, 1], [0.0, 60.0, 0.0], [60.0, 120.0, 60.0])
    >>> cw.features["count"].dtype, cw.features["mean"].dtype
    (dtype('int64'), dtype('float64'))
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
        """Feature columns plus ``series``, ``start``, ``end`` (the detectors' input ``X``).

        >>> cw = window_features(np.array([0]), np.array([0.0]), np.array([1.0]), 60.0)
        >>> list(cw.columns()) == ["series", "start", "end", *FEATURES]
        True
        """
        out = {"series": self.series, "start": self.start, "end": self.end}
        out.update(self.features)
        return out

    @staticmethod
    def concat(parts: list[ClosedWindows]) -> ClosedWindows:
        """Concatenate several results (e.g. a push followed by a flush).

        >>> agg = WindowAggregator(window_s=60.0, allowed_lateness_s=0.0)
        >>> pushed = agg.push(np.array([0, 0]), np.array([0.0, 65.0]), np.array([1.0, 3.0]))
        >>> both = ClosedWindows.concat([pushed, agg.flush()])
        >>> len(pushed), both.start.tolist(), both.features["change"].tolist()
        (1, [0.0, 60.0], [0.0, 2.0])
        """
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


#: "no bound": below every window index, and far enough from the int64 limits for arithmetic
_NONE = -(2**62)
_TOP = 2**62


def _level(x, shift: float, window_s: float) -> np.ndarray:
    """``floor((x - shift) / window_s)`` as int64 (``x``: finite float64 array): windows with an
    index below it are closed by a clock at ``x`` with lateness ``shift``."""
    q = np.floor((x - shift) / window_s)
    np.clip(q, _NONE, _TOP, out=q)
    return q.astype(np.int64)


def _level1(x: float, shift: float, window_s: float) -> int:
    """:func:`_level` of one clock; :data:`_NONE` for ``-inf`` (no event yet)."""
    if not math.isfinite(x):
        return _NONE if x < 0 else _TOP
    return int(min(max(math.floor((x - shift) / window_s), _NONE), _TOP))


def _late_in_order(host: np.ndarray, level: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Events closed by an *earlier* event of the same host in this batch.

    ``late[i]`` is true when some ``j < i`` with ``host[j] == host[i]`` has
    ``level[j] > win[i]`` (``level`` is :data:`_NONE` for events that move no clock).  Dense
    (host, level) spaces use a first-position table -- no sort; sparse ones (a host days behind
    another) a stable sort by host.

    >>> h = np.array([0, 0, 1, 0]); lv = np.array([3, 0, 0, 0]); w = np.array([3, 2, 2, 3])
    >>> _late_in_order(h, lv, w).tolist()
    [False, True, False, False]
    """
    n = host.size
    moves = level > _NONE
    if n < 2 or not moves.any():
        return np.zeros(n, bool)
    h0, h1 = int(host.min()), int(host.max())
    l0, l1 = int(level[moves].min()), int(level[moves].max())
    nh, nl = h1 - h0 + 1, l1 - l0 + 1
    if nh * nl > 4 * n + 1024:
        return _late_in_order_sorted(host, level, win)
    pos = np.arange(n, dtype=np.int64)
    row = (host - h0) * (nl + 1)
    # first[h, k]: first position where host h reaches level l0 + k; then the first position of
    # any level above each k (suffix minimum), with a column "above every level" = never
    first = np.full(nh * (nl + 1), n, np.int64)
    if moves.all():
        np.minimum.at(first, row + (level - l0), pos)
    else:
        np.minimum.at(first, row[moves] + (level[moves] - l0), pos[moves])
    if nl > 1:
        first = np.minimum.accumulate(first.reshape(nh, nl + 1)[:, ::-1], axis=1)[:, ::-1].ravel()
    col = np.clip(win - l0 + 1, 0, nl)  # first level above win[i]
    return first[row + col] < pos


def _late_in_order_sorted(host: np.ndarray, level: np.ndarray, win: np.ndarray) -> np.ndarray:
    """:func:`_late_in_order` for sparse (host, level) spaces: the exclusive running maximum of
    ``level`` within each host (stable sort by host, one ``maximum.accumulate`` with the hosts'
    segments kept apart by offsets)."""
    n = host.size
    order = np.argsort(host, kind="stable")
    hs, lv = host[order], level[order]
    moves = lv > _NONE
    start = np.empty(n, bool)
    start[0] = True
    np.not_equal(hs[1:], hs[:-1], out=start[1:])
    seg = np.cumsum(start) - 1
    uniq, rank = np.unique(lv[moves], return_inverse=True)  # ranks 1.. keep the offsets small
    r = np.zeros(n, np.int64)
    r[moves] = rank.reshape(-1) + 1
    off = seg * (uniq.size + 1)
    acc = np.maximum.accumulate(r + off)
    prev = np.zeros(n, np.int64)  # rank of the running max before each event (0: none)
    prev[1:] = acc[:-1] - off[1:]
    prev[start] = 0
    before = np.full(n, _NONE, np.int64)
    has = prev > 0
    before[has] = uniq[prev[has] - 1]
    late = np.empty(n, bool)
    late[order] = has & (win[order] < before)
    return late


class WindowAggregator:
    """Event-time tumbling-window aggregator with explicit, checkpointable state.

    Parameters
    ----------
    window_s : float
        Window length in seconds (> 0).
    allowed_lateness_s : float
        How far behind its host's clock an event may be and still be aggregated (>= 0).
    idle_close_s : float or None
        How far behind the partition clock a host's windows are closed even if the host sent
        nothing since (>= ``allowed_lateness_s``); ``None``: never (only the host's own clock and
        :meth:`flush` close them).

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

    With ``host`` codes, each host's clock closes its own windows only:

    >>> agg = WindowAggregator(window_s=60.0, allowed_lateness_s=0.0, idle_close_s=600.0)
    >>> out = agg.push(np.array([0, 1, 1]), np.array([10.0, 20.0, 400.0]), np.ones(3),
    ...                host=np.array([0, 1, 1]))  # host 1 runs 6 minutes ahead
    >>> out.series.tolist(), agg.closed_upto().tolist()  # host 0's window [0, 60) stays open
    ([1], [0, 6])
    >>> agg.push(np.array([0]), np.array([30.0]), np.ones(1), host=np.array([0])).n_late
    0
    """

    STATE_VERSION = 2

    def __init__(
        self,
        window_s: float = 60.0,
        allowed_lateness_s: float = 0.0,
        idle_close_s: float | None = None,
    ) -> None:
        if not np.isfinite(window_s) or window_s <= 0:
            raise ValueError(f"window_s must be a positive number, got {window_s!r}")
        if not np.isfinite(allowed_lateness_s) or allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {allowed_lateness_s!r}")
        if idle_close_s is not None and not (
            np.isfinite(idle_close_s) and idle_close_s >= allowed_lateness_s
        ):
            raise ValueError(
                f"idle_close_s must be a number >= allowed_lateness_s "
                f"({allowed_lateness_s!r}) or None, got {idle_close_s!r}"
            )
        self.window_s = float(window_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.idle_close_s = None if idle_close_s is None else float(idle_close_s)
        self.max_ts = -np.inf  # the partition clock
        self.n_late = 0
        self.n_events = 0
        self._seq = 0
        self._n_hosts = 0
        self._host_of = np.empty(0, np.int64)  # per series code; -1 = not seen
        # per host code: windows with an index below it are closed (the host's clock minus the
        # lateness, in windows; raised by the partition clock and by flush)
        self._host_closed = np.empty(0, np.int64)
        self._dirty = False  # a bound moved since the last close
        self._open_series = np.empty(0, np.int64)
        self._open_win = np.empty(0, np.int64)
        self._open = {k: np.empty(0, np.int64 if k == "seqlast" else np.float64) for k in _PARTS}
        self._prev_mean = np.empty(0)
        self._prev_win = np.empty(0, np.int64)

    # ------------------------------------------------------------------ properties
    @property
    def watermark(self) -> float:
        """The partition clock (max event time of all hosts) minus the allowed lateness."""
        return self.max_ts - self.allowed_lateness_s

    def closed_upto(self) -> np.ndarray:
        """int64, shape (hosts seen,): per host code, windows with an index below it are closed."""
        return np.maximum(self._host_closed[: self._n_hosts], self._idle_level())

    @property
    def n_open(self) -> int:
        """Number of open (series, window) aggregates."""
        return int(self._open_series.size)

    # ------------------------------------------------------------------ main API
    def push(
        self, series: np.ndarray, ts: np.ndarray, value: np.ndarray, host: np.ndarray | None = None
    ) -> ClosedWindows:
        """Add one micro-batch (in input order); return the windows it closes and the late events.

        Parameters
        ----------
        series : numpy.ndarray
            int64 codes, shape (n,), ``>= 0``.
        ts : numpy.ndarray
            float64 epoch seconds, shape (n,).
        value : numpy.ndarray
            float64, shape (n,).
        host : numpy.ndarray, optional
            int64 codes, shape (n,), ``>= 0``: the event-time group of each event (small, dense
            codes; a series always has the same host).  ``None``: one host for every series.
        """
        series = np.asarray(series)
        ts = np.asarray(ts, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        n = series.size
        if not (series.ndim == ts.ndim == value.ndim == 1) or not (n == ts.size == value.size):
            raise ValueError("series, ts and value must be 1-D arrays of equal length")
        if n and not np.issubdtype(series.dtype, np.integer):
            raise TypeError(f"series must be integer codes, got {series.dtype}")
        series = series.astype(np.int64, copy=False)
        if n and series.min() < 0:
            raise ValueError("series codes must be >= 0")
        h = self._hosts(series, host)
        seq = self._seq + np.arange(n, dtype=np.int64)
        self._seq += n
        ok = np.isfinite(ts) & np.isfinite(value)
        all_ok = bool(ok.all())
        invalid_idx = np.flatnonzero(~ok)
        if not (all_ok and n):
            if not ok.any():
                out = self._close()
                out.invalid_idx = invalid_idx
                return out
        tz = ts if all_ok else np.where(ok, ts, 0.0)
        win = np.floor(tz / self.window_s).astype(np.int64)
        tmax = float(ts.max() if all_ok else ts[ok].max())
        wmin = int(win.min() if all_ok else win[ok].min())
        # lateness, per event in input order: the bound before the batch, raised by the earlier
        # events of the batch (the partition clock for every host, the host's clock for its own)
        idle = self._idle_level()
        closed = self._host_closed[h]  # holds the partition clock's bound too
        bound = closed
        if self.idle_close_s is not None:
            raised = _level1(tmax, self.idle_close_s, self.window_s)
            if raised > idle and raised > wmin:  # an event may fall behind the partition clock
                lv_idle = _level(tz, self.idle_close_s, self.window_s)
                if not all_ok:
                    lv_idle[~ok] = _NONE
                bound = closed.copy()
                np.maximum(bound[1:], np.maximum.accumulate(lv_idle[:-1]), out=bound[1:])
        late = win < bound
        if not all_ok:
            late &= ok
        top = _level1(tmax, self.allowed_lateness_s, self.window_s)
        lv = None
        if top > wmin:
            # an event may be closed by an earlier event of its host in this batch: only where
            # an earlier event of any host had a higher level; decided exactly for those hosts
            lv = _level(tz, self.allowed_lateness_s, self.window_s)
            if not all_ok:
                lv[~ok] = _NONE
            maybe = np.zeros(n, bool)
            np.less(win[1:], np.maximum.accumulate(lv[:-1]), out=maybe[1:])
            maybe &= ~late
            if not all_ok:
                maybe &= ok
            if maybe.any():
                involved = np.zeros(self._host_closed.size, bool)
                involved[h[maybe]] = True
                sub = np.flatnonzero(involved[h])
                late[sub] |= maybe[sub] & _late_in_order(h[sub], lv[sub], win[sub])
        late_idx = np.flatnonzero(late)
        keep = np.flatnonzero(~late if all_ok else ok & ~late)
        self.n_late += late_idx.size
        self.n_events += keep.size
        # the clocks count every valid event (a late one never moves a bound)
        if top > int(closed.min()):  # some host's bound moves
            if lv is None:
                lv = _level(tz, self.allowed_lateness_s, self.window_s)
                if not all_ok:
                    lv[~ok] = _NONE
            np.maximum.at(self._host_closed, h, lv)
            self._dirty = True
        if tmax > self.max_ts:
            self.max_ts = tmax
            if self._idle_level() > idle:
                np.maximum(self._host_closed, self._idle_level(), out=self._host_closed)
                self._dirty = True
        if keep.size:
            self._absorb(series[keep], win[keep], ts[keep], value[keep], seq[keep])
        out = self._close()
        out.late_idx = late_idx
        out.invalid_idx = invalid_idx
        return out

    def flush(self) -> ClosedWindows:
        """Close every open window (end of a backtest or shutdown): each host's windows up to its
        newest open one are closed for good."""
        if self._open_win.size == 0:
            return _empty_closed(self.watermark)
        np.maximum.at(self._host_closed, self._host_of[self._open_series], self._open_win + 1)
        self._dirty = True
        return self._close()

    def advance(self, seconds: float) -> ClosedWindows:
        """Close what each host's clock would close had it moved on by ``seconds`` with no event:
        the processing-time idle close (the caller's wall clock; see the module docstring).

        Per host with open windows, its clock (its newest event, found in its open windows) plus
        ``seconds`` minus the allowed lateness bounds the windows closed -- never past the window
        holding the host's newest event, so events after it are never made late.  The raised
        bounds are state (checkpointed): events behind them are late afterwards.

        >>> agg = WindowAggregator(window_s=60.0, allowed_lateness_s=30.0)
        >>> _ = agg.push(np.array([0, 0]), np.array([10.0, 70.0]), np.ones(2))
        >>> len(agg.advance(0.0)), agg.advance(19.0).start.tolist()  # 70 + 19 - 30 < 60
        (0, [])
        >>> agg.advance(20.0).start.tolist()  # 70 + 20 - 30 = 60: [0, 60) closes
        [0.0]
        >>> agg.advance(1e9).start.tolist(), agg.n_open  # at most up to the newest window
        ([60.0], 0)
        """
        seconds = float(seconds)
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        if self._open_win.size == 0:
            return _empty_closed(self.watermark)
        h = self._host_of[self._open_series]
        newest = np.full(self._n_hosts, -np.inf)
        np.maximum.at(newest, h, self._open_win * self.window_s + self._open["tlast"])
        top = np.full(self._n_hosts, _NONE, np.int64)
        np.maximum.at(top, h, self._open_win + 1)
        has = np.flatnonzero(top > _NONE)
        level = np.minimum(
            _level(newest[has] + seconds, self.allowed_lateness_s, self.window_s), top[has]
        )
        if (level > self._host_closed[has]).any():
            np.maximum.at(self._host_closed, has, level)
            self._dirty = True
        return self._close()

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict:
        """Plain, picklable checkpoint of the whole aggregator (version :attr:`STATE_VERSION`)."""
        return {
            "version": self.STATE_VERSION,
            "window_s": self.window_s,
            "allowed_lateness_s": self.allowed_lateness_s,
            "idle_close_s": self.idle_close_s,
            "max_ts": self.max_ts,
            "n_late": int(self.n_late),
            "n_events": int(self.n_events),
            "seq": int(self._seq),
            "n_hosts": int(self._n_hosts),
            "host_of": self._host_of.copy(),
            "host_closed": self._host_closed.copy(),
            "open_series": self._open_series.copy(),
            "open_win": self._open_win.copy(),
            "open": {k: v.copy() for k, v in self._open.items()},
            "prev_mean": self._prev_mean.copy(),
            "prev_win": self._prev_win.copy(),
        }

    _UNSET = object()

    @classmethod
    def from_state(
        cls,
        state: dict,
        host_of: np.ndarray | None = None,
        idle_close_s: float | None | object = _UNSET,
    ) -> WindowAggregator:
        """Rebuild an aggregator from :meth:`to_state` output.

        ``idle_close_s`` given replaces the checkpoint's (the running configuration wins; windows
        closed before stay closed).  A version-1 checkpoint (one clock per partition) restores too:
        its partition clock and closed bound become every known host's, with the host codes of its
        series from ``host_of`` (int64 per series code; ``None``: one host for all).
        """
        version = state.get("version")
        if version not in (1, cls.STATE_VERSION):
            raise ValueError(f"unsupported WindowAggregator state version {version!r}")
        if idle_close_s is cls._UNSET:
            idle_close_s = state.get("idle_close_s")
        agg = cls(
            state["window_s"], state["allowed_lateness_s"], cast("float | None", idle_close_s)
        )
        agg.max_ts = float(state["max_ts"])
        agg.n_late = int(state["n_late"])
        agg.n_events = int(state["n_events"])
        agg._seq = int(state["seq"])
        agg._open_series = np.asarray(state["open_series"], np.int64).copy()
        agg._open_win = np.asarray(state["open_win"], np.int64).copy()
        agg._open = {k: np.asarray(v).copy() for k, v in state["open"].items()}
        agg._prev_mean = np.asarray(state["prev_mean"], np.float64).copy()
        agg._prev_win = np.asarray(state["prev_win"], np.int64).copy()
        if version == cls.STATE_VERSION:
            agg._n_hosts = int(state["n_hosts"])
            agg._host_of = np.asarray(state["host_of"], np.int64).copy()
            agg._host_closed = np.asarray(state["host_closed"], np.int64).copy()
            agg._settle()
            return agg
        # version 1: the partition's clock and closed bound become every known host's
        n_series = max(agg._prev_win.size, int(agg._open_series.max()) + 1 if agg.n_open else 0)
        if host_of is None:
            host_of = np.zeros(n_series, np.int64)
        host_of = np.asarray(host_of, np.int64)
        if host_of.ndim != 1 or (host_of.size and host_of.min() < 0):
            raise ValueError("host_of must be a 1-D array of host codes >= 0")
        if agg.n_open and int(agg._open_series.max()) >= host_of.size:
            raise ValueError("host_of has no host code for every series with an open window")
        agg._host_of = host_of.copy()
        agg._n_hosts = int(host_of.max()) + 1 if host_of.size else 0
        closed = max(
            int(state["closed_upto"]), _level1(agg.max_ts, agg.allowed_lateness_s, agg.window_s)
        )
        agg._host_closed = np.full(agg._n_hosts, max(closed, _NONE), np.int64)
        agg._settle()
        return agg

    # ------------------------------------------------------------------ internals
    def _idle_level(self) -> int:
        """Windows below this are closed for every host by the partition clock."""
        if self.idle_close_s is None:
            return _NONE
        return _level1(self.max_ts, self.idle_close_s, self.window_s)

    def _hosts(self, series: np.ndarray, host: np.ndarray | None) -> np.ndarray:
        """Validated host code per event; registers the host of new series, grows the host
        arrays (new hosts start with no clock)."""
        n = series.size
        if host is None:
            h = np.zeros(n, np.int64)
        else:
            h = np.asarray(host)
            if h.shape != series.shape:
                raise ValueError("host must be a 1-D array as long as series")
            if n and not np.issubdtype(h.dtype, np.integer):
                raise TypeError(f"host must be integer codes, got {h.dtype}")
            h = h.astype(np.int64, copy=False)
            if n and h.min() < 0:
                raise ValueError("host codes must be >= 0")
        if not n:
            return h
        self._host_of = _grow(self._host_of, int(series.max()) + 1, -1)
        known = self._host_of[series]
        if not np.array_equal(known, h):  # new series (or a wrong code)
            self._host_of[series] = h
            if ((known >= 0) & (known != h)).any() or (self._host_of[series] != h).any():
                self._host_of[series] = known  # leave the state as it was
                raise ValueError("a series code must always have the same host code")
            nh = int(h.max()) + 1
            if nh > self._n_hosts:  # new hosts: closed by the partition clock only, for now
                self._n_hosts = nh
                self._host_closed = _grow(self._host_closed, nh, _NONE)
                np.maximum(self._host_closed, self._idle_level(), out=self._host_closed)
        return h

    def _settle(self) -> None:
        """After a restore: the partition clock's bound in every host's, a close pending."""
        np.maximum(self._host_closed, self._idle_level(), out=self._host_closed)
        self._dirty = True

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

    def _close(self) -> ClosedWindows:
        """Emit the open windows below their host's closed bound (none unless a bound moved:
        an event below its bound is late, so no open window starts below it)."""
        if not self._dirty or self._open_win.size == 0:
            return _empty_closed(self.watermark)
        self._dirty = False
        sel = self._open_win < self._host_closed[self._host_of[self._open_series]]
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
        smax = max(int(s.max()) + 1, self._host_of.size)  # every series seen: grow once
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
