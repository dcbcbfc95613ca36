"""Evaluation metrics computed by EventOps itself: NAB-style window score and event-wise metrics.

Pure numpy/pandas; no MLflow, no database.  The NAB-style score follows
``../shared/datasets/nab-dev/README.md`` literally:

* a detector emits one score in [0, 1] per row, from the past only; a row is a *detection* when
  ``score >= threshold``;
* the first 15 % of each series (``floor(0.15 * n_rows)`` rows) is a probation period whose rows are
  never scored;
* inside a labelled window only the earliest detection counts, worth ``A_TP * w(y)`` with
  ``w(y) = 2 / (1 + exp(5 y)) - 1`` and ``y = -(end_row - row) / (end_row - start_row)``
  (-1 = first row of the window, 0 = last row); an undetected window costs ``-A_FN``;
* a detection outside every window costs ``A_FP * w(y)`` with ``y = (row - prev_end_row) /
  (prev_end_row - prev_start_row)`` (distance past the end of the previous window in window widths,
  ``w`` is clamped to -1 for ``y > 3`` as in NAB); before the first window it costs ``-A_FP``;
* corpus score ``100 * (raw - raw_null) / (raw_perfect - raw_null)`` with ``raw_null = -A_FN * W``
  and ``raw_perfect = A_TP * w(-1) * W`` (``W`` = number of scored windows);
* the threshold is chosen per profile to maximise the corpus score, by an exact sweep over every
  distinct score value (so any monotone rescaling of the scores gives the same result).

Choices the README leaves open (stated here so the numbers can be reproduced):

* window membership is by timestamp, inclusive at both ends; window positions are measured in rows
  (file order, duplicate timestamps kept);
* a window none of whose rows lies after the probation period (it cannot be detected by anyone) is
  not counted in ``W`` (it still acts as "previous window" for false-positive weighting).  This is
  what NAB does, because it only scores post-probation rows;
* event-wise metrics use the threshold that maximises the *standard* profile: a window is a true
  positive when it contains at least one detection; false-positive *events* are runs of
  consecutive detected rows outside every window; detection delay is the time from the window start
  to its first detection.

Examples
--------
>>> import numpy as np, pandas as pd
>>> ts = pd.date_range("2024-01-01", periods=100, freq="5min")
>>> scores = np.zeros(100); scores[60] = 0.9
>>> s = LabelledSeries("a.csv", ts.to_numpy(), scores, [(ts[55], ts[74])])
>>> r = nab_score([s], PROFILES["standard"])
>>> round(r["score"], 1), r["threshold"]
(98.2, 0.9)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "PROFILES",
    "CostProfile",
    "LabelledSeries",
    "auc_scores",
    "evaluate",
    "event_metrics",
    "kind_folds",
    "kind_of",
    "load_windows",
    "nab_score",
    "per_kind",
    "row_labels",
    "scaled_sigmoid",
    "scored_days",
]


@dataclass(frozen=True)
class CostProfile:
    """Weights of one NAB application profile."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP": CostProfile("reward_low_FP", 1.0, 0.22, 1.0),
    "reward_low_FN": CostProfile("reward_low_FN", 1.0, 0.11, 2.0),
}


