"""Labelled window-feature datasets for training and evaluation.

A :class:`WindowDataset` is a set of closed windows (the columns of
:meth:`features.windows.ClosedWindows.columns`: ``series``, ``start``, ``end`` and every name in
:data:`features.windows.FEATURES`, plus the per-host cross-metric columns of
:data:`features.cross.CROSS_FEATURES`) plus, per series, labelled anomaly intervals in epoch
seconds.  Each series belongs to a host (``tenant/host``; a CSV file is a host of its own); the
cross-metric columns group the windows of a host by start, exactly as the live detect stage does.
Evaluation treats each series' windows, ordered by end time, as the rows of a NAB series
(:meth:`WindowDataset.labelled`), so the same metrics code scores CSV backtests and Postgres data.

Sources
-------
* :func:`from_csv` -- ``timestamp,value`` files (e.g. the NAB series in
  ``../shared/datasets/nab-dev``) windowed by :func:`features.windows.window_features`, the live
  code path; labels from a NAB ``windows.json``.
* :func:`from_postgres` -- rows of the ``features`` table written by the sink; labels from the
  ``feedback`` table (``true_positive`` feedback on an alert labels the alert's series and time
  span; ``false_positive`` feedback is kept as known-normal spans).  The cross-metric columns are
  the stored ones (what the live models saw); rows stored before they existed get them recomputed
  from their base features with :func:`features.cross.cross_metric_features`.
* :func:`from_frame` -- the same from a data frame of window rows (e.g. the detect stage's output
  in a simulation).
* :func:`inject_anomalies` -- synthetic spikes / level shifts / dropouts written into real
  history at the window-feature level, so a labelled set exists before anybody gave feedback;
  :func:`inject_host_incidents` -- the same on several metrics of one host at once.  Both
  recompute the cross-metric columns of every (host, window) group they touch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.cross import CROSS_FEATURES, cross_metric_features
from features.windows import FEATURES, window_features
from training.evaluate import LabelledSeries, load_windows

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = [
    "WindowDataset",
    "from_csv",
    "from_frame",
    "from_postgres",
    "inject_anomalies",
    "inject_host_incidents",
]

log = logging.getLogger(__name__)

Interval = tuple[float, float]


@dataclass
class WindowDataset:
    """Windows of several series with labelled anomaly intervals.

    Attributes
    ----------
    X : dict of str to numpy.ndarray
        ``series`` (int64 codes 0..k-1), ``start``/``end`` (float64 epoch s) and the feature
        columns, shape (n,) each, sorted by (series, start).
    names : list of str
        Name of each series code (``tenant/host/metric`` or the CSV's relative path).
    labels : dict of int to list of (start, end)
        Anomaly intervals per series code (epoch s, inclusive).
    normal : dict of int to list of (start, end)
        Intervals confirmed normal (false-positive feedback).
    window_s : dict of int to float
        Window length per series.
    hosts : numpy.ndarray, optional
        int64 host code of each series code, shape (n_series,); ``None``: every series is a host
        of its own.  When ``X`` lacks the cross-metric columns (and has the base ones) they are
        computed on creation.
    """

    X: dict[str, np.ndarray]
    names: list[str]
    labels: dict[int, list[Interval]] = field(default_factory=dict)
    normal: dict[int, list[Interval]] = field(default_factory=dict)
    window_s: dict[int, float] = field(default_factory=dict)
    hosts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.hosts is not None:
            self.hosts = np.asarray(self.hosts, np.int64)
            if self.hosts.shape != (self.n_series,):
                raise ValueError(
                    f"hosts needs one code per series ({self.n_series}), "
                    f"got shape {self.hosts.shape}"
                )
        inputs = ("start", "count", "mean", "std", "change")
        if any(k not in self.X for k in CROSS_FEATURES) and all(k in self.X for k in inputs):
            self.X.update(self.cross_features())

    def __len__(self) -> int:
        return int(self.X["series"].size)

    def host_codes(self) -> np.ndarray:
        """int64 (n,): host code of each window (its series code when ``hosts`` is None)."""
        s = np.asarray(self.X["series"], np.int64)
        return s.copy() if self.hosts is None else self.hosts[s]

    def cross_features(self) -> dict[str, np.ndarray]:
        """The cross-metric columns recomputed from the base window features of ``X``."""
        return cross_metric_features(self.host_codes(), self.X["start"], self.X)

    def refresh_cross_features(self, rows: np.ndarray) -> None:
        """Recompute the cross-metric columns of every (host, start) group holding ``rows``.

        ``rows``: bool mask (n,) or indices of windows whose base features changed.
        """
        rows = np.asarray(rows)
        if rows.dtype != bool:
            mask = np.zeros(len(self), dtype=bool)
            mask[rows] = True
            rows = mask
        if not rows.any():
            return
        key = np.stack(
            [self.host_codes().astype(np.float64), np.asarray(self.X["start"], np.float64)]
        )
        _, gid = np.unique(key, axis=1, return_inverse=True)
        gid = gid.reshape(-1)
        touched = np.zeros(int(gid.max()) + 1, dtype=bool)
        touched[gid[rows]] = True
        sel = touched[gid]
        new = self.cross_features()
        for k, v in new.items():
            col = np.asarray(self.X[k]).astype(v.dtype, copy=True)
            col[sel] = v[sel]
            self.X[k] = col

    @property
    def n_series(self) -> int:
        return len(self.names)

    def matrix(self, features: tuple[str, ...] = FEATURES) -> np.ndarray:
        """float64 (n, len(features)) feature matrix (NaN -> 0), row order of ``X``."""
        return np.nan_to_num(np.column_stack([np.asarray(self.X[f], np.float64) for f in features]))

    def is_anomalous(self) -> np.ndarray:
        """bool (n,): the window overlaps a labelled interval of its series."""
        out = np.zeros(len(self), dtype=bool)
        s, a, b = self.X["series"], self.X["start"], self.X["end"]
        for code, ivs in self.labels.items():
            m = s == code
            for lo, hi in ivs:
                out |= m & (a <= hi) & (b > lo)
        return out

    def training_rows(self) -> np.ndarray:
        """Indices of windows to fit on: everything not labelled anomalous."""
        return np.flatnonzero(~self.is_anomalous())

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.X.items()}

    def labelled(self, scores: np.ndarray, probation: float = 0.15) -> list[LabelledSeries]:
        """One :class:`LabelledSeries` per series: windows as rows (time = window end).

        Series with fewer than 10 windows are left out (nothing meaningful to score).
        """
        scores = np.asarray(scores, np.float64)
        if scores.shape != (len(self),):
            raise ValueError(f"need one score per window ({len(self)}), got {scores.shape}")
        out: list[LabelledSeries] = []
        s = self.X["series"]
        for code, name in enumerate(self.names):
            idx = np.flatnonzero(s == code)
            if idx.size < 10:
                continue
            idx = idx[np.argsort(self.X["end"][idx], kind="stable")]
            ts = (self.X["end"][idx] * 1e9).astype("datetime64[ns]")
            wins = [
                (np.datetime64(int(lo * 1e9), "ns"), np.datetime64(int(hi * 1e9), "ns"))
                for lo, hi in sorted(self.labels.get(code, []))
            ]
            out.append(LabelledSeries(name, ts, scores[idx], _merge(wins), probation))
        return out

    def series_days(self) -> float:
        """Total observed time over all series, in days (denominator of alert volume)."""
        s = self.X["series"]
        first = np.full(self.n_series, np.inf)
        last = np.full(self.n_series, -np.inf)
        np.minimum.at(first, s, self.X["start"])
        np.maximum.at(last, s, self.X["end"])
        span = np.where(np.isfinite(first), last - first, 0.0)
        return float(span.sum() / 86400.0)

    def summary(self) -> dict[str, float | int]:
        """Sizes worth logging with a run."""
        return {
            "windows": len(self),
            "series": self.n_series,
            "labelled_intervals": sum(len(v) for v in self.labels.values()),
            "anomalous_windows": int(self.is_anomalous().sum()),
            "series_days": round(self.series_days(), 3),
        }


def _merge(wins: list) -> list:
    """Sort and merge overlapping intervals (the NAB metrics want them disjoint)."""
    out: list = []
    for a, b in sorted(wins):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _sort(X: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((X["start"], X["series"]))
    return {k: np.asarray(v)[order] for k, v in X.items()}


# --- CSV ------------------------------------------------------------------------------------


def from_csv(
    paths: list[Path] | Path,
    windows_json: Path | None = None,
    window_s: float | None = None,
    points_per_window: int = 6,
) -> WindowDataset:
    """Window features of ``timestamp,value`` CSV files (files or directory trees).

    Parameters
    ----------
    paths : path or list of paths
    windows_json : path, optional
        NAB ``windows.json``; keys are matched to the files' paths relative to the given
        directory (or their suffix).
    window_s : float, optional
        One window length for every file; default ``points_per_window`` times each file's own
        sampling interval (median positive timestamp difference).
    """
    from training.backtest import _interval, _match_windows, discover_csvs

    files = discover_csvs([Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)])
    wins = load_windows(windows_json) if windows_json else {}
    parts: list[dict[str, np.ndarray]] = []
    names: list[str] = []
    labels: dict[int, list[Interval]] = {}
    wlen: dict[int, float] = {}
    for code, (f, rel) in enumerate(files):
        df = pd.read_csv(f)
        if not {"timestamp", "value"} <= set(df.columns):
            raise ValueError(f"{f}: expected columns timestamp,value")
        ts = pd.to_datetime(df["timestamp"]).to_numpy("datetime64[ns]").astype(np.int64) / 1e9
        w = float(window_s or points_per_window * _interval(ts))
        cw = window_features(np.full(ts.size, code, np.int64), ts, df["value"].to_numpy(float), w)
        parts.append(cw.columns())
        names.append(rel)
        wlen[code] = w
        lab = _match_windows(rel, wins) if wins else None
        if lab:
            labels[code] = [
                (pd.Timestamp(a).timestamp(), pd.Timestamp(b).timestamp()) for a, b in lab
            ]
    X = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return WindowDataset(_sort(X), names, labels, {}, wlen)


# --- PostgreSQL -----------------------------------------------------------------------------


def from_postgres(
    settings: Settings,
    tenant: str | None = None,
    since: float | None = None,
    until: float | None = None,
    label_pad_s: float = 0.0,
) -> WindowDataset:
    """Windows of the ``features`` table plus ``feedback`` labels (read-only).

    Parameters
    ----------
    settings : Settings
        Connection to the EventOps database.
    tenant : str, optional
        Only this tenant's series.
    since, until : float, optional
        Window-end range, epoch seconds.
    label_pad_s : float
        Seconds added on both sides of every feedback span.

    When a series has several labels the latest feedback per alert wins (a correction replaces
    an earlier label).  Works before the ``feedback`` table exists (no labels then).
    """
    import psycopg

    from storage.feedback import load_labels
    from storage.series import load_features

    with psycopg.connect(settings.pg_dsn(), connect_timeout=10) as conn:
        # before migration 007 the cross-metric columns come back NULL and are all recomputed
        rows = load_features(conn, tenant, since, until)
        fb = load_labels(conn, tenant, label_pad_s)
    if not rows:
        raise ValueError("no rows in the features table for this selection")
    df = pd.DataFrame(
        rows, columns=["tenant_id", "host", "metric", "start", "end", *FEATURES, *CROSS_FEATURES]
    )
    ds = from_frame(df)
    code_of = {n: i for i, n in enumerate(ds.names)}
    # the latest label per (series, span) wins
    latest: dict[tuple[int, float, float], str] = {}
    for t, h, m, label, lo, hi in fb:
        c = code_of.get(f"{t}/{h}/{m}")
        if c is not None:
            latest[(c, lo, hi)] = label
    for (c, lo, hi), label in latest.items():
        (ds.labels if label == "true_positive" else ds.normal).setdefault(c, []).append((lo, hi))
    return ds


def from_frame(
    df: pd.DataFrame,
    labels: dict[str, list[Interval]] | None = None,
    normal: dict[str, list[Interval]] | None = None,
) -> WindowDataset:
    """Dataset of window rows given as a data frame (one row per window).

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``tenant_id, host, metric, start, end`` (epoch s) and every name in
        :data:`features.windows.FEATURES`; optionally the :data:`features.cross.CROSS_FEATURES`
        columns as stored (NaN/None where not stored: recomputed from the base features, as are
        all of them when the columns are absent).
    labels, normal : dict of str to list of (start, end), optional
        Anomalous / confirmed-normal intervals per series name ``tenant/host/metric``.

    Series codes follow the sorted names; host codes the sorted ``tenant/host``.
    """
    key = df["tenant_id"] + "/" + df["host"] + "/" + df["metric"]
    codes, uniq = pd.factorize(key, sort=True)
    names = [str(u) for u in uniq]
    hcodes, _ = pd.factorize(df["tenant_id"] + "/" + df["host"], sort=True)
    hosts = np.zeros(len(names), np.int64)
    hosts[codes] = hcodes
    X: dict[str, np.ndarray] = {
        "series": codes.astype(np.int64),
        "start": df["start"].to_numpy(np.float64),
        "end": df["end"].to_numpy(np.float64),
    }
    for f in FEATURES:
        dtype = np.int64 if f == "count" else np.float64
        X[f] = df[f].to_numpy(dtype=np.float64, na_value=np.nan).astype(dtype, copy=False)
    stored = all(k in df.columns for k in CROSS_FEATURES)
    if stored:
        for k in CROSS_FEATURES:
            X[k] = pd.to_numeric(df[k], errors="raise").to_numpy(np.float64, na_value=np.nan)
    code_of = {n: i for i, n in enumerate(names)}
    lab = {code_of[n]: list(v) for n, v in (labels or {}).items() if n in code_of}
    nor = {code_of[n]: list(v) for n, v in (normal or {}).items() if n in code_of}
    wl = df.assign(code=codes, w=df["end"] - df["start"]).groupby("code")["w"].median()
    ds = WindowDataset(_sort(X), names, lab, nor, {int(k): float(v) for k, v in wl.items()}, hosts)
    if stored:  # keep what the live models saw; fill rows stored without the columns
        missing = np.zeros(len(ds), dtype=bool)
        for k in CROSS_FEATURES:
            missing |= np.isnan(ds.X[k])
        calc = ds.cross_features()
        for k in CROSS_FEATURES:
            ds.X[k] = np.where(missing, calc[k], ds.X[k]).astype(calc[k].dtype)
    return ds


# --- synthetic anomalies --------------------------------------------------------------------

KINDS = ("spike", "level_shift", "dropout")


def _editable(
    ds: WindowDataset,
) -> tuple[dict[str, np.ndarray], dict[int, list[Interval]], np.ndarray]:
    """Copies of ``ds``'s columns (``count`` int64, ``gap`` float64) and labels to inject into,
    and the mask of windows already labelled anomalous."""
    X = {k: v.copy() for k, v in ds.X.items()}
    X["count"] = X["count"].astype(np.int64)
    X["gap"] = X["gap"].astype(np.float64)
    return X, {k: list(v) for k, v in ds.labels.items()}, ds.is_anomalous()


def inject_anomalies(
    ds: WindowDataset,
    per_series: int = 2,
    magnitude: float = 6.0,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    shift_windows: int = 6,
    probation: float = 0.15,
    label_pad: tuple[int, int] = (2, 8),
) -> WindowDataset:
    """Copy of ``ds`` with synthetic anomalies written into the window features, and labelled.

    Each anomaly lands after the probation part of its series, away from existing labels and
    from other injections.  Its size is ``magnitude`` times the series' robust scale (MAD of the
    window means' first differences, or of the window std):

    * ``spike``: one window gets an extra sample ``magnitude`` scales above its mean
      (max, mean, std, last and change are updated consistently);
    * ``level_shift``: ``shift_windows`` consecutive windows move by ``magnitude`` scales
      (mean/min/max/last, ``change`` at both edges);
    * ``dropout``: one window loses most of its samples (count) and shows a gap.

    Parameters
    ----------
    ds : WindowDataset
    per_series : int
        Anomalies per series (series too short for them get fewer).
    kinds : tuple of str
        Kinds drawn uniformly.
    seed : int
    label_pad : (int, int)
        Windows added before and after each anomaly in its label.  NAB-style scoring rewards a
        detection by its position in the labelled window, so a label as narrow as the anomaly
        could never earn anything; NAB's own windows are centred on the anomaly too.
    """
    bad = set(kinds) - set(KINDS)
    if bad or not kinds:
        raise ValueError(f"unknown anomaly kinds {sorted(bad)}; choose from {KINDS}")
    if per_series < 0 or magnitude <= 0:
        raise ValueError("per_series must be >= 0 and magnitude > 0")
    rng = np.random.default_rng(seed)
    X, labels, taken = _editable(ds)
    s = X["series"]
    for code in range(ds.n_series):
        idx = np.flatnonzero(s == code)
        n = idx.size
        lo_pos = int(np.ceil(probation * n)) + 1
        if n - lo_pos < shift_windows + sum(label_pad) + 4:
            continue
        scale = _scale(X, idx)
        for _ in range(per_series):
            kind = kinds[int(rng.integers(len(kinds)))]
            length = shift_windows if kind == "level_shift" else 1
            for _try in range(20):
                p = int(rng.integers(lo_pos, n - length - label_pad[1] - 1))
                guard = idx[max(p - 3, 0) : min(p + length + label_pad[1] + 3, n)]
                if not taken[guard].any():
                    break
            else:
                continue
            rows = idx[p : p + length]
            lab = idx[max(p - label_pad[0], 0) : min(p + length + label_pad[1], n)]
            taken[idx[max(p - 3, 0) : min(p + length + label_pad[1] + 3, n)]] = True
            sign = 1.0 if rng.random() < 0.7 else -1.0
            delta = sign * magnitude * scale
            _apply(X, kind, rows, idx[p + length] if p + length < n else None, delta)
            labels.setdefault(code, []).append(
                (float(X["start"][lab[0]]), float(X["end"][lab[-1]]))
            )
    out = WindowDataset(X, list(ds.names), labels, dict(ds.normal), dict(ds.window_s), ds.hosts)
    out.refresh_cross_features(_changed(ds.X, X))
    return out


def inject_host_incidents(
    ds: WindowDataset,
    per_host: int = 2,
    magnitude: float = 3.0,
    length: int = 3,
    min_metrics: int = 2,
    seed: int = 0,
    probation: float = 0.15,
    label_pad: tuple[int, int] = (2, 8),
) -> WindowDataset:
    """Copy of ``ds`` with host-wide incidents: several metrics of one host shift together.

    An incident picks a window start of a host (one with at least ``min_metrics`` series, see
    :attr:`WindowDataset.hosts`) after the probation part, and moves every metric of the host
    that has a window there by ``magnitude`` times the metric's robust scale (as
    :func:`inject_anomalies`, sign drawn per metric) for ``length`` consecutive windows of it: a
    level shift on all of them at once.  Each moved series is labelled like
    :func:`inject_anomalies` does (``label_pad`` windows around).  Incidents stay away from
    existing labels; the cross-metric columns of every group touched are recomputed.

    Real incidents (an overloaded host: CPU and latency up, throughput down) look like this; a
    detector that only sees one series at a time needs a larger move per metric to notice.
    """
    if per_host < 0 or magnitude <= 0 or length < 1 or min_metrics < 1:
        raise ValueError("need per_host >= 0, magnitude > 0, length >= 1, min_metrics >= 1")
    rng = np.random.default_rng(seed)
    X, labels, taken = _editable(ds)
    s, start = X["series"], X["start"]
    hosts = ds.hosts if ds.hosts is not None else np.arange(ds.n_series, dtype=np.int64)
    rows_of = [np.flatnonzero(s == c) for c in range(ds.n_series)]
    scale = [_scale(X, idx) if idx.size else 0.0 for idx in rows_of]
    for h in np.unique(hosts).tolist():
        codes = np.flatnonzero(hosts == h).tolist()
        if len(codes) < min_metrics:
            continue
        ref = rows_of[max(codes, key=lambda c: rows_of[c].size)]
        n = ref.size
        lo_pos = int(np.ceil(probation * n)) + 1
        if n - lo_pos < length + sum(label_pad) + 4:
            continue
        for _ in range(per_host):
            for _try in range(20):
                t0 = start[ref[int(rng.integers(lo_pos, n - length - label_pad[1] - 1))]]
                plan, clash = [], False
                for c in codes:
                    idx = rows_of[c]
                    q = int(np.searchsorted(start[idx], t0))
                    if q + length > idx.size or start[idx[q]] != t0:
                        continue  # this metric has no window there
                    guard = idx[max(q - 3, 0) : min(q + length + label_pad[1] + 3, idx.size)]
                    if taken[guard].any():
                        clash = True
                        break
                    plan.append((c, idx, q, guard))
                if not clash and len(plan) >= min_metrics:
                    break
            else:
                continue
            for c, idx, q, guard in plan:
                taken[guard] = True
                sign = 1.0 if rng.random() < 0.5 else -1.0
                after = idx[q + length] if q + length < idx.size else None
                _apply(X, "level_shift", idx[q : q + length], after, sign * magnitude * scale[c])
                lab = idx[max(q - label_pad[0], 0) : min(q + length + label_pad[1], idx.size)]
                labels.setdefault(c, []).append((float(start[lab[0]]), float(X["end"][lab[-1]])))
    out = WindowDataset(X, list(ds.names), labels, dict(ds.normal), dict(ds.window_s), ds.hosts)
    out.refresh_cross_features(_changed(ds.X, X))
    return out


def _scale(X: dict[str, np.ndarray], idx: np.ndarray) -> float:
    """Robust scale of a series' windows: MAD of the mean's first differences, or median std."""
    mean = X["mean"][idx]
    d = np.diff(mean)
    scale = np.median(np.abs(d - np.median(d))) / 0.6745 if d.size else 0.0
    return max(scale, float(np.median(X["std"][idx])), 1e-6 * max(np.abs(mean).max(), 1.0))


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> np.ndarray:
    """bool (n,): windows whose base features differ (NaN equals NaN)."""
    out = np.zeros(before["series"].size, dtype=bool)
    for f in FEATURES:
        a = np.asarray(before[f], np.float64)
        b = np.asarray(after[f], np.float64)
        out |= ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return out


def _apply(X: dict[str, np.ndarray], kind: str, rows: np.ndarray, after: int | None, delta: float):
    if kind == "spike":
        r = int(rows[0])
        n = max(int(X["count"][r]), 1)
        mu, sd = X["mean"][r], X["std"][r]
        v = mu + delta  # one extra sample far from the window mean
        new_mu = (n * mu + v) / (n + 1)
        m2 = n * sd * sd + n / (n + 1) * (v - mu) ** 2
        X["count"][r] = n + 1
        X["mean"][r] = new_mu
        X["std"][r] = np.sqrt(m2 / (n + 1))
        X["max"][r] = max(X["max"][r], v)
        X["min"][r] = min(X["min"][r], v)
        X["last"][r] = v
        X["change"][r] += new_mu - mu
        if after is not None:
            X["change"][after] -= new_mu - mu
    elif kind == "level_shift":
        for f in ("mean", "min", "max", "last"):
            X[f][rows] += delta
        X["change"][rows[0]] += delta
        if after is not None:
            X["change"][after] -= delta
    else:  # dropout
        r = int(rows[0])
        X["count"][r] = max(1, int(X["count"][r]) // 10)
        X["gap"][r] += 3.0
