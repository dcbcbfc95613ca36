"""Labelled window-feature datasets for training and evaluation.

A :class:`WindowDataset` is a set of closed windows (the columns of
:meth:`features.windows.ClosedWindows.columns`: ``series``, ``start``, ``end`` and every name in
:data:`features.windows.FEATURES`) plus, per series, labelled anomaly intervals in epoch seconds.
Evaluation treats each series' windows, ordered by end time, as the rows of a NAB series
(:meth:`WindowDataset.labelled`), so the same metrics code scores CSV backtests and Postgres data.

Sources
-------
* :func:`from_csv` -- ``timestamp,value`` files (e.g. the NAB series in
  ``../shared/datasets/nab-dev``) windowed by :func:`features.windows.window_features`, the live
  code path; labels from a NAB ``windows.json``.
* :func:`from_postgres` -- rows of the ``features`` table written by the sink; labels from the
  ``feedback`` table (``true_positive`` feedback on an alert labels the alert's series and time
  span; ``false_positive`` feedback is kept as known-normal spans).
* :func:`inject_anomalies` -- synthetic spikes / level shifts / dropouts written into real
  history at the window-feature level, so a labelled set exists before anybody gave feedback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.windows import FEATURES, window_features
from training.evaluate import LabelledSeries, load_windows

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.settings import Settings

__all__ = ["WindowDataset", "from_csv", "from_postgres", "inject_anomalies"]

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
    """

    X: dict[str, np.ndarray]
    names: list[str]
    labels: dict[int, list[Interval]] = field(default_factory=dict)
    normal: dict[int, list[Interval]] = field(default_factory=dict)
    window_s: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.X["series"].size)

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
    from pipeline.backtest import _interval, _match_windows, discover_csvs

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

_FEATURES_SQL = """
SELECT tenant_id, host, metric,
       extract(epoch FROM window_start)::float8, extract(epoch FROM window_end)::float8,
       count, mean, std, min, max, last, slope, change, gap
FROM features
WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
  AND (%(since)s::float8 IS NULL OR window_end >= to_timestamp(%(since)s))
  AND (%(until)s::float8 IS NULL OR window_end < to_timestamp(%(until)s))
ORDER BY tenant_id, host, metric, window_start
"""

# feedback -> alert -> (series, time span); a span runs from the alert's first event/open to its
# resolution (or its open when still open), padded by `pad` seconds on both sides.
_FEEDBACK_SQL = """
SELECT a.tenant_id, a.host, a.metric, f.label,
       extract(epoch FROM LEAST(a.ts_event, a.opened_at))::float8 - %(pad)s,
       extract(epoch FROM GREATEST(a.ts_event, COALESCE(a.resolved_at, a.opened_at)))::float8
         + %(pad)s
FROM feedback f JOIN alerts a ON a.alert_id = f.alert_id AND a.tenant_id = f.tenant_id
WHERE (%(tenant)s::text IS NULL OR a.tenant_id = %(tenant)s)
ORDER BY f.created_at
"""


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

    q = {"tenant": tenant, "since": since, "until": until, "pad": float(label_pad_s)}
    with psycopg.connect(settings.pg_dsn(), connect_timeout=10) as conn:
        rows = conn.execute(_FEATURES_SQL, q).fetchall()
        has_fb = conn.execute("SELECT to_regclass('feedback') IS NOT NULL").fetchone()[0]
        fb = conn.execute(_FEEDBACK_SQL, q).fetchall() if has_fb else []
    if not rows:
        raise ValueError("no rows in the features table for this selection")
    df = pd.DataFrame(rows, columns=["tenant_id", "host", "metric", "start", "end", *FEATURES])
    key = df["tenant_id"] + "/" + df["host"] + "/" + df["metric"]
    codes, uniq = pd.factorize(key, sort=True)
    names = [str(u) for u in uniq]
    X: dict[str, np.ndarray] = {
        "series": codes.astype(np.int64),
        "start": df["start"].to_numpy(np.float64),
        "end": df["end"].to_numpy(np.float64),
    }
    for f in FEATURES:
        dtype = np.int64 if f == "count" else np.float64
        X[f] = df[f].to_numpy(dtype=np.float64, na_value=np.nan).astype(dtype, copy=False)
    code_of = {n: i for i, n in enumerate(names)}
    # the latest label per (series, span) wins
    latest: dict[tuple[int, float, float], str] = {}
    for t, h, m, label, lo, hi in fb:
        c = code_of.get(f"{t}/{h}/{m}")
        if c is not None:
            latest[(c, lo, hi)] = label
    labels: dict[int, list[Interval]] = {}
    normal: dict[int, list[Interval]] = {}
    for (c, lo, hi), label in latest.items():
        (labels if label == "true_positive" else normal).setdefault(c, []).append((lo, hi))
    wl = df.assign(code=codes, w=df["end"] - df["start"]).groupby("code")["w"].median()
    return WindowDataset(_sort(X), names, labels, normal, {int(k): float(v) for k, v in wl.items()})


# --- synthetic anomalies --------------------------------------------------------------------

KINDS = ("spike", "level_shift", "dropout")


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
    X = {k: v.copy() for k, v in ds.X.items()}
    X["count"] = X["count"].astype(np.int64)
    X["gap"] = X["gap"].astype(np.float64)
    labels = {k: list(v) for k, v in ds.labels.items()}
    taken = ds.is_anomalous()
    s = X["series"]
    for code in range(ds.n_series):
        idx = np.flatnonzero(s == code)
        n = idx.size
        lo_pos = int(np.ceil(probation * n)) + 1
        if n - lo_pos < shift_windows + sum(label_pad) + 4:
            continue
        mean = X["mean"][idx]
        d = np.diff(mean)
        scale = np.median(np.abs(d - np.median(d))) / 0.6745 if d.size else 0.0
        scale = max(scale, float(np.median(X["std"][idx])), 1e-6 * max(np.abs(mean).max(), 1.0))
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
            labels.setdefault(code, []).append((float(X["start"][lab[0]]), float(X["end"][lab[-1]])))
    return WindowDataset(X, list(ds.names), labels, dict(ds.normal), dict(ds.window_s))


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