@dataclass
class LabelledSeries:
    """One scored series with its labelled windows.

    Parameters
    ----------
    name : str
        Key (e.g. ``"realKnownCause/nyc_taxi.csv"``).
    timestamps : numpy.ndarray
        ``datetime64`` array, shape (n,), file order.
    scores : numpy.ndarray
        float64, shape (n,), anomaly score per row (from the past only).
    windows : list of (start, end)
        Labelled windows (anything ``numpy.datetime64`` accepts), inclusive.
    probation : float
        Fraction of leading rows never scored.
    belief : numpy.ndarray, optional
        float64, shape (n,), the per-row window score (the detector's belief that the row's
        window is anomalous, high for as long as an anomaly lasts); ROC / PR AUC rank it when
        given, else ``scores``.  NAB and event metrics always use ``scores`` (the detections).
    """

    name: str
    timestamps: np.ndarray
    scores: np.ndarray
    windows: list
    probation: float = 0.15
    belief: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps).astype("datetime64[ns]")
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.timestamps.shape != self.scores.shape or self.scores.ndim != 1:
            raise ValueError(f"{self.name}: timestamps and scores must be 1-D of equal length")
        if not 0.0 <= self.probation < 1.0:
            raise ValueError("probation must be in [0, 1)")
        if np.isnan(self.scores).any():
            raise ValueError(f"{self.name}: NaN scores")
        if self.belief is not None:
            self.belief = np.asarray(self.belief, dtype=np.float64)
            if self.belief.shape != self.scores.shape:
                raise ValueError(f"{self.name}: belief must have the shape of scores")
            if np.isnan(self.belief).any():
                raise ValueError(f"{self.name}: NaN belief")


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's weighting ``2 / (1 + exp(5 y)) - 1``, clamped to -1 beyond ``y > 3``.

    >>> [round(float(v), 3) for v in scaled_sigmoid(np.array([-1.0, 0.0, 3.5]))]
    [0.987, 0.0, -1.0]
    """
    y = np.asarray(y, dtype=np.float64)
    out = 2.0 / (1.0 + np.exp(np.minimum(5.0 * y, 700.0))) - 1.0
    return np.where(y > 3.0, -1.0, out)


def load_windows(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Read a NAB ``windows.json`` (``{"cat/name.csv": [[start, end], …]}``).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "windows.json"
    >>> _ = p.write_text('{"cat/a.csv": [["2024-01-01 04:35:00", "2024-01-01 06:10:00"]]}')
    >>> load_windows(p)
    {'cat/a.csv': [('2024-01-01 04:35:00', '2024-01-01 06:10:00')]}
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of file -> windows")
    return {k: [tuple(w) for w in v] for k, v in data.items()}


@dataclass
class _Prepared:
    n: int
    probation_rows: int
    win_rows: list[tuple[int, int]]  # (start_row, end_row) of each window (all, incl. probation)
    scored: list[bool]  # window has at least one post-probation row
    win_start_ts: list[np.datetime64]
    row_window: np.ndarray  # int64 (n,), window index or -1
    fp_y: np.ndarray  # float (n,), y past the previous window (inf when none)


def _prepare(s: LabelledSeries) -> _Prepared:
    n = len(s.scores)
    p = int(np.floor(s.probation * n))
    row_window = np.full(n, -1, dtype=np.int64)
    win_rows: list[tuple[int, int]] = []
    scored: list[bool] = []
    starts: list[np.datetime64] = []
    for k, (a, b) in enumerate(s.windows):
        a64, b64 = np.datetime64(pd.Timestamp(a), "ns"), np.datetime64(pd.Timestamp(b), "ns")
        if b64 < a64:
            raise ValueError(f"{s.name}: window {k} ends before it starts")
        idx = np.flatnonzero((s.timestamps >= a64) & (s.timestamps <= b64))
        if idx.size == 0:
            continue
        lo, hi = int(idx[0]), int(idx[-1])
        row_window[lo : hi + 1] = len(win_rows)
        win_rows.append((lo, hi))
        scored.append(hi >= p)
        starts.append(a64)
    order = np.argsort([lo for lo, _ in win_rows], kind="stable")
    if not np.array_equal(order, np.arange(len(win_rows))):
        raise ValueError(f"{s.name}: windows must be sorted and non-overlapping")
    fp_y = np.full(n, np.inf)
    rows = np.arange(n)
    for lo, hi in win_rows:
        after = rows > hi
        fp_y[after] = (rows[after] - hi) / max(hi - lo, 1)
    return _Prepared(n, p, win_rows, scored, starts, row_window, fp_y)


def _sweep_deltas(s: LabelledSeries, prep: _Prepared, prof: CostProfile):
    """Threshold events: value v and change of raw score when the threshold drops to v."""
    vals: list[np.ndarray] = []
    dels: list[np.ndarray] = []
    p = prep.probation_rows
    sc = s.scores
    out_rows = np.flatnonzero((prep.row_window < 0) & (np.arange(prep.n) >= p))
    if out_rows.size:
        y = prep.fp_y[out_rows]
        vals.append(sc[out_rows])
        dels.append(
            np.where(
                np.isinf(y), -prof.a_fp, prof.a_fp * scaled_sigmoid(np.where(np.isinf(y), 0, y))
            )
        )
    n_win = 0
    for (lo, hi), ok in zip(prep.win_rows, prep.scored, strict=False):
        if not ok:
            continue
        n_win += 1
        first = max(lo, p)
        seg = sc[first : hi + 1]
        rows = np.arange(first, hi + 1)
        pm = np.maximum.accumulate(seg)
        rec = np.ones(seg.size, dtype=bool)
        rec[1:] = seg[1:] > pm[:-1]
        rv, rr = seg[rec], rows[rec]
        w = prof.a_tp * scaled_sigmoid(-(hi - rr) / max(hi - lo, 1))
        d = np.empty_like(w)
        d[-1] = w[-1] + prof.a_fn
        d[:-1] = w[:-1] - w[1:]
        vals.append(rv)
        dels.append(d)
    return vals, dels, n_win


def nab_score(
    series: list[LabelledSeries], profile: CostProfile, threshold: float | None = None
) -> dict[str, Any]:
    """Normalised NAB corpus score of ``series`` under ``profile``.

    Parameters
    ----------
    series : list of LabelledSeries
    profile : CostProfile
    threshold : float, optional
        Detection threshold; ``None`` picks the one that maximises the corpus score.

    Returns
    -------
    dict
        ``score`` (normalised, 100 = perfect, 0 = null), ``raw``, ``raw_null``, ``raw_perfect``,
        ``threshold``, ``windows``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=10, freq="h").to_numpy()
    >>> s = LabelledSeries("x", ts, np.zeros(10), [(ts[4], ts[6])])
    >>> nab_score([s], PROFILES["standard"], threshold=0.5)["score"]
    0.0
    """
    parts = [_sweep_deltas(s, _prepare(s), profile) for s in series]
    out = _corpus(parts, profile, threshold)
    out["score"] = round(out["score"], 4)
    return out


def event_metrics(series: list[LabelledSeries], threshold: float) -> dict[str, Any]:
    """Event-wise precision / recall / F1 and mean detection delay at ``threshold``.

    A labelled window is detected when one of its post-probation rows scores ``>= threshold``;
    each run of consecutive detected rows outside windows is one false-positive event.

    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=100, freq="5min").to_numpy()
    >>> sc = np.zeros(100); sc[[60, 61, 90]] = 1.0
    >>> m = event_metrics([LabelledSeries("a", ts, sc, [(ts[58], ts[70])])], 0.5)
    >>> m["tp"], m["fp"], m["fn"], m["mean_delay_s"]
    (1, 1, 0, 600.0)
    """
    tp = fp = fn = 0
    delays: list[float] = []
    for s in series:
        prep = _prepare(s)
        det = s.scores >= threshold
        det[: prep.probation_rows] = False
        for k, ((lo, hi), ok) in enumerate(zip(prep.win_rows, prep.scored, strict=False)):
            if not ok:
                continue
            hits = np.flatnonzero(det[lo : hi + 1])
            if hits.size:
                tp += 1
                t0 = s.timestamps[lo + hits[0]]
                delays.append(float((t0 - prep.win_start_ts[k]) / np.timedelta64(1, "s")))
            else:
                fn += 1
        outside = det & (prep.row_window < 0)
        starts = outside.copy()
        starts[1:] &= ~outside[:-1]
        fp += int(starts.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_delay_s": float(np.mean(delays)) if delays else float("nan"),
    }


def kind_of(name: str) -> str:
    """The kind of a series: the first folder of its name (``""`` for a bare file name).

    >>> kind_of("realKnownCause/nyc_taxi.csv"), kind_of("a.csv")
    ('realKnownCause', '')
    """
    head, sep, _ = name.partition("/")
    return head if sep else ""


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def row_labels(s: LabelledSeries) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, scored)``: bool (n,) rows inside a labelled window, bool (n,) post-probation rows.

    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=10, freq="h").to_numpy()
    >>> inside, scored = row_labels(LabelledSeries("x", ts, np.zeros(10), [(ts[4], ts[6])], 0.2))
    >>> inside.astype(int).tolist(), int(scored.sum())
    ([0, 0, 0, 0, 1, 1, 1, 0, 0, 0], 8)
    """
    prep = _prepare(s)
    return prep.row_window >= 0, np.arange(prep.n) >= prep.probation_rows


