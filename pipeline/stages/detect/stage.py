"""The detect stage: threshold rules on events; event-time windows → features → detector
ensemble (+ batch model) → scores and anomaly alerts on closed windows; state per Kafka
partition.

Per partition (a host's series always live on one partition, key ``tenant_id|host``) the stage
keeps a :class:`~pipeline.stages.detect.partition.PartitionState`: the series registry, a
:class:`features.windows.WindowAggregator` keeping event time *per host* (each host's windows
close by its own clock minus the allowed lateness, or once the partition's newest event is
``idle_close_s`` ahead of them: one tenant's clock never makes another tenant's events late),
the :class:`models.ensemble.Ensemble` built by :func:`models.presets.default_ensemble`, the
threshold-rule alert tracker (:mod:`~pipeline.stages.detect.rule_alerts`) and the anomaly-alert
tracker (:mod:`~pipeline.stages.detect.score_alerts`). All of it is one blob
(:meth:`DetectStage.snapshot`) that the runner checkpoints together with the partition's next
offset. Alert transitions of both trackers come out as :class:`core.records.AlertEvent`.

The closed windows of a push get the per-host cross-metric features of :mod:`features.cross`
(grouped by ``(tenant, host)`` code and window start) before any detector sees them, so the
ensemble, the champion and the challenger all read the same columns that the sink stores and
training reads back (:data:`~pipeline.stages.detect.window_rows.FEATURES`).

Processing-time idle close (:meth:`DetectStage.tick`): a partition that receives nothing at all
moves no clock, so its windows would wait for the next event. The runner tells the stage how long
(wall clock) a partition has received nothing; from ``idle_close_wall_s`` on, every host of it
closes the windows its clock would close had it moved on by that time (its newest event + the idle
time - the allowed lateness), never past the window of its newest event
(:meth:`features.windows.WindowAggregator.advance`). The windows are scored and alerted like any
others; the stage reads no clock itself, so a test drives it with numbers.

Work is vectorized over the closed windows of a micro-batch; Python loops only run per closed
window that is anomalous (explanations, alert transitions) and per new series.

Shadow scoring: an optional second provider (``shadow``, the MLflow ``challenger``) scores the
same closed-window feature matrix after everything else is decided, with the champion's
calibration. Its scores ride along in :class:`~pipeline.stages.detect.window_rows.WindowRows`
(``shadow_*`` columns) to the
``shadow_scores`` table only; they never reach the ensemble, severities, alerts, ``scores`` or
the ``score`` of ``signals.score.v1`` records. A failing challenger is logged and skipped.

Maintenance windows (:class:`Maintenance`, set by the runner from the ``silences`` table): a
closed window that overlaps one matching its series is scored and alerted like any other but
not learnt (:meth:`models.ensemble.Ensemble.process` with a learn mask), so a deploy or a
backup does not become the series' new normal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.batch import MetricBatch
from core.records import AlertEvent
from core.silences import Silence, alert_labels, maintenance_mask
from core.telemetry import CHAMPION_VERSION
from features.cross import cross_metric_features
from models.ensemble import SEVERITIES, Ensemble
from models.presets import default_ensemble
from models.rules import RuleSet
from pipeline.stages.detect.partition import PartitionState
from pipeline.stages.detect.window_rows import FEATURES, WindowRows

log = logging.getLogger(__name__)

#: default ``idle_close_s`` of :class:`DetectStage` (the ``EVENTOPS_IDLE_CLOSE_S`` default)
IDLE_CLOSE_S = 600.0
#: default ``idle_close_wall_s`` of :class:`DetectStage` (``EVENTOPS_IDLE_CLOSE_WALL_S``)
IDLE_CLOSE_WALL_S = 30.0

#: () -> the batch models: ``{tenant: (version, model)}`` (a tenant not in it is scored by the
#: ensemble alone; what :class:`registry.watcher.TenantWatcher` publishes), or one
#: ``(version, model)`` pair scoring every tenant's windows alike (replays, tests), ``(None,
#: None)`` for none. ``model.score_many(X)`` returns one raw score per window.
ModelProvider = Callable[[], "Mapping[str, tuple[str, Any]] | tuple[str | None, Any]"]


@dataclass(frozen=True)
class Maintenance:
    """Every tenant's maintenance windows and its hosts' inventory tags (the labels the
    windows' matchers read besides host and metric).

    >>> from core.silences import new_silence
    >>> w = new_silence("a", ["metric=cpu"], now=0.0, schedule="0 * * * *", duration_s=600)
    >>> m = Maintenance({"a": (w,)})
    >>> names = [("a", "h", "cpu"), ("a", "h", "mem"), ("b", "h", "cpu")]
    >>> m.mask(names, np.array([0, 1, 2, 0]), np.array([0.0, 0.0, 0.0, 900.0]),
    ...        np.array([60.0, 60.0, 60.0, 960.0])).tolist()
    [True, False, False, False]
    """

    windows: Mapping[str, tuple[Silence, ...]] = field(default_factory=dict)
    tags: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def mask(self, names, codes: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """bool per closed window (series ``codes``, ``[start, end)``): in maintenance."""
        out = np.zeros(codes.size, bool)
        if not self.windows or not codes.size:
            return out
        uniq, inv = np.unique(codes, return_inverse=True)
        tenant = np.array([names[c][0] for c in uniq.tolist()], dtype=object)[inv]

        def labels_of(code: int) -> dict[str, str]:
            t, h, m = names[code]
            return alert_labels(h, m, "", "", self.tags.get((t, h)))

        for t in set(tenant.tolist()) & set(self.windows):
            idx = np.flatnonzero(tenant == t)
            ws = self.windows[t]
            out[idx] = maintenance_mask(ws, start[idx], codes[idx], labels_of, until=end[idx])
        return out


class ModelTable:
    """One read of a :data:`ModelProvider`: which model scores which tenant's windows.

    >>> ModelTable(("3", "m")).groups(np.array(["a", "b", "a"], dtype=object))
    [(None, '3', 'm')]
    >>> g = ModelTable({"a": ("3", "m")}).groups(np.array(["a", "b", "a"], dtype=object))
    >>> [(idx.tolist(), v, m) for idx, v, m in g]
    [([0, 2], '3', 'm')]
    >>> ModelTable((None, None)).groups(np.array(["a"], dtype=object))
    []
    """

    __slots__ = ("per_tenant", "single")

    def __init__(self, got: Any) -> None:
        self.single: tuple[str, Any] | None = None
        self.per_tenant: Mapping[str, tuple[str, Any]] = {}
        if isinstance(got, tuple):
            if got[1] is not None:
                self.single = (None if got[0] is None else str(got[0]), got[1])  # type: ignore[assignment]
        elif got:
            self.per_tenant = got

    def __bool__(self) -> bool:
        return self.single is not None or bool(self.per_tenant)

    def version(self, tenant: str) -> str | None:
        if self.single is not None:
            return self.single[0]
        hit = self.per_tenant.get(tenant)
        return None if hit is None else hit[0]

    def groups(self, tenant: np.ndarray) -> list[tuple[np.ndarray | None, str, Any]]:
        """``(rows or None = all, version, model)`` for the windows with a model."""
        if self.single is not None:
            return [(None, *self.single)]
        if not self.per_tenant or not tenant.size:
            return []
        out = []
        for t in sorted(set(tenant.tolist()) & self.per_tenant.keys()):
            v, m = self.per_tenant[t]
            out.append((np.flatnonzero(tenant == t), v, m))
        return out

    def without(self, champion: ModelTable) -> ModelTable:
        """The challengers that are not their tenant's champion (what shadow-scores)."""
        if self.single is not None:
            v = self.single[0]
            if v is None or champion.single is not None and champion.single[0] == v:
                return ModelTable((None, None))
            return self
        keep = {t: vm for t, vm in self.per_tenant.items() if champion.version(t) != vm[0]}
        return ModelTable(keep)


def _take(X: dict[str, np.ndarray], idx: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
    if idx is None or idx.size == n:
        return X
    return {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == n else v) for k, v in X.items()}


@dataclass
class DetectOutput:
    """What one call of the stage made: alert transitions, scored windows, late events."""

    alerts: list[AlertEvent] = field(default_factory=list)
    windows: WindowRows | None = None
    late_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


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

    ``model`` provides the champion batch models (:data:`ModelProvider`: per tenant, or one for
    all), whose calibrated score joins the ensemble's on the windows of their tenant; ``shadow``
    the challengers, scored on the same windows for comparison only (see the module docstring).
    Each provider is read once per batch.

    ``idle_close_wall_s``: a partition idle that long (wall clock, told by the runner through
    :meth:`tick`) has its windows closed by processing time; ``None`` or 0: never.
    """

    #: seconds between two log lines about the same failing challenger
    SHADOW_LOG_EVERY_S = 60.0

    def __init__(
        self,
        rules: RuleSet,
        window_s: float = 60.0,
        lateness_s: float = 30.0,
        model: ModelProvider | None = None,
        ensemble_factory: Callable[[], Ensemble] = default_ensemble,
        shadow: ModelProvider | None = None,
        idle_close_s: float | None = IDLE_CLOSE_S,
        idle_close_wall_s: float | None = IDLE_CLOSE_WALL_S,
    ) -> None:
        self.rules = rules
        self.window_s, self.lateness_s = window_s, lateness_s
        self.idle_close_s = idle_close_s
        if idle_close_wall_s is not None and not idle_close_wall_s >= 0:
            raise ValueError(f"idle_close_wall_s must be >= 0 or None, got {idle_close_wall_s!r}")
        self.idle_close_wall_s = idle_close_wall_s or None
        self.model = model or _no_model
        self.shadow = shadow or _no_model
        self.ensemble_factory = ensemble_factory
        self.parts: dict[int, PartitionState] = {}
        #: closed-window batches the challenger failed to score (skipped)
        self.shadow_failures = 0
        #: maintenance windows in force (the runner refreshes them)
        self.maintenance = Maintenance()
        #: closed windows scored but not learnt because they were in a maintenance window
        self.maintenance_windows = 0
        self._shadow_logged: tuple[str | None, float] = (None, -float("inf"))
        #: tenant -> the champion version last exported (``eventops_champion_version``)
        self._champions: dict[str, str | None] = {}

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        for ps in self.parts.values():
            ps.rule_alerts.set_rules(rules)

    def partition(self, p: int) -> PartitionState:
        ps = self.parts.get(p)
        if ps is None:
            ps = self.parts[p] = PartitionState(
                self.rules,
                self.window_s,
                self.lateness_s,
                self.ensemble_factory(),
                self.idle_close_s,
            )
        return ps

    # -- checkpoints -------------------------------------------------------------------------
    def snapshot(self, p: int) -> bytes:
        return self.partition(p).dumps()

    def restore(self, p: int, blob: bytes | None) -> None:
        """Replace partition ``p``'s state by a checkpoint (``None``: start empty)."""
        if blob is None:
            self.parts.pop(p, None)
            return
        self.parts[p] = PartitionState.loads(blob, self.rules, self.idle_close_s)

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
        models = ModelTable(self.model())
        shadow = ModelTable(self.shadow()).without(models)
        for p in np.unique(part).tolist():
            idx = (
                np.flatnonzero(part == p)
                if len(part) and part.min() != part.max()
                else np.arange(n)
            )
            sub = batch if idx.size == n else batch.take(idx)
            ps = self.partition(int(p))
            out.alerts.extend(ps.rule_alerts(sub).events)
            codes = ps.codes(sub)
            closed = ps.agg.push(codes, sub.ts, sub.value, host=ps.host_codes(codes))
            if closed.late_idx.size:
                late.append(idx[closed.late_idx])
            if len(closed):
                w = self._score(ps, closed, models, out.alerts, shadow)
                windows.append(w)
        out.windows = WindowRows.concat(windows)
        if late:
            out.late_idx = np.concatenate(late)
        return out

    def flush(self) -> DetectOutput:
        """Close every open window (end of a replay)."""
        out = DetectOutput()
        models = ModelTable(self.model())
        shadow = ModelTable(self.shadow()).without(models)
        windows = []
        for ps in self.parts.values():
            closed = ps.agg.flush()
            if len(closed):
                windows.append(self._score(ps, closed, models, out.alerts, shadow))
        out.windows = WindowRows.concat(windows)
        return out

    def tick(self, p: int, idle_s: float) -> DetectOutput:
        """Processing-time idle close of partition ``p``, which has received nothing for
        ``idle_s`` seconds of the runner's wall clock.

        Below ``idle_close_wall_s`` (or with it off) nothing happens. From it on, each host of
        the partition closes the windows that end at or before its newest event + ``idle_s`` -
        the allowed lateness, up to the window of its newest event; they are scored and alerted
        like the windows of a batch. Calling it again with a larger ``idle_s`` closes what is
        due by then; a call that closes nothing leaves the state as it was. The state it leaves
        is what the runner checkpoints (with the partition's unchanged offset), so a restart
        after that checkpoint keeps the windows closed: events behind them are late.
        """
        out = DetectOutput()
        wall = self.idle_close_wall_s
        ps = self.parts.get(p)
        if wall is None or ps is None or not idle_s >= wall:
            return out
        closed = ps.agg.advance(idle_s)
        if len(closed):
            models = ModelTable(self.model())
            shadow = ModelTable(self.shadow()).without(models)
            out.windows = self._score(ps, closed, models, out.alerts, shadow)
        return out

    def _shadow_score(
        self, rows: WindowRows, X: dict[str, np.ndarray], shadow: ModelTable, tenant: np.ndarray
    ) -> None:
        """Fill ``rows.shadow_*`` with the challengers' scores of ``X`` (a failing challenger's
        windows are skipped).

        Runs after everything of the batch is decided, on read-only views of the columns: a
        challenger can neither change the champion's results nor the stored features.
        """
        n = len(rows)
        cols = {}
        for k, v in X.items():
            v = np.asarray(v).view()
            v.flags.writeable = False
            cols[k] = v
        raw_all = np.full(n, np.nan)
        versions = np.full(n, None, dtype=object)
        for idx, version, model in shadow.groups(tenant):
            m = n if idx is None else idx.size
            try:
                raw = np.asarray(model.score_many(_take(cols, idx, n)), np.float64)
                if raw.shape != (m,):
                    raise ValueError(f"score_many returned shape {raw.shape} for {m} windows")
            except Exception:  # noqa: BLE001 - a broken challenger must not cost the batch
                self.shadow_failures += 1
                now = time.monotonic()
                last_version, last_t = self._shadow_logged
                if version != last_version or now - last_t >= self.SHADOW_LOG_EVERY_S:
                    self._shadow_logged = (version, now)
                    log.warning(
                        "challenger v%s failed to score %d windows; shadow scores skipped "
                        "(%d failed batches so far)",
                        version,
                        m,
                        self.shadow_failures,
                        exc_info=True,
                    )
                continue
            rows_i = np.arange(n) if idx is None else idx
            ok = np.isfinite(raw)
            raw_all[rows_i[ok]] = raw[ok]  # a window the challenger cannot score is left out
            versions[rows_i[ok]] = version
        if not np.isfinite(raw_all).any():
            return
        rows.shadow_version = versions.tolist()
        rows.shadow_raw = raw_all
        rows.shadow_score = calibrate_batch_score(raw_all)

    def _export_champions(self, models: ModelTable, tenant: np.ndarray) -> None:
        """``eventops_champion_version{tenant}``: the registry version of the model scoring the
        windows of each tenant of this batch (0: the default ensemble alone), set when it
        changes (one look per tenant of the closed windows, not per window)."""
        for t in set(tenant.tolist()):
            v = models.version(t)
            if t not in self._champions or self._champions[t] != v:
                self._champions[t] = v
                CHAMPION_VERSION.labels(t).set(int(v) if v is not None and v.isdigit() else 0)

    def _score(
        self,
        ps: PartitionState,
        closed,
        models: ModelTable,
        alerts: list[AlertEvent],
        shadow: ModelTable | None = None,
    ) -> WindowRows:
        X = closed.columns()
        s = np.asarray(X["series"], np.int64)
        X["family"] = np.asarray(ps.family, np.int64)[s]
        # every window of a host with the same start is closed by the same push (features.cross)
        X["host"] = ps.host_codes(s)
        X.update(cross_metric_features(X["host"], X["start"], X))
        learn: bool | np.ndarray = True
        if self.maintenance.windows:
            skip = self.maintenance.mask(ps.names, s, closed.start, closed.end)
            if skip.any():
                learn = ~skip
                self.maintenance_windows += int(skip.sum())
        res = ps.ensemble.process(X, learn=learn)
        score, sev = res.score, res.severity
        names = ps.names
        tenant = np.array([names[i][0] for i in s.tolist()], dtype=object)
        host = np.array([names[i][1] for i in s.tolist()], dtype=object)
        metric = np.array([names[i][2] for i in s.tolist()], dtype=object)
        self._export_champions(models, tenant)
        n = s.size
        version = np.full(n, None, dtype=object)  # the batch model's version per window
        batch_score = None  # calibrated batch score, NaN where the tenant has no model
        for idx, v, model in models.groups(tenant):
            if batch_score is None:
                batch_score = np.full(n, np.nan)
            rows_i = slice(None) if idx is None else idx
            raw = np.asarray(model.score_many(_take(X, idx, n)), np.float64)
            batch_score[rows_i] = calibrate_batch_score(raw)
            version[rows_i] = v
        versions: list[str | None] = version.tolist()
        if batch_score is not None:
            b = np.nan_to_num(batch_score, nan=0.0)
            score = np.maximum(score, b)
            sev = np.maximum(
                sev, (b >= ps.ensemble.warning).astype(np.int8) + (b >= ps.ensemble.critical)
            )
        comp_cols = {k: np.round(v, 4).tolist() for k, v in res.components.items()}
        components = [{k: v[i] for k, v in comp_cols.items()} for i in range(n)]
        if batch_score is not None:
            for i, b in enumerate(np.round(batch_score, 4).tolist()):
                if b == b:  # not NaN: this window's tenant has a batch model
                    components[i]["batch"] = b
        explanation: list[dict] = [{}] * s.size
        host_n, host_dev, host_maxz = X["host_metrics"], X["host_deviating"], X["host_max_z"]
        for i in np.flatnonzero(sev > 0).tolist():
            e = res.explain(i)
            e["score"], e["severity"] = float(score[i]), SEVERITIES[int(sev[i])]
            if batch_score is not None and batch_score[i] >= 0.5 and "batch" not in e["fired"]:
                e["fired"].append("batch")
            e["model_version"] = versions[i]
            if host_n[i] > 1:  # what the rest of the host did in the same window
                e["host"] = {
                    "metrics": int(host_n[i]),
                    "deviating": int(host_dev[i]),
                    "max_z": round(float(host_maxz[i]), 2),
                }
            explanation[i] = e
        start, end = closed.start, closed.end

        def on_event(i: int, kind: str, code: int, level: int) -> None:
            alerts.append(
                ps.score_alerts.event(
                    code,
                    names[code],
                    kind,
                    level,
                    start=start[i],
                    end=end[i],
                    score=float(score[i]),
                    actual=float(res.actual[i]),
                    explanation=explanation[i] or res.explain(i),
                    threshold=ps.ensemble.warning,
                    model_version=versions[i],
                )
            )

        ps.score_alerts.step(s, sev.astype(np.int8), score, on_event)
        rows = WindowRows(
            tenant,
            host,
            metric,
            start,
            end,
            {k: X[k] for k in FEATURES if k in X},
            score,
            np.array(SEVERITIES, dtype=object)[sev],
            components,
            res.expected,
            explanation,
            versions,
            scale=res.scale,
            confidence=res.confidence,
        )
        if shadow:
            self._shadow_score(rows, X, shadow, tenant)
        return rows
