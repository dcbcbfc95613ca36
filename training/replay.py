"""Promotion judged out of sample, by replaying a tenant's events through the production
detect code.

A candidate batch model is judged on a time range it was not fitted on:

1. **Events.** The tenant's stored metric events (:meth:`Events.from_postgres`, that tenant
   only) or CSV series (:meth:`Events.from_csv`, one file = one series), time-ordered columns.
2. **Split.** The newest ``1 - train_fraction`` of the time range is the *evaluation* part, the
   rest the *training* part (:func:`split_time`).
3. **Labels.** Synthetic anomalies are injected into the raw values of both parts
   (:func:`inject`: spikes, level shifts and drifts sized by each series' own spread, placed
   clear of the split so none straddles it); operators' feedback (true / false positive on
   alerts) is a second, independent set of labels.
4. **Fit.** The ensemble-only replay of the whole range gives the window features the sink
   stores; the candidate is fitted (and its calibration -- the raw score that maps to 0.5,
   i.e. its threshold -- chosen) on the training part's windows only, injected windows left out.
5. **Replay, three arms.** The whole range is replayed through :class:`DetectStage` (the stage
   the workers run, rules off) with no batch model (``ensemble``), the current champion
   (``champion``) and the candidate (``candidate``) as every tenant's model. The training part
   warms the detectors up; every figure is computed on each part separately, so the candidate's
   in-sample figures sit beside its out-of-sample ones.
6. **Evidence per arm and part** (:func:`arm_metrics`): NAB-style score of the alert openings
   (as :mod:`training.backtest` scores them), event-wise precision / recall / F1 of the
   openings on the injected anomalies and on the feedback labels (an alert counts when one
   opens on the labelled series within the labelled span), would-have-fired alerts per
   series-day, and the batch model's scoring latency per 10k windows.

The decision on this evidence is :func:`training.promotion.decide_replay`; the whole loop, with
the MLflow run, is :func:`training.train.train_and_judge`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.batch import MetricBatch
from models.episodes import OpeningGate, opening_signal
from models.rules import RuleSet
from pipeline.stages.detect.score_alerts import ANOMALY_RULE
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.detect.window_rows import FEATURES
from training.evaluate import LabelledSeries, evaluate

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = [
    "ARMS",
    "Events",
    "ReplayReport",
    "Replayed",
    "arm_metrics",
    "feedback_from_postgres",
    "inject",
    "judge",
    "replay",
    "split_time",
]

#: the arms of a comparison, in the order tables show them
ARMS = ("ensemble", "champion", "candidate")
#: injected anomaly kinds
KINDS = ("spike", "level_shift", "drift")

Interval = tuple[float, float]
SeriesKey = tuple[str, str]


def in_maintenance(conn, tenant: str, cols: dict[str, np.ndarray]) -> np.ndarray:
    """bool per event of ``cols`` (``host``, ``metric``, ``ts``): inside one of the tenant's
    maintenance windows that matches its series."""
    from core.silences import alert_labels, maintenance_mask
    from storage.notify import load_maintenance, tenant_tags

    ts = cols["ts"]
    windows = load_maintenance(conn, tenant, float(ts.min()), float(ts.max()) + 1.0)
    if not windows:
        return np.zeros(ts.size, bool)
    tags = tenant_tags(conn, tenant)
    pairs, codes = np.unique(_series_key(cols["host"], cols["metric"]), return_inverse=True)
    names = [p.split("\x1f", 1) for p in pairs.tolist()]

    def labels_of(code: int) -> dict[str, str]:
        h, m = names[code]
        return alert_labels(h, m, "", "", tags.get(h))

    return maintenance_mask(windows, ts, codes, labels_of)


@dataclass
class Events:
    """Metric events of one tenant as time-ordered columns (what a replay feeds detect)."""

    tenant: str
    host: np.ndarray  # object
    metric: np.ndarray  # object
    ts: np.ndarray  # float64 epoch s
    value: np.ndarray  # float64
    window_s: float = 60.0

    def __post_init__(self) -> None:
        order = np.argsort(self.ts, kind="stable")
        self.host, self.metric = self.host[order], self.metric[order]
        self.ts = np.asarray(self.ts, np.float64)[order]
        self.value = np.asarray(self.value, np.float64)[order]

    def __len__(self) -> int:
        return int(self.ts.size)

    def with_values(self, value: np.ndarray) -> Events:
        return Events(self.tenant, self.host, self.metric, self.ts, value, self.window_s)

    def series(self) -> tuple[list[SeriesKey], np.ndarray]:
        """``(keys, code per event)``: the distinct ``(host, metric)`` pairs, sorted."""
        uniq, code = np.unique(_series_key(self.host, self.metric), return_inverse=True)
        keys = [tuple(k.split("\x1f", 1)) for k in uniq.tolist()]
        return keys, code.astype(np.int64)  # type: ignore[return-value]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"host": self.host, "metric": self.metric, "ts": self.ts, "value": self.value}
        )

    @classmethod
    def from_postgres(
        cls,
        settings: Settings,
        tenant: str,
        since: float | None = None,
        until: float | None = None,
    ) -> Events:
        """``tenant``'s stored events (no other tenant's row is read); windows of the
        pipeline's ``window_s``. Events inside the tenant's maintenance windows (the silences
        with a schedule, matched on host, metric and inventory tags) are left out, so a deploy
        is not learnt as normal."""
        import psycopg

        from storage.series import load_events

        with psycopg.connect(settings.pg_dsn(), connect_timeout=10) as conn:
            cols = load_events(conn, tenant, since, until)
            if cols["ts"].size:
                keep = ~in_maintenance(conn, tenant, cols)
                if not keep.all():
                    cols = {k: v[keep] for k, v in cols.items()}
        if not cols["ts"].size:
            raise ValueError(f"tenant {tenant!r} has no stored events in this time range")
        return cls(tenant, **cols, window_s=float(settings.window_s))

    @classmethod
    def from_csv(
        cls, paths: Sequence[Path | str], tenant: str, window_s: float | None = None
    ) -> Events:
        """CSV series (``timestamp,value``; a file or a directory tree of them): one file is
        one series, host = its path without ``.csv``, metric ``value``. ``window_s`` defaults
        to the median sampling interval of the files."""
        from training.backtest import _interval, _read, discover_csvs

        hosts, ts, vals, steps = [], [], [], []
        for path, rel in discover_csvs([Path(p) for p in paths]):
            df = _read(path)
            t = df["timestamp"].to_numpy("datetime64[ns]").astype(np.int64) / 1e9
            v = pd.to_numeric(df["value"], errors="coerce").to_numpy(np.float64)
            ok = np.isfinite(v)
            hosts.append(np.full(int(ok.sum()), rel.removesuffix(".csv"), dtype=object))
            ts.append(t[ok])
            vals.append(v[ok])
            steps.append(_interval(t[ok]))
        host = np.concatenate(hosts)
        return cls(
            tenant,
            host,
            np.full(host.size, "value", dtype=object),
            np.concatenate(ts),
            np.concatenate(vals),
            window_s=float(window_s or np.median(steps)),
        )


def split_time(events: Events, train_fraction: float = 0.7) -> float:
    """The time (epoch s, a window boundary) from which events are the evaluation part.

    >>> ev = Events("t", np.array(["h"] * 11, object), np.array(["m"] * 11, object),
    ...             np.arange(11) * 60.0, np.zeros(11))
    >>> split_time(ev, 0.7)
    420.0
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError("train_fraction must be in (0, 1)")
    lo, hi = float(events.ts[0]), float(events.ts[-1])
    w = events.window_s
    return float(np.ceil((lo + train_fraction * (hi - lo)) / w) * w)