def scored_days(s: LabelledSeries) -> float:
    """Days from the first post-probation row to the last row of ``s`` (0 when none is scored)."""
    p = int(np.floor(s.probation * len(s.scores)))
    if p >= len(s.scores):
        return 0.0
    return float((s.timestamps[-1] - s.timestamps[p]) / np.timedelta64(1, "D"))


def first_day(series: list[LabelledSeries], threshold: float, days: float = 1.0) -> dict[str, Any]:
    """Detection and false alarms in each series' first ``days`` (probation included: this is
    what a new series pages in its first day).

    ``windows`` / ``detected``: labelled windows that start within the first day and have a
    detection (a row ``>= threshold``) inside them; ``false_alarms``: runs of consecutive
    detections outside every window within the first day, summed over series;
    ``false_alarms_per_series``: their mean per series.

    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=48, freq="h").to_numpy()
    >>> sc = np.zeros(48); sc[[3, 4, 10, 30]] = 0.9
    >>> r = first_day([LabelledSeries("a", ts, sc, [(ts[9], ts[12]), (ts[29], ts[31])])], 0.5)
    >>> r["windows"], r["detected"], r["false_alarms"]
    (1, 1, 1)
    """
    wins = det = fa = 0
    for s in series:
        if not len(s.scores):
            continue
        horizon = s.timestamps[0] + np.timedelta64(int(days * 86400), "s")
        early = s.timestamps < horizon
        inside, _ = row_labels(s)
        hit = s.scores >= threshold
        for a, b in s.windows:
            a64, b64 = np.datetime64(pd.Timestamp(a)), np.datetime64(pd.Timestamp(b))
            if a64 < horizon:
                wins += 1
                det += bool((hit & (s.timestamps >= a64) & (s.timestamps <= b64)).any())
        out = hit & ~inside & early
        fa += int(np.sum(out & ~np.r_[False, out[:-1]]))
    n = max(len(series), 1)
    return {
        "windows": wins,
        "detected": det,
        "detection_rate": round(det / wins, 3) if wins else None,
        "false_alarms": fa,
        "false_alarms_per_series": round(fa / n, 3),
        "threshold": threshold,
    }


