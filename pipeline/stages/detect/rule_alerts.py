"""Rule alerts: score events against the threshold rules and track alert state per series.

Levels are computed for the whole batch with numpy (:meth:`models.rules.RuleSet.levels`).
Only the events of series that are above a threshold, or whose alert is open or pending,
go through the per-series state machine in Python — in healthy telemetry that is a tiny
fraction of the batch.

State machine per series (``L`` = fired level, 0 ok / 1 warning / 2 critical):
candidate ``c = up if up >= L else (down if down < L else L)``; a level ``k > L`` fires once
``c >= k`` has held for the rule's ``for`` duration (event time); ``c < L`` de-escalates or
resolves at once. Every transition is one :class:`core.records.AlertEvent` (``open``,
``escalate``, ``deescalate``, ``resolve``) with a deterministic ``event_key``, so a replay
writes nothing new.

The tracker's state is :attr:`RuleAlerts.series`: a :class:`SeriesAlert` per series that has an
open or pending alert. Checkpoints hold it as plain tuples (:meth:`RuleAlerts.to_state`), so no
class path of this module is pickled.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field

import numpy as np

from core.batch import AlertBatch, MetricBatch
from core.records import AlertEvent, OpenAlert, alert_id
from models.rules import Rule, RuleSet

SEVERITY = {1: "warning", 2: "critical"}
LEVEL = {"warning": 1, "critical": 2}


@dataclass(slots=True)
class SeriesAlert:
    """Alert state of one series: fired level, open alert, pending levels, newest event time."""

    level: int = 0
    alert_id: str = ""
    opened_at: float = 0.0
    pending: dict[int, float] = field(default_factory=dict)  # level -> since (event time)
    last_ts: float = float("-inf")


#: a series' key: (tenant, host, metric)
SeriesKey = tuple[str, str, str]


class RuleAlerts:
    """Threshold-rule alerts of one partition's series (a part of the detect stage)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.series: dict[SeriesKey, SeriesAlert] = {}

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules

    def restore(self, open_alerts: list[OpenAlert]) -> None:
        """Re-arm open alerts read back from storage (after a restart or a rebalance)."""
        for a in open_alerts:
            self.series[(a.tenant_id, a.host, a.metric)] = SeriesAlert(
                level=LEVEL[a.severity],
                alert_id=a.alert_id,
                opened_at=float(a.opened_at),
                last_ts=float(a.last_ts),
            )

    def to_state(self) -> dict[SeriesKey, tuple]:
        """The open/pending series as plain data: ``key -> (level, alert_id, opened_at,
        pending, last_ts)``."""
        return {k: astuple(s) for k, s in self.series.items()}

    @classmethod
    def from_state(cls, st: dict[SeriesKey, tuple | SeriesAlert], rules: RuleSet) -> RuleAlerts:
        """Back from :meth:`to_state` (or from the :class:`SeriesAlert` objects that
        checkpoints of version 1 pickled)."""
        ra = cls(rules)
        for k, v in st.items():
            ra.series[tuple(k)] = (
                v if isinstance(v, SeriesAlert) else SeriesAlert(v[0], v[1], v[2], dict(v[3]), v[4])
            )
        return ra

    def __call__(self, batch: MetricBatch) -> AlertBatch:
        out = AlertBatch()
        if not len(batch) or not self.rules.rules:
            return out
        idx, up, down = self.rules.levels(batch.tenant_id, batch.metric, batch.value)
        has_rule = idx < len(self.rules.rules)
        hot = has_rule & (down > 0)
        # every event of a series that is above a threshold here, or whose alert is open or
        # pending, runs through the state machine (healthy events clear alerts)
        hot_idx = np.flatnonzero(hot)
        keys = set(
            zip(batch.tenant_id[hot_idx], batch.host[hot_idx], batch.metric[hot_idx], strict=True)
        )
        keys.update(k for k, s in self.series.items() if s.level or s.pending)
        if keys:
            hosts = np.array(sorted({k[1] for k in keys}), dtype=object)
            cand = np.flatnonzero(has_rule & ~hot & np.isin(batch.host, hosts))
            if len(cand):
                ck = zip(batch.tenant_id[cand], batch.host[cand], batch.metric[cand], strict=True)
                sel = np.fromiter((k in keys for k in ck), bool, len(cand))
                hot[cand[sel]] = True
        rows = np.flatnonzero(hot)
        if not len(rows):
            return out
        order = np.lexsort(
            (
                batch.ts[rows],
                batch.metric[rows].astype(str),
                batch.host[rows].astype(str),
                batch.tenant_id[rows].astype(str),
            )
        )
        for j in rows[order]:
            self._step(batch, int(j), int(idx[j]), int(up[j]), int(down[j]), out)
        # forget healthy series so the dict holds only open/pending ones
        for k in [k for k, s in self.series.items() if not s.level and not s.pending]:
            del self.series[k]
        return out

    def _step(self, b: MetricBatch, j: int, ridx: int, up: int, down: int, out: AlertBatch) -> None:
        key = (b.tenant_id[j], b.host[j], b.metric[j])
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = SeriesAlert()
        ts = float(b.ts[j])
        if ts < s.last_ts:  # older than what this series already saw: no effect on state
            return
        s.last_ts = ts
        rule = self.rules.rules[ridx]
        L = s.level
        c = up if up >= L else (down if down < L else L)
        for k in (1, 2):
            if c >= k:
                s.pending.setdefault(k, ts)
            else:
                s.pending.pop(k, None)
        if c < L:
            kind = "resolve" if c == 0 else "deescalate"
            self._emit(out, s, key, rule, b, j, kind, c)
            s.level = c
            if c == 0:
                s.alert_id = ""
            return
        fire = max(
            (k for k, since in s.pending.items() if k > L and ts - since >= rule.for_s), default=0
        )
        if fire:
            if L == 0:
                s.opened_at = ts
                s.alert_id = alert_id(*key, rule.name, ts)
                self._emit(out, s, key, rule, b, j, "open", fire)
            else:
                self._emit(out, s, key, rule, b, j, "escalate", fire)
            s.level = fire
        for k in [k for k in s.pending if k <= s.level]:
            del s.pending[k]

    @staticmethod
    def _emit(
        out: AlertBatch,
        s: SeriesAlert,
        key: SeriesKey,
        rule: Rule,
        b: MetricBatch,
        j: int,
        kind: str,
        level: int,
    ) -> None:
        tenant, host, metric = key
        ts = float(b.ts[j])
        value = float(b.value[j])
        sev = SEVERITY.get(level) or SEVERITY[s.level]
        thr = rule.threshold(level if level else s.level)
        if kind == "resolve":
            msg = f"{metric} on {host} back to normal ({value:g})"
        else:
            cmp = ">=" if rule.direction == "above" else "<="
            msg = f"{metric} on {host} is {value:g} ({cmp} {sev} threshold {thr:g})"
        out.events.append(
            AlertEvent(
                alert_id=s.alert_id,
                kind=kind,
                tenant_id=tenant,
                host=host,
                metric=metric,
                value=value,
                severity=sev,
                ts=ts,
                opened_at=s.opened_at,
                rule=rule.name,
                threshold=thr,
                message=msg,
                score=1.0 if level == 2 else (0.5 if level == 1 else 0.0),
                explanation={
                    "components": ["threshold"],
                    "actual": value,
                    "threshold": thr,
                    "direction": rule.direction,
                    "for_s": rule.for_s,
                },
                model_version=None,
                event_id=b.event_id[j],
            )
        )