def inject(
    events: Events,
    split_ts: float,
    per_series: int = 2,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    warmup: float = 0.2,
) -> tuple[Events, dict[SeriesKey, list[Interval]]]:
    """Inject ``per_series`` anomalies into each part of each series' raw values.

    Sizes follow the series' own spread (MAD, floored at 1 % of its level): a spike moves one
    window by 8-12 spreads, a level shift 10-30 windows by 4-7 spreads, a drift ramps to
    6-10 spreads over 20-40 windows. Anomalies sit clear of each other, of the split and of the
    first ``warmup`` of the training part (detectors learn there). Labels are ``(start, end)``
    epoch s per ``(host, metric)``: the anomaly's span plus 5 windows for the detection delay.
    """
    rng = np.random.default_rng(seed)
    keys, code = events.series()
    value = events.value.copy()
    w = events.window_s
    labels: dict[SeriesKey, list[Interval]] = {}
    lo, hi = float(events.ts[0]), float(events.ts[-1])
    parts = [(lo + warmup * (split_ts - lo), split_ts), (split_ts, hi)]
    for c, key in enumerate(keys):
        rows = np.flatnonzero(code == c)
        v = events.value[rows]
        if rows.size < 20:
            continue
        med = float(np.median(v))
        spread = max(1.4826 * float(np.median(np.abs(v - med))), 0.01 * abs(med), 1e-6)
        t = events.ts[rows]
        for p_lo, p_hi in parts:
            slots = max(int((p_hi - p_lo) // (w * 60)), 1)  # room for anomalies 60 windows apart
            n = min(per_series, slots)
            if n <= 0 or p_hi - p_lo < 80 * w:
                continue
            for k in sorted(rng.choice(slots, n, replace=False).tolist()):
                kind = kinds[int(rng.integers(len(kinds)))]
                start = p_lo + (k * 60 + 5 + int(rng.integers(0, 15))) * w
                if kind == "spike":
                    dur, shape = w, np.ones
                    size = float(rng.uniform(8, 12)) * spread
                elif kind == "level_shift":
                    dur, shape = float(rng.integers(10, 31)) * w, np.ones
                    size = float(rng.uniform(4, 7)) * spread
                else:
                    dur = float(rng.integers(20, 41)) * w
                    size = float(rng.uniform(6, 10)) * spread

                    def shape(m: int) -> np.ndarray:
                        return np.linspace(0.1, 1.0, max(m, 1))[:m]

                end = min(start + dur, p_hi - 10 * w)
                if end <= start:
                    continue
                sel = np.flatnonzero((t >= start) & (t < end))
                if not sel.size:
                    continue
                sign = 1.0 if rng.random() < 0.75 else -1.0
                value[rows[sel]] += sign * size * shape(sel.size)
                labels.setdefault(key, []).append((float(start), float(end + 5 * w)))
    return events.with_values(value), labels


@dataclass
class Replayed:
    """The windows one replay scored (time order per series) and where alerts opened."""

    host: np.ndarray
    metric: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    opened: np.ndarray  # bool: an anomaly alert opened at this window
    features: dict[str, np.ndarray]
    batch_s: float = 0.0  # seconds the batch model spent scoring
    batch_windows: int = 0

    def __len__(self) -> int:
        return int(self.score.size)

    def latency_ms_per_10k(self) -> float | None:
        if not self.batch_windows:
            return None
        return round(1000.0 * self.batch_s * 10_000 / self.batch_windows, 3)


class _Timed:
    """A batch model whose ``score_many`` time is added up (the arm's scoring latency)."""

    def __init__(self, model: Any) -> None:
        self.model, self.seconds, self.windows = model, 0.0, 0

    def score_many(self, X: dict[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.model.score_many(X)
        self.seconds += time.perf_counter() - t0
        self.windows += len(out)
        return out


def replay(
    events: Events, model: Any = None, version: str = "replay", chunk: int = 20_000
) -> Replayed:
    """Feed ``events`` in time order through a fresh :class:`DetectStage` (no threshold rules,
    no lateness, ``model`` as every tenant's batch model; ``None``: the ensemble alone) and
    collect every closed window (the rest closed by a final flush)."""
    timed = None if model is None else _Timed(model)
    stage = DetectStage(
        RuleSet([]),
        window_s=events.window_s,
        lateness_s=0.0,
        model=(lambda: (version, timed)) if timed is not None else None,
        idle_close_wall_s=None,
    )
    n = len(events)
    obj = np.full(n, "", dtype=object)
    batch = MetricBatch(
        obj, np.full(n, events.tenant, dtype=object), events.host, events.metric,
        events.value, events.ts, obj, np.full(n, None, dtype=object),
        partition=np.zeros(n, np.int64),
    )  # fmt: skip
    rows, opens = [], set()
    for lo in range(0, n, chunk):
        outs = [stage(batch.take(np.arange(lo, min(lo + chunk, n))))]
        if lo + chunk >= n:
            outs.append(stage.flush())
        for out in outs:
            if out.windows is not None and len(out.windows):
                rows.append(out.windows)
            for a in out.alerts:
                if a.kind == "open" and a.rule == ANOMALY_RULE:
                    opens.add((a.host, a.metric, a.ts))
    if not rows:
        raise ValueError("the replay closed no window (too few events)")
    cat = {
        "host": np.concatenate([r.host for r in rows]),
        "metric": np.concatenate([r.metric for r in rows]),
        "start": np.concatenate([r.start for r in rows]),
        "end": np.concatenate([r.end for r in rows]),
        "score": np.concatenate([r.score for r in rows]),
    }
    feats = {k: np.concatenate([r.features[k] for r in rows]) for k in FEATURES}
    opened = np.array(
        [(h, m, float(e)) in opens for h, m, e in zip(cat["host"], cat["metric"], cat["end"],
                                                        strict=True)],
        dtype=bool,
    )  # fmt: skip
    order = np.lexsort((cat["start"], cat["metric"].astype(str), cat["host"].astype(str)))
    return Replayed(
        **{k: v[order] for k, v in cat.items()},
        opened=opened[order],
        features={k: v[order] for k, v in feats.items()},
        batch_s=0.0 if timed is None else timed.seconds,
        batch_windows=0 if timed is None else timed.windows,
    )


def _series_key(host: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """``host<US>metric`` per row (unit separator: in no host or metric name)."""
    return np.char.add(np.char.add(host.astype(str), "\x1f"), metric.astype(str))


def _series_rows(r: Replayed) -> list[tuple[SeriesKey, np.ndarray]]:
    """``(key, rows)`` per series of a replay (rows are contiguous: replays sort by series)."""
    key = _series_key(r.host, r.metric)
    change = np.flatnonzero(key[1:] != key[:-1]) + 1
    bounds = np.concatenate([[0], change, [key.size]])
    return [
        ((str(r.host[a]), str(r.metric[a])), np.arange(a, b))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _hits(
    r: Replayed, rows: np.ndarray, spans: list[Interval], w: float
) -> tuple[int, int, list[bool]]:
    """Openings of one series against labelled spans: ``(tp spans, fp openings, caught)``."""
    end, opened = r.end[rows], r.opened[rows]
    t_open = end[opened]
    inside = np.zeros(t_open.size, bool)
    caught = []
    for lo, hi in spans:
        m = (t_open >= lo) & (t_open <= hi + w)
        caught.append(bool(m.any()))
        inside |= m
    return sum(caught), int((~inside).sum()), caught


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": rc, "f1": 2 * p * rc / (p + rc) if p + rc else 0.0}


def arm_metrics(
    r: Replayed,
    part: tuple[float, float],
    labels: dict[SeriesKey, list[Interval]],
    feedback: Sequence[tuple[str, str, str, float, float]] = (),
    window_s: float = 60.0,
) -> dict[str, Any]:
    """The evidence of one arm on the windows ending in ``part`` = ``[lo, hi)``.

    ``feedback``: ``(host, metric, label, start, end)`` of operators' labels in the range.
    """
    lo, hi = part
    series, tp, fp, fn, days = [], 0, 0, 0, 0.0
    fb_tp_caught = fb_tp = fb_fp_fired = fb_fp = 0
    fb_by: dict[SeriesKey, list[tuple[str, float, float]]] = {}
    for h, m, label, a, b in feedback:
        if lo <= b and a < hi:
            fb_by.setdefault((h, m), []).append((label, a, b))
    openings = 0
    for key, rows in _series_rows(r):
        rows = rows[(r.end[rows] > lo) & (r.end[rows] <= hi)]
        if rows.size < 2:
            continue
        spans = [s for s in labels.get(key, []) if lo <= s[1] and s[0] < hi]
        days += (r.end[rows[-1]] - r.end[rows[0]] + window_s) / 86400.0
        openings += int(r.opened[rows].sum())
        t_, f_, caught = _hits(r, rows, spans, window_s)
        tp, fp, fn = tp + t_, fp + f_, fn + len(spans) - t_
        sig = opening_signal(OpeningGate(100, 10), np.zeros(rows.size, np.int64), r.score[rows])
        series.append(
            LabelledSeries(
                f"{key[0]}/{key[1]}",
                (r.end[rows] * 1e9).astype("datetime64[ns]"),
                sig,
                [(np.datetime64(int(a * 1e9), "ns"), np.datetime64(int(b * 1e9), "ns"))
                 for a, b in spans],
                probation=0.0,
                belief=r.score[rows],
            )
        )  # fmt: skip
        for label, a, b in fb_by.get(key, []):
            _, _, (hit,) = _hits(r, rows, [(a, b)], window_s)
            if label == "true_positive":
                fb_tp, fb_tp_caught = fb_tp + 1, fb_tp_caught + hit
            else:
                fb_fp, fb_fp_fired = fb_fp + 1, fb_fp_fired + hit
    if not series:
        raise ValueError("no series has windows in this part of the range")
    rep = evaluate(series)
    out: dict[str, Any] = {
        "nab_standard": rep["nab"]["standard"]["score"],
        "nab_low_fp": rep["nab"]["reward_low_FP"]["score"],
        "nab_low_fn": rep["nab"]["reward_low_FN"]["score"],
        **_prf(tp, fp, fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "alerts_per_series_day": openings / max(days, 1e-9),
        "series": len(series),
        "series_days": days,
        "labelled": tp + fn,
        "feedback_true": fb_tp,
        "feedback_false": fb_fp,
        "feedback_recall": fb_tp_caught / fb_tp if fb_tp else None,
        "feedback_false_fired": fb_fp_fired / fb_fp if fb_fp else None,
        "feedback_precision": (
            fb_tp_caught / (fb_tp_caught + fb_fp_fired) if fb_tp_caught + fb_fp_fired else None
        ),
        "latency_ms_per_10k": r.latency_ms_per_10k(),
    }
    return {k: _clean(v) for k, v in out.items()}


def _clean(v: Any) -> Any:
    if v is None or isinstance(v, int | str):
        return v
    v = float(v)
    return None if not np.isfinite(v) else round(v, 6)


@dataclass
class ReplayReport:
    """The comparison of one candidate: per arm, its evidence out of sample (``arms``) and in
    sample (``in_sample``: the training part), and the replays themselves."""

    tenant: str
    split_ts: float
    range: tuple[float, float]
    arms: dict[str, dict[str, Any]]
    in_sample: dict[str, dict[str, Any]]
    replays: dict[str, Replayed] = field(repr=False)
    labels: dict[SeriesKey, list[Interval]] = field(repr=False)
    window_s: float = 60.0

    def table(self) -> pd.DataFrame:
        """One row per arm and part (``out_of_sample`` / ``in_sample``), metric columns."""
        rows = []
        for part, d in (("out_of_sample", self.arms), ("in_sample", self.in_sample)):
            for arm in ARMS:
                if arm in d:
                    rows.append({"arm": arm, "part": part, **d[arm]})
        return pd.DataFrame(rows)

    def per_day(self) -> pd.DataFrame:
        """Would-have-fired alerts per UTC day (rows) and arm (columns), evaluation part."""
        out = {}
        for arm, r in self.replays.items():
            m = r.opened & (r.end > self.split_ts)
            day = pd.to_datetime(r.end[m], unit="s", utc=True).floor("D")
            out[arm] = pd.Series(1, index=day).groupby(level=0).sum()
        return pd.DataFrame(out).fillna(0).astype(int).sort_index()

    def scores(self, arm: str) -> pd.DataFrame:
        """The arm's window scores with the injected label of each window."""
        r = self.replays[arm]
        label = np.zeros(len(r), bool)
        for key, rows in _series_rows(r):
            for lo, hi in self.labels.get(key, []):
                label[rows] |= (r.end[rows] >= lo) & (r.start[rows] <= hi)
        return pd.DataFrame({
            "host": r.host, "metric": r.metric, "start": r.start, "end": r.end,
            "score": r.score, "opened": r.opened, "label": label,
            "part": np.where(r.end > self.split_ts, "out_of_sample", "in_sample"),
        })  # fmt: skip

    def plot(self, path: Path | str) -> Path:
        """Per-day alert volume per arm, and the ensemble's, champion's and candidate's scores
        on the series with most labels (evaluation part), as one PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), constrained_layout=True)
        pdays = self.per_day()
        if len(pdays):
            pdays.plot.bar(ax=ax1, rot=0)
            ax1.set_xticks(range(len(pdays)), [d.strftime("%m-%d") for d in pdays.index])
        ax1.set_title(f"{self.tenant}: would-have-fired alerts per day (evaluation part)")
        key = max(self.labels, key=lambda k: len(self.labels[k]), default=None)
        for arm in ARMS:
            if arm not in self.replays or key is None:
                continue
            df = self.scores(arm)
            df = df[(df.host == key[0]) & (df.metric == key[1]) & (df.part == "out_of_sample")]
            t = pd.to_datetime(df.end, unit="s", utc=True)
            ax2.plot(t, df.score, label=arm, lw=1)
        if key is not None:
            for lo, hi in self.labels.get(key, []):
                if hi > self.split_ts:
                    ax2.axvspan(
                        pd.to_datetime(lo, unit="s", utc=True),
                        pd.to_datetime(hi, unit="s", utc=True),
                        color="red",
                        alpha=0.15,
                    )
            ax2.set_title(f"{key[0]} / {key[1]}: window score (red: injected anomaly)")
        ax2.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax2.legend(loc="upper left")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path


def judge(
    events: Events,
    fit: Callable[[dict[str, np.ndarray], np.ndarray], Any],
    champion: tuple[str, Any] | None = None,
    *,
    train_fraction: float = 0.7,
    per_series: int = 2,
    seed: int = 0,
    feedback: Sequence[tuple[str, str, str, float, float]] = (),
) -> tuple[Any, ReplayReport]:
    """Split, inject, fit the candidate on the training part, replay the three arms.

    ``fit(features, train_rows)`` gets the window features of the ensemble-only replay and the
    rows it may learn from (training part, not injected) and returns the candidate batch model.
    Returns ``(candidate, report)``.
    """
    split = split_time(events, train_fraction)
    ev, labels = inject(events, split, per_series=per_series, seed=seed)
    base = replay(ev)
    w = ev.window_s
    clean = base.end <= split
    for key, rows in _series_rows(base):
        for lo, hi in labels.get(key, []):
            clean[rows] &= ~((base.end[rows] >= lo) & (base.start[rows] <= hi))
    for h, m, _label, lo, hi in feedback:  # an operator's alert window is no normal either
        clean &= ~((base.host == h) & (base.metric == m) & (base.end >= lo) & (base.start <= hi))
    train_rows = np.flatnonzero(clean)
    if train_rows.size < 50:
        raise ValueError(
            f"only {train_rows.size} clean training windows before the split; more history needed"
        )
    candidate = fit(base.features, train_rows)
    replays = {"ensemble": base}
    if champion is not None:
        replays["champion"] = replay(ev, champion[1], champion[0])
    replays["candidate"] = replay(ev, candidate, "candidate")
    rng = (float(ev.ts[0]), float(ev.ts[-1]) + w)
    arms = {a: arm_metrics(r, (split, rng[1]), labels, feedback, w) for a, r in replays.items()}
    ins = {a: arm_metrics(r, (rng[0], split), labels, feedback, w) for a, r in replays.items()}
    return candidate, ReplayReport(ev.tenant, split, rng, arms, ins, replays, labels, w)


def feedback_from_postgres(
    settings: Settings, tenant: str, pad_s: float = 0.0
) -> list[tuple[str, str, str, float, float]]:
    """Operators' labels of ``tenant``'s alerts: ``(host, metric, label, start, end)``, the
    latest label per alert span winning (a correction replaces an earlier label)."""
    import psycopg

    from storage.feedback import load_labels

    with psycopg.connect(settings.pg_dsn(), connect_timeout=10) as conn:
        rows = load_labels(conn, tenant, pad_s)
    latest: dict[tuple[str, str, float, float], str] = {}
    for _t, h, m, label, lo, hi in rows:
        latest[(h, m, float(lo), float(hi))] = label
    return [(h, m, label, lo, hi) for (h, m, lo, hi), label in latest.items()]