def auc_scores(series: list[LabelledSeries]) -> dict[str, Any]:
    """ROC AUC and PR AUC (average precision) of the per-row score against the labels.

    Pools the post-probation rows of every series; a row is positive when it lies inside a
    labelled window.  The score ranked is each series' ``belief`` when it has one, else its
    ``scores``.  ``roc`` / ``pr`` are ``None`` when the rows hold only one class.

    Returns
    -------
    dict
        ``roc``, ``pr``, ``rows``, ``positives``, ``signal`` (``"belief"``, ``"scores"`` or
        ``"mixed"``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=8, freq="h").to_numpy()
    >>> sc = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.6, 0.1])  # row 0 is probation
    >>> r = auc_scores([LabelledSeries("x", ts, sc, [(ts[3], ts[4])], probation=0.125)])
    >>> r["roc"], round(r["pr"], 3), r["rows"], r["positives"]
    (1.0, 1.0, 7, 2)
    """
    ys, xs, kinds = [], [], set()
    for s in series:
        inside, scored = row_labels(s)
        x = s.scores if s.belief is None else s.belief
        kinds.add("scores" if s.belief is None else "belief")
        ys.append(inside[scored])
        xs.append(x[scored])
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=bool)
    x = np.concatenate(xs) if xs else np.zeros(0)
    pos = int(y.sum())
    out: dict[str, Any] = {
        "roc": None,
        "pr": None,
        "rows": int(y.size),
        "positives": pos,
        "signal": kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "scores"),
    }
    if 0 < pos < y.size:
        from sklearn.metrics import average_precision_score, roc_auc_score

        out["roc"] = float(roc_auc_score(y, x))
        out["pr"] = float(average_precision_score(y, x))
    return out


def _groups(series: list[LabelledSeries]) -> dict[str, list[int]]:
    """Indices of the series of each kind, kinds sorted by name."""
    g: dict[str, list[int]] = {}
    for i, s in enumerate(series):
        g.setdefault(kind_of(s.name), []).append(i)
    return dict(sorted(g.items()))


