"""detect, part two: event-time windows → features → detector ensemble (+ batch model) → scores
and anomaly alerts, with state kept per Kafka partition.

Per partition (a host's series always live on one partition, key ``tenant_id|host``) the stage
holds a series registry (``(tenant, host, metric) -> int code``, plus a host code per
``(tenant, host)``), a :class:`features.windows.WindowAggregator` keeping event time *per host*
(each host's windows close by its own clock minus the allowed lateness, or once the partition's
newest event is ``idle_close_s`` ahead of them: one tenant's clock never makes another tenant's
events late), the :class:`models.ensemble.Ensemble` built by
:func:`models.presets.default_ensemble`, the threshold-rule alert tracker
(:class:`pipeline.stages.detect.Detector`) and the anomaly-alert tracker
(:class:`ScoreAlerts`). All of it is one picklable blob (:meth:`DetectStage.snapshot`) that the
runner checkpoints together with the partition's next offset.

The closed windows of a push get the per-host cross-metric features of :mod:`features.cross`
(grouped by ``(tenant, host)`` code and window start) before any detector sees them, so the
ensemble, the champion and the challenger all read the same columns that the sink stores and
training reads back (:data:`FEATURES`).

Work is vectorized over the closed windows of a micro-batch; Python loops only run per closed
window that is anomalous (explanations, alert transitions) and per new series.

Shadow scoring: an optional second provider (``shadow``, the MLflow ``challenger``) scores the
same closed-window feature matrix after everything else is decided, with the champion's
calibration. Its scores ride along in :class:`WindowRows` (``shadow_*`` columns) to the
``shadow_scores`` table only; they never reach the ensemble, severities, alerts, ``scores`` or
the ``score`` of ``signals.score.v1`` records. A failing challenger is logged and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.batch import MetricBatch, factorize
from features.cross import CROSS_FEATURES, cross_metric_features
from features.windows import FEATURES as WINDOW_FEATURES
from features.windows import WindowAggregator
from models.ensemble import SEVERITIES, Ensemble
from models.presets import default_ensemble
from models.rules import RuleSet
from pipeline.stages.detect import Detector

log = logging.getLogger(__name__)

#: Feature columns of every scored window (stored in ``features``, sent on ``signals.score.v1``):
#: the per-series window features, then the per-host cross-metric ones (:mod:`features.cross`).
FEATURES = WINDOW_FEATURES + CROSS_FEATURES
ANOMALY_RULE = "anomaly:ensemble"
#: default ``idle_close_s`` of :class:`DetectStage` (the ``EVENTOPS_IDLE_CLOSE_S`` default)
IDLE_CLOSE_S = 600.0

#: () -> (model version, model with ``score_many(X)``) or (None, None); see registry/champion.py
ModelProvider = Callable[[], tuple[str | None, Any]]


@dataclass
class WindowRows:
    """Closed windows of a batch with their features and scores (columns).

    The ``shadow_*`` columns are the challenger's scores (``None`` when no window of the batch
    was shadow-scored): ``shadow_version`` per row (``None`` = row not scored), ``shadow_score``
    (calibrated like the champion's batch score) and ``shadow_raw`` (the model's own score),
    float64 with NaN where not scored. Nothing but the ``shadow_scores`` table reads them.
    """

    tenant_id: np.ndarray
    host: np.ndarray
    metric: np.ndarray
    start: np.ndarray  # float64 epoch s
    end: np.ndarray
    features: dict[str, np.ndarray]
    score: np.ndarray
    severity: np.ndarray  # object: ok / warning / critical
    components: list[dict]
    expected: np.ndarray
    explanation: list[dict]
    model_version: list[str | None]
    shadow_version: list[str | None] | None = None
    shadow_score: np.ndarray | None = None
    shadow_raw: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def shadow_idx(self) -> np.ndarray:
        """Row indices (int64) that carry a shadow score."""
        if self.shadow_version is None:
            return np.empty(0, np.int64)
        return np.flatnonzero(np.fromiter((v is not None for v in self.shadow_version), bool,
                                          len(self.shadow_version)))

    def _shadow_columns(self) -> tuple[list[str | None], np.ndarray, np.ndarray]:
        if self.shadow_version is None:
            nan = np.full(len(self), np.nan)
            return [None] * len(self), nan, nan
        return self.shadow_version, self.shadow_score, self.shadow_raw

    @staticmethod
    def concat(parts: list[WindowRows]) -> WindowRows | None:
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        cat = np.concatenate
        out = WindowRows(
            cat([p.tenant_id for p in parts]), cat([p.host for p in parts]),
            cat([p.metric for p in parts]), cat([p.start for p in parts]), cat([p.end for p in parts]),
            {k: cat([p.features[k] for p in parts]) for k in parts[0].features},
            cat([p.score for p in parts]), cat([p.severity for p in parts]),
            [c for p in parts for c in p.components], cat([p.expected for p in parts]),
            [e for p in parts for e in p.explanation], [v for p in parts for v in p.model_version],
        )
        if any(p.shadow_version is not None for p in parts):
            cols = [p._shadow_columns() for p in parts]
            out.shadow_version = [v for c in cols for v in c[0]]
            out.shadow_score = cat([c[1] for c in cols])
            out.shadow_raw = cat([c[2] for c in cols])
        return out

    @staticmethod
    def from_records(recs: list[dict]) -> WindowRows | None:
        """Inverse of :meth:`records` (the sink reading ``signals.score.v1``)."""
        if not recs:
            return None

        def obj(xs: list) -> np.ndarray:
            a = np.empty(len(xs), dtype=object)
            a[:] = xs
            return a

        f = {k: np.asarray([r["features"][k] for r in recs], np.float64) for k in WINDOW_FEATURES}
        f["count"] = f["count"].astype(np.int64)
        # records of producers older than the cross-metric features lack them: NaN (NULL)
        nan = float("nan")
        f.update({k: np.asarray([r["features"].get(k, nan) for r in recs], np.float64)
                  for k in CROSS_FEATURES})
        out = WindowRows(
            obj([r["tenant_id"] for r in recs]), obj([r["host"] for r in recs]),
            obj([r["metric"] for r in recs]), np.asarray([r["window_start"] for r in recs], np.float64),
            np.asarray([r["window_end"] for r in recs], np.float64), f,
            np.asarray([r["score"] for r in recs], np.float64), obj([r["severity"] for r in recs]),
            [r["components"] for r in recs],
            np.asarray([np.nan if r["expected"] is None else r["expected"] for r in recs], np.float64),
            [r["explanation"] for r in recs], [r["model_version"] for r in recs],
        )
        shadow = [r.get("shadow") for r in recs]
        if any(sh is not None for sh in shadow):
            out.shadow_version = [None if sh is None else sh["model_version"] for sh in shadow]
            out.shadow_score = np.asarray([np.nan if sh is None else sh["score"] for sh in shadow],
                                          np.float64)
            out.shadow_raw = np.asarray(
                [np.nan if sh is None or sh.get("raw") is None else sh["raw"] for sh in shadow],
                np.float64)
        return out

    def records(self) -> list[dict]:
        """One JSON-able dict per window (``signals.score.v1``).

        A shadow-scored window has a ``shadow`` entry ``{model_version, score, raw}``, apart from
        its ``score`` (which is the champion's and the ensemble's only).
        """
        out = []
        f = {k: v.tolist() for k, v in self.features.items()}
        sv, ss, sr = self._shadow_columns()
        ss, sr = ss.tolist(), sr.tolist()
        for i in range(len(self)):
            rec = {
                "tenant_id": self.tenant_id[i], "host": self.host[i], "metric": self.metric[i],
                "window_start": float(self.start[i]), "window_end": float(self.end[i]),
                "features": {k: f[k][i] for k in f}, "score": float(self.score[i]),
                "severity": self.severity[i], "components": self.components[i],
                "expected": None if np.isnan(self.expected[i]) else float(self.expected[i]),
                "explanation": self.explanation[i], "model_version": self.model_version[i],
            }
            if sv[i] is not None:
                rec["shadow"] = {"model_version": sv[i], "score": ss[i],
                                 "raw": None if sr[i] != sr[i] else sr[i]}
            out.append(rec)
        return out


@dataclass
class DetectOutput:
    alerts: list[dict] = field(default_factory=list)
    windows: WindowRows | None = None
    late_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class ScoreAlerts:
    """Anomaly alerts from window severities, per series code, with flap damping.

    An alert opens when a window is ``warning`` or worse, escalates/de-escalates with the
    severity, and resolves after ``clear_windows`` consecutive ``ok`` windows (flap damping).
    After a resolve, the series cannot re-open a warning for ``cooldown_windows`` windows
    (a critical window still opens). One open alert per series at most (dedup).
    """

    def __init__(self, clear_windows: int = 3, cooldown_windows: int = 5) -> None:
        self.clear_windows, self.cooldown_windows = clear_windows, cooldown_windows
        self.level = np.zeros(0, np.int8)
        self.ok_run = np.zeros(0, np.int32)
        self.cool = np.zeros(0, np.int32)
        self.alert_id: dict[int, tuple[str, float]] = {}

    def _grow(self, n: int) -> None:
        if n > self.level.size:
            extra = n - self.level.size
            self.level = np.concatenate([self.level, np.zeros(extra, np.int8)])
            self.ok_run = np.concatenate([self.ok_run, np.zeros(extra, np.int32)])
            self.cool = np.concatenate([self.cool, np.zeros(extra, np.int32)])

    def step(self, series: np.ndarray, sev: np.ndarray, on_event: Callable[[int, str, int, int], None]) -> None:
        """Advance per window row (rows of one series in window order)."""
        if not series.size:
            return
        self._grow(int(series.max()) + 1)
        # fast path: series with only healthy windows here and no open alert just tick their
        # cooldown; every other series runs its windows in order (exact, batch-size independent)
        n = self.level.size
        hot = np.zeros(n, bool)
        hot[series[sev > 0]] = True
        hot |= self.level > 0
        rows_hot = hot[series]
        np.subtract.at(self.cool, series[~rows_hot], 1)
        np.maximum(self.cool, 0, out=self.cool)
        for i in np.flatnonzero(rows_hot):
            s, v = int(series[i]), int(sev[i])
            L = int(self.level[s])
            if L == 0:
                if v == 2 or (v == 1 and self.cool[s] <= 0):
                    self.level[s], self.ok_run[s] = v, 0
                    on_event(i, "open", s, v)
                elif self.cool[s] > 0:
                    self.cool[s] -= 1
                continue
            if v == 0:
                self.ok_run[s] += 1
                if self.ok_run[s] >= self.clear_windows:
                    self.level[s], self.cool[s] = 0, self.cooldown_windows
                    on_event(i, "resolve", s, L)
                continue
            self.ok_run[s] = 0
            if v != L:
                self.level[s] = v
                on_event(i, "escalate" if v > L else "deescalate", s, v)

    def to_state(self) -> dict:
        return {"level": self.level, "ok_run": self.ok_run, "cool": self.cool,
                "alert_id": dict(self.alert_id), "clear": self.clear_windows,
                "cooldown": self.cooldown_windows}

    @classmethod
    def from_state(cls, st: dict) -> ScoreAlerts:
        sa = cls(st["clear"], st["cooldown"])
        sa.level, sa.ok_run, sa.cool = st["level"].copy(), st["ok_run"].copy(), st["cool"].copy()
        sa.alert_id = dict(st["alert_id"])
        return sa


class PartitionState:
    """Everything detect keeps for one input partition."""

    def __init__(self, rules: RuleSet, window_s: float, lateness_s: float,
                 ensemble: Ensemble | None = None, idle_close_s: float | None = None) -> None:
        self.keys: dict[tuple[str, str, str], int] = {}
        self.names: list[tuple[str, str, str]] = []
        #: metric family per (tenant, metric): detectors share a family's prior and River model,
        #: so a family never spans tenants (one tenant's values cannot move another's baselines;
        #: checkpoints written when families were keyed by metric alone keep those codes)
        self.families: dict[tuple[str, str] | str, int] = {}
        self.family: list[int] = []
        self.hosts: dict[tuple[str, str], int] = {}
        self.host: list[int] = []
        self._host_codes = np.empty(0, np.int64)
        self.agg = WindowAggregator(window_s=window_s, allowed_lateness_s=lateness_s,
                                    idle_close_s=idle_close_s)
        self.ensemble = ensemble or default_ensemble()
        self.rule_alerts = Detector(rules)
        self.score_alerts = ScoreAlerts()

    def codes(self, b: MetricBatch) -> np.ndarray:
        """Series codes of a batch's events; new series are registered (per unique series)."""
        ut, ct = factorize(b.tenant_id)
        uh, ch = factorize(b.host)
        um, cm = factorize(b.metric)
        combo = (ct.astype(np.int64) * len(uh) + ch) * len(um) + cm
        uniq, inv = np.unique(combo, return_inverse=True)
        out = np.empty(uniq.size, np.int64)
        nh, nm = len(uh), len(um)
        for j, k in enumerate(uniq.tolist()):
            key = (ut[k // (nh * nm)], uh[(k // nm) % nh], um[k % nm])
            code = self.keys.get(key)
            if code is None:
                code = self.keys[key] = len(self.names)
                self.names.append(key)
                fam = self.families.setdefault((key[0], key[2]), len(self.families))
                self.family.append(fam)
                self.host.append(self.hosts.setdefault(key[:2], len(self.hosts)))
            out[j] = code
        return out[inv]

    def host_codes(self, series: np.ndarray) -> np.ndarray:
        """int64 host code (one per ``(tenant, host)``) of each series code."""
        if self._host_codes.size != len(self.host):
            self._host_codes = np.asarray(self.host, np.int64)
        return self._host_codes[series]

    def to_state(self) -> dict:
        return {"names": list(self.names), "families": dict(self.families), "family": list(self.family),
                "agg": self.agg.to_state(), "ensemble": self.ensemble.to_state(),
                "rule_alerts": self.rule_alerts.series, "score_alerts": self.score_alerts.to_state()}

    @classmethod
    def from_state(cls, st: dict, rules: RuleSet, idle_close_s: float | None = None) -> PartitionState:
        """Rebuild from :meth:`to_state`; ``idle_close_s`` is the running configuration's (it
        also applies to checkpoints written before event time was kept per host)."""
        ps = cls.__new__(cls)
        ps.names = [tuple(n) for n in st["names"]]
        ps.keys = {n: i for i, n in enumerate(ps.names)}
        ps.families, ps.family = dict(st["families"]), list(st["family"])
        # host codes are derived from the names (checkpoints older than them restore too)
        ps.hosts, ps.host = {}, []
        for n in ps.names:
            ps.host.append(ps.hosts.setdefault(n[:2], len(ps.hosts)))
        ps._host_codes = np.empty(0, np.int64)
        ps.agg = WindowAggregator.from_state(st["agg"], host_of=np.asarray(ps.host, np.int64),
                                             idle_close_s=idle_close_s)
        ps.ensemble = Ensemble.from_state(st["ensemble"])
        ps.rule_alerts = Detector(rules)
        ps.rule_alerts.series = st["rule_alerts"]
        ps.score_alerts = ScoreAlerts.from_state(st["score_alerts"])
        return ps


def calibrate_batch_score(raw: np.ndarray) -> np.ndarray:
    """Map ``-score_samples`` of an IsolationForest ((0, 1], ~0.5 neutral) onto [0, 1]:
    0 up to 0.55, rising linearly to 1 at 0.85."""
    return np.clip((raw - 0.55) / 0.30, 0.0, 1.0)


def _no_model() -> tuple[None, None]:
    return None, None


class DetectStage:
    """The detect stage: rules on events, ensemble (+ champion model) on closed windows.

    Event time is per host (``tenant|host``): see :mod:`features.windows` for the lateness
    policy and ``idle_close_s``.

    ``model`` provides the champion batch model, whose calibrated score joins the ensemble's;
    ``shadow`` the challenger, scored on the same windows for comparison only (see the module
    docstring). Each provider is read once per batch.
    """

    #: seconds between two log lines about the same failing challenger
    SHADOW_LOG_EVERY_S = 60.0

    def __init__(self, rules: RuleSet, window_s: float = 60.0, lateness_s: float = 30.0,
                 model: ModelProvider | None = None,
                 ensemble_factory: Callable[[], Ensemble] = default_ensemble,
                 shadow: ModelProvider | None = None,
                 idle_close_s: float | None = IDLE_CLOSE_S) -> None:
        self.rules = rules
        self.window_s, self.lateness_s = window_s, lateness_s
        self.idle_close_s = idle_close_s
        self.model = model or _no_model
        self.shadow = shadow or _no_model
        self.ensemble_factory = ensemble_factory
        self.parts: dict[int, PartitionState] = {}
        #: closed-window batches the challenger failed to score (skipped)
        self.shadow_failures = 0
        self._shadow_logged: tuple[str | None, float] = (None, -float("inf"))

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        for ps in self.parts.values():
            ps.rule_alerts.set_rules(rules)

    def partition(self, p: int) -> PartitionState:
        ps = self.parts.get(p)
        if ps is None:
            ps = self.parts[p] = PartitionState(self.rules, self.window_s, self.lateness_s,
                                                self.ensemble_factory(), self.idle_close_s)
        return ps

    # -- checkpoints -------------------------------------------------------------------------
    def snapshot(self, p: int) -> bytes:
        return pickle.dumps(self.partition(p).to_state(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, p: int, blob: bytes | None) -> None:
        """Replace partition ``p``'s state by a checkpoint (``None``: start empty)."""
        if blob is None:
            self.parts.pop(p, None)
            return
        self.parts[p] = PartitionState.from_state(pickle.loads(blob), self.rules, self.idle_close_s)

    def drop(self, p: int) -> None:
        self.parts.pop(p, None)

    # -- one batch ---------------------------------------------------------------------------
    def __call__(self, batch: MetricBatch) -> DetectOutput:
        out = DetectOutput()
        n = len(batch)
        if not n:
            return out
        part = batch.partition if batch.partition is not None else np.zeros(n, np.int64)
        windows, late = [], []
        version, model = self.model()
        shadow = self._challenger(version)
        for p in np.unique(part).tolist():
            idx = np.flatnonzero(part == p) if len(part) and part.min() != part.max() else np.arange(n)
            sub = batch if idx.size == n else batch.take(idx)
            ps = self.partition(int(p))
            out.alerts.extend(ps.rule_alerts(sub).events)
            codes = ps.codes(sub)
            closed = ps.agg.push(codes, sub.ts, sub.value, host=ps.host_codes(codes))
            if closed.late_idx.size:
                late.append(idx[closed.late_idx])
            if len(closed):
                w = self._score(ps, closed, version, model, out.alerts, shadow)
                windows.append(w)
        out.windows = WindowRows.concat(windows)
        if late:
            out.late_idx = np.concatenate(late)
        return out

    def flush(self) -> DetectOutput:
        """Close every open window (end of a replay)."""
        out = DetectOutput()
        version, model = self.model()
        shadow = self._challenger(version)
        windows = []
        for ps in self.parts.values():
            closed = ps.agg.flush()
            if len(closed):
                windows.append(self._score(ps, closed, version, model, out.alerts, shadow))
        out.windows = WindowRows.concat(windows)
        return out

    def _challenger(self, champion: str | None) -> tuple[str, Any] | None:
        """``(version, model)`` of the challenger when it is loaded and not the champion."""
        version, model = self.shadow()
        if model is None or version is None or version == champion:
            return None
        return version, model

    def _shadow_score(self, rows: WindowRows, X: dict[str, np.ndarray], version: str, model) -> None:
        """Fill ``rows.shadow_*`` with the challenger's scores of ``X`` (skipped on failure).

        Runs after everything of the batch is decided, on read-only views of the columns: the
        challenger can neither change the champion's results nor the stored features.
        """
        n = len(rows)
        cols = {}
        for k, v in X.items():
            v = np.asarray(v).view()
            v.flags.writeable = False
            cols[k] = v
        try:
            raw = np.asarray(model.score_many(cols), np.float64)
            if raw.shape != (n,):
                raise ValueError(f"score_many returned shape {raw.shape} for {n} windows")
        except Exception:  # noqa: BLE001 - a broken challenger must not cost the batch
            self.shadow_failures += 1
            now = time.monotonic()
            last_version, last_t = self._shadow_logged
            if version != last_version or now - last_t >= self.SHADOW_LOG_EVERY_S:
                self._shadow_logged = (version, now)
                log.warning("challenger v%s failed to score %d windows; shadow scores skipped "
                            "(%d failed batches so far)", version, n, self.shadow_failures,
                            exc_info=True)
            return
        ok = np.isfinite(raw)
        if ok.all():
            rows.shadow_version = [version] * n
        else:  # a window the challenger cannot score is left out, not stored as NULL
            rows.shadow_version = [version if o else None for o in ok.tolist()]
            raw = np.where(ok, raw, np.nan)
        rows.shadow_raw = raw
        rows.shadow_score = calibrate_batch_score(raw)

    def _score(self, ps: PartitionState, closed, version: str | None, model, alerts: list[dict],
               shadow: tuple[str, Any] | None = None) -> WindowRows:
        X = closed.columns()
        s = np.asarray(X["series"], np.int64)
        X["family"] = np.asarray(ps.family, np.int64)[s]
        # every window of a host with the same start is closed by the same push (features.cross)
        X.update(cross_metric_features(ps.host_codes(s), X["start"], X))
        res = ps.ensemble.process(X)
        score, sev = res.score, res.severity
        batch_score = None
        if model is not None:
            batch_score = calibrate_batch_score(np.asarray(model.score_many(X), np.float64))
            score = np.maximum(score, batch_score)
            sev = np.maximum(sev, (batch_score >= ps.ensemble.warning).astype(np.int8)
                             + (batch_score >= ps.ensemble.critical))
        names = ps.names
        tenant = np.array([names[i][0] for i in s.tolist()], dtype=object)
        host = np.array([names[i][1] for i in s.tolist()], dtype=object)
        metric = np.array([names[i][2] for i in s.tolist()], dtype=object)
        comp_cols = {k: np.round(v, 4).tolist() for k, v in res.components.items()}
        if batch_score is not None:
            comp_cols["batch"] = np.round(batch_score, 4).tolist()
        components = [{k: v[i] for k, v in comp_cols.items()} for i in range(s.size)]
        explanation: list[dict] = [{}] * s.size
        host_n, host_dev, host_maxz = X["host_metrics"], X["host_deviating"], X["host_max_z"]
        for i in np.flatnonzero(sev > 0).tolist():
            e = res.explain(i)
            e["score"], e["severity"] = float(score[i]), SEVERITIES[int(sev[i])]
            if batch_score is not None and batch_score[i] >= 0.5 and "batch" not in e["fired"]:
                e["fired"].append("batch")
            e["model_version"] = version
            if host_n[i] > 1:  # what the rest of the host did in the same window
                e["host"] = {"metrics": int(host_n[i]), "deviating": int(host_dev[i]),
                             "max_z": round(float(host_maxz[i]), 2)}
            explanation[i] = e
        start, end = closed.start, closed.end

        def on_event(i: int, kind: str, code: int, level: int) -> None:
            t, h, m = names[code]
            if kind == "open":
                aid = hashlib.blake2b(f"{t}|{h}|{m}|{ANOMALY_RULE}|{end[i]!r}".encode(),
                                      digest_size=12).hexdigest()
                ps.score_alerts.alert_id[code] = (aid, float(end[i]))
            aid, opened = ps.score_alerts.alert_id.get(code, ("", float(end[i])))
            if kind == "resolve":
                ps.score_alerts.alert_id.pop(code, None)
            sevname = SEVERITIES[level]
            exp = explanation[i] or res.explain(i)
            actual = float(res.actual[i])
            expected = exp.get("expected")
            if kind == "resolve":
                msg = f"{m} on {h} back to normal (score {score[i]:.2f})"
            else:
                band = f", expected ~{expected:g}" if expected is not None else ""
                msg = f"{m} on {h} anomalous: window mean {actual:g}{band} (score {score[i]:.2f})"
                others = exp.get("host", {}).get("deviating", 0)
                if others:
                    msg += f"; {others} other metric{'s' if others > 1 else ''} of {h} moved too"
            alerts.append({
                "event_key": f"{aid}:{kind}:{float(end[i])!r}", "alert_id": aid, "kind": kind,
                "state": "resolved" if kind == "resolve" else "open",
                "tenant_id": t, "host": h, "metric": m, "value": actual, "severity": sevname,
                "ts_event": _iso(float(end[i])), "ts": float(end[i]), "opened_at": opened,
                "rule": ANOMALY_RULE, "threshold": ps.ensemble.warning, "message": msg,
                "score": float(score[i]), "explanation": exp, "model_version": version,
                "event_id": f"window:{t}|{h}|{m}:{float(start[i])!r}",
            })

        ps.score_alerts.step(s, sev.astype(np.int8), on_event)
        rows = WindowRows(
            tenant, host, metric, start, end, {k: X[k] for k in FEATURES if k in X}, score,
            np.array(SEVERITIES, dtype=object)[sev], components, res.expected, explanation,
            [version] * s.size,
        )
        if shadow is not None:
            self._shadow_score(rows, X, *shadow)
        return rows
