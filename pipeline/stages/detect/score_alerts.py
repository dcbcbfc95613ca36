"""Score alerts: anomaly alerts opened and resolved from the severities of scored windows.

:class:`ScoreAlerts` keeps one state per series code of a partition (numpy columns: level, run
of ``ok`` windows, cooldown) and steps it over a batch's closed windows in window order; each
transition becomes a :class:`core.records.AlertEvent` of rule :data:`ANOMALY_RULE`
(:meth:`ScoreAlerts.event`), with the window's explanation and a message that says what the
window did and how many other metrics of its host moved with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from core.records import AlertEvent
from core.records import alert_id as alert_id_of
from models.ensemble import SEVERITIES
from models.episodes import OpeningGate, opening_signal

#: the ``rule`` of every score alert
ANOMALY_RULE = "anomaly:ensemble"


class ScoreAlerts:
    """Anomaly alerts from window scores and severities, per series code: episodes, not windows.

    The window score is never muted (it describes the anomaly for as long as it lasts); the
    repetition rule lives here.  An alert opens when a window is ``warning`` or worse **and** its
    score is the highest of its series in the opening gate's horizon
    (:class:`models.episodes.OpeningGate`, the same rule backtests score as NAB detections);
    it escalates/de-escalates with the severity and resolves after ``clear_windows``
    consecutive ``ok`` windows (flap damping).  A series that resolved re-opens only on a window
    above every score of the horizon -- so one fault that lasts an hour is one alert, and a
    flapping series does not page every few minutes.  One open alert per series at most.
    """

    def __init__(self, clear_windows: int = 3, gate: OpeningGate | None = None) -> None:
        self.clear_windows = clear_windows
        self.gate = gate if gate is not None else OpeningGate()
        self.level = np.zeros(0, np.int8)
        self.ok_run = np.zeros(0, np.int32)
        self.alert_id: dict[int, tuple[str, float]] = {}

    def _grow(self, n: int) -> None:
        if n > self.level.size:
            extra = n - self.level.size
            self.level = np.concatenate([self.level, np.zeros(extra, np.int8)])
            self.ok_run = np.concatenate([self.ok_run, np.zeros(extra, np.int32)])

    def step(
        self,
        series: np.ndarray,
        sev: np.ndarray,
        score: np.ndarray,
        on_event: Callable[[int, str, int, int], None],
    ) -> None:
        """Advance per window row (rows of one series in window order)."""
        if not series.size:
            return
        self._grow(int(series.max()) + 1)
        opens = opening_signal(self.gate, series, score) > 0  # every row feeds the gate
        # fast path: series with only healthy windows here and no open alert have nothing to
        # do; every other series runs its windows in order (exact, batch-size independent)
        n = self.level.size
        hot = np.zeros(n, bool)
        hot[series[sev > 0]] = True
        hot |= self.level > 0
        for i in np.flatnonzero(hot[series]):
            s, v = int(series[i]), int(sev[i])
            L = int(self.level[s])
            if L == 0:
                if v > 0 and opens[i]:
                    self.level[s], self.ok_run[s] = v, 0
                    on_event(i, "open", s, v)
                continue
            if v == 0:
                self.ok_run[s] += 1
                if self.ok_run[s] >= self.clear_windows:
                    self.level[s] = 0
                    on_event(i, "resolve", s, L)
                continue
            self.ok_run[s] = 0
            if v != L:
                self.level[s] = v
                on_event(i, "escalate" if v > L else "deescalate", s, v)

    def to_state(self) -> dict:
        return {
            "level": self.level,
            "ok_run": self.ok_run,
            "alert_id": dict(self.alert_id),
            "clear": self.clear_windows,
            "gate": self.gate.to_state(),
        }

    @classmethod
    def from_state(cls, st: dict) -> ScoreAlerts:
        # checkpoints before the opening gate held a re-open cooldown instead: it starts fresh
        gate = OpeningGate.from_state(st["gate"]) if "gate" in st else None
        sa = cls(st["clear"], gate)
        sa.level, sa.ok_run = st["level"].copy(), st["ok_run"].copy()
        sa.alert_id = dict(st["alert_id"])
        return sa

    def event(
        self,
        code: int,
        series: tuple[str, str, str],
        kind: str,
        level: int,
        *,
        start: np.float64,
        end: np.float64,
        score: float,
        actual: float,
        explanation: dict[str, Any],
        threshold: float,
        model_version: str | None,
    ) -> AlertEvent:
        """The alert event of a transition that :meth:`step` reported for the window
        ``[start, end)`` of series ``code`` (named ``series``); keeps the series' alert id.

        ``end`` is the window end as the closed windows hold it (``np.float64``): its ``repr``
        is part of the alert id, so it is passed through unchanged.
        """
        t, h, m = series
        if kind == "open":
            self.alert_id[code] = (alert_id_of(t, h, m, ANOMALY_RULE, end), float(end))
        aid, opened = self.alert_id.get(code, ("", float(end)))
        if kind == "resolve":
            self.alert_id.pop(code, None)
            msg = f"{m} on {h} back to normal (score {score:.2f})"
        else:
            expected = explanation.get("expected")
            band = f", expected ~{expected:g}" if expected is not None else ""
            msg = f"{m} on {h} anomalous: window mean {actual:g}{band} (score {score:.2f})"
            others = explanation.get("host", {}).get("deviating", 0)
            if others:
                msg += f"; {others} other metric{'s' if others > 1 else ''} of {h} moved too"
        return AlertEvent(
            alert_id=aid,
            kind=kind,
            tenant_id=t,
            host=h,
            metric=m,
            value=actual,
            severity=SEVERITIES[level],
            ts=float(end),
            opened_at=opened,
            rule=ANOMALY_RULE,
            threshold=threshold,
            message=msg,
            score=score,
            explanation=explanation,
            model_version=model_version,
            event_id=f"window:{t}|{h}|{m}:{float(start)!r}",
        )