def _events_brief(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("tp", "fp", "fn", "precision", "recall", "f1")
    return {**{k: m[k] for k in keys}, "mean_delay_s": _finite(m["mean_delay_s"])}


def per_kind(series: list[LabelledSeries], thresholds: dict[str, float]) -> dict[str, Any]:
    """Figures of each kind (:func:`kind_of`) at fixed thresholds (profile name -> threshold).

    Per kind: ``series``, ``windows`` (scored), ``nab`` (normalised score per profile at its
    threshold, ``None`` for a kind without windows), ``events`` at the standard threshold,
    ``auc`` (:func:`auc_scores`), ``series_days`` (post-probation, summed) and
    ``fp_per_series_day`` (false-positive events per series-day).

    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=288, freq="5min").to_numpy()
    >>> sc = np.zeros(288); sc[[100, 200]] = 1.0
    >>> ss = [LabelledSeries("a/x.csv", ts, sc, [(ts[95], ts[110])]),
    ...       LabelledSeries("b/y.csv", ts, sc, [])]
    >>> k = per_kind(ss, {p: 0.5 for p in PROFILES})
    >>> k["a"]["nab"]["standard"] > 90, k["b"]["nab"]["standard"], k["b"]["events"]["fp"]
    (True, None, 2)
    """
    out: dict[str, Any] = {}
    for kind, idx in _groups(series).items():
        ss = [series[i] for i in idx]
        nab: dict[str, float | None] = {}
        n_win = 0
        for name, prof in PROFILES.items():
            r = nab_score(ss, prof, threshold=thresholds[name])
            nab[name] = _finite(r["score"]) if r["windows"] else None
            n_win = r["windows"]
        ev = event_metrics(ss, thresholds["standard"])
        days = sum(scored_days(s) for s in ss)
        out[kind] = {
            "series": len(ss),
            "windows": n_win,
            "nab": nab,
            "events": _events_brief(ev),
            "auc": auc_scores(ss),
            "series_days": days,
            "fp_per_series_day": ev["fp"] / days if days > 0 else None,
        }
    return out


def _corpus(parts: list[tuple[list, list, int]], prof: CostProfile, threshold: float | None):
    """NAB corpus score from per-series sweep parts (:func:`_sweep_deltas`), as ``nab_score``."""
    vals = [v for p in parts for v in p[0]]
    dels = [d for p in parts for d in p[1]]
    n_win = sum(p[2] for p in parts)
    null = -prof.a_fn * n_win
    perfect = prof.a_tp * float(scaled_sigmoid(-1.0)) * n_win
    v = np.concatenate(vals) if vals else np.empty(0)
    d = np.concatenate(dels) if dels else np.empty(0)
    if threshold is None:
        order = np.argsort(-v, kind="stable")
        v, d = v[order], d[order]
        last = np.ones(v.size, dtype=bool)
        last[:-1] = v[1:] != v[:-1]
        cand_v = np.concatenate([[np.inf], v[last]])
        cand_raw = null + np.concatenate([[0.0], np.cumsum(d)[last]])
        best = int(np.argmax(cand_raw))
        thr, raw = float(cand_v[best]), float(cand_raw[best])
    else:
        thr, raw = float(threshold), null + float(d[v >= threshold].sum())
    denom = perfect - null
    score = 100.0 * (raw - null) / denom if denom > 0 else float("nan")
    return {"score": score, "raw": raw, "raw_null": null, "raw_perfect": perfect,
            "threshold": thr, "windows": n_win}  # fmt: skip


def kind_folds(series: list[LabelledSeries]) -> dict[str, Any]:
    """Leave-one-kind-out material: per kind with labelled windows, thresholds chosen without it.

    For each kind ``K`` that has at least one scored window, and each profile: the threshold
    that maximises the NAB score of all *other* series (kinds without windows included: they
    only add false positives), that training score, and the score of ``K``'s series at that
    threshold (``test``, with its ``test_raw`` / ``test_null`` / ``test_perfect`` so folds can
    be pooled).  Also ``no_anomaly_fp``: false-positive events, per profile, on the training
    series that have no labelled window, and ``test_events`` at the standard training
    threshold.  Scores are ``None`` where no window is scored.

    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=200, freq="5min").to_numpy()
    >>> def s(name, hit):
    ...     sc = np.zeros(200); sc[100] = hit
    ...     return LabelledSeries(name, ts, sc, [(ts[95], ts[110])])
    >>> f = kind_folds([s("a/1.csv", 0.9), s("b/1.csv", 0.8), s("c/1.csv", 0.3)])
    >>> f["c"]["standard"]["threshold"], f["c"]["standard"]["test"]
    (0.8, 0.0)
    >>> round(f["a"]["standard"]["test"], 1)  # threshold 0.3, chosen on b and c
    97.2
    """
    groups = _groups(series)
    preps = [_prepare(s) for s in series]
    parts = {
        name: [_sweep_deltas(s, p, prof) for s, p in zip(series, preps, strict=True)]
        for name, prof in PROFILES.items()
    }
    no_win = [i for i, p in enumerate(preps) if not any(p.scored)]
    out: dict[str, Any] = {}
    for kind, idx in groups.items():
        if not any(parts["standard"][i][2] for i in idx):
            continue
        test = set(idx)
        train = [i for i in range(len(series)) if i not in test]
        fold: dict[str, Any] = {}
        for name, prof in PROFILES.items():
            tr = _corpus([parts[name][i] for i in train], prof, None)
            te = _corpus([parts[name][i] for i in idx], prof, tr["threshold"])
            fold[name] = {
                "threshold": tr["threshold"],
                "train": _finite(tr["score"]),
                "test": _finite(te["score"]),
                "test_raw": te["raw"],
                "test_null": te["raw_null"],
                "test_perfect": te["raw_perfect"],
            }
        quiet = [series[i] for i in no_win if i not in test]
        fold["no_anomaly_fp"] = {
            name: event_metrics(quiet, fold[name]["threshold"])["fp"] if quiet else 0
            for name in PROFILES
        }
        fold["no_anomaly_series"] = len(quiet)
        fold["test_events"] = _events_brief(
            event_metrics([series[i] for i in idx], fold["standard"]["threshold"])
        )
        out[kind] = fold
    return out


def evaluate(series: list[LabelledSeries]) -> dict[str, Any]:
    """Full report: NAB score per profile (each with its own optimal threshold) + event metrics.

    Event metrics are computed at the standard profile's threshold.  Also ``auc`` (ROC / PR AUC
    of the per-row belief, :func:`auc_scores`) and, when the series are of more than one kind
    (:func:`kind_of`; empty otherwise), ``per_kind`` (:func:`per_kind` at the corpus thresholds)
    and ``kind_folds`` (leave-one-kind-out material, :func:`kind_folds`).

    >>> import numpy as np, pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=100, freq="5min").to_numpy()
    >>> sc = np.zeros(100); sc[62] = 0.8; sc[90] = 0.3  # a hit 35 min into the window, a blip
    >>> rep = evaluate([LabelledSeries("a.csv", ts, sc, [(ts[55], ts[74])])])
    >>> sorted(rep)
    ['auc', 'events', 'first_day', 'kind_folds', 'n_series', 'nab', 'per_file', 'per_kind']
    >>> sorted(rep["nab"])
    ['reward_low_FN', 'reward_low_FP', 'standard']
    >>> std, ev = rep["nab"]["standard"], rep["events"]
    >>> round(std["score"], 1), std["threshold"], ev["tp"], ev["fp"], ev["mean_delay_s"] / 60
    (96.6, 0.8, 1, 0, 35.0)
    """
    nab = {name: nab_score(series, prof) for name, prof in PROFILES.items()}
    ev = event_metrics(series, nab["standard"]["threshold"])
    per_file = {}
    thr = nab["standard"]["threshold"]
    for s in series:
        r = nab_score([s], PROFILES["standard"], threshold=thr)
        per_file[s.name] = {"raw_standard": r["raw"], "windows": r["windows"]}
    out = {"nab": nab, "events": ev, "per_file": per_file, "n_series": len(series)}
    out["auc"] = auc_scores(series)
    out["first_day"] = first_day(series, thr)
    # one kind (e.g. the series of a training set): its figures are the corpus's, no fold exists
    several = len(_groups(series)) > 1
    thresholds = {name: r["threshold"] for name, r in nab.items()}
    out["per_kind"] = per_kind(series, thresholds) if several else {}
    out["kind_folds"] = kind_folds(series) if several else {}
    return out
