"""Alert openings: the score is never muted; one sustained anomaly is one alert (models.episodes,
pipeline.stages.detect.score_alerts), and the backtest's NAB detections are those openings."""

from __future__ import annotations

import numpy as np
import pytest

from models.episodes import OpeningGate, opening_signal
from pipeline.stages.detect.score_alerts import ScoreAlerts


def sev_of(score: np.ndarray) -> np.ndarray:
    return ((score >= 0.5).astype(np.int8) + (score >= 0.8)).astype(np.int8)


def run_alerts(score: np.ndarray, batch: int, horizon: int = 100) -> list[tuple[int, str]]:
    sa = ScoreAlerts(clear_windows=3, gate=OpeningGate(horizon, 10))
    events: list[tuple[int, str]] = []
    for lo in range(0, score.size, batch):
        sc = score[lo : lo + batch]
        s = np.zeros(sc.size, np.int64)
        sa.step(s, sev_of(sc), sc, lambda i, kind, code, lvl, lo=lo: events.append((lo + i, kind)))
    return events


def test_a_sustained_anomaly_opens_one_alert_and_resolves_once():
    score = np.r_[np.full(50, 0.1), np.full(40, 0.7), np.full(60, 0.1)]
    events = run_alerts(score, batch=7)
    assert events == [(50, "open"), (92, "resolve")]


def test_a_lower_repeat_inside_the_horizon_does_not_reopen_but_a_worse_one_does():
    score = np.full(400, 0.1)
    score[100:110] = 0.7  # first episode
    score[150:155] = 0.6  # lower, 40 windows later: no new alert
    score[170:175] = 0.9  # worse: opens (critical)
    score[350:355] = 0.6  # after the horizon: opens again
    opened = [i for i, k in run_alerts(score, batch=13) if k == "open"]
    assert opened == [100, 170, 350]


@pytest.mark.parametrize("batch", [1, 5, 64, 1000])
def test_alerts_do_not_depend_on_batching(batch):
    rng = np.random.default_rng(3)
    score = np.clip(rng.gamma(0.6, 0.2, 2000), 0, 0.99)
    assert run_alerts(score, batch) == run_alerts(score, 2000)


def test_the_backtest_signal_holds_the_openings_of_every_threshold():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 3, 3000)
    score = np.clip(rng.gamma(0.6, 0.2, 3000), 0, 0.99)
    sig = opening_signal(OpeningGate(100, 10), s, score)
    for thr in (0.3, 0.5, 0.8):
        for code in range(3):
            m = s == code
            sa = ScoreAlerts(clear_windows=1, gate=OpeningGate(100, 10))
            opened: list[int] = []
            sc = score[m]
            sev = (sc >= thr).astype(np.int8)
            sa.step(
                np.zeros(sc.size, np.int64),
                sev,
                sc,
                lambda i, k, c, v, opened=opened: opened.append(i) if k == "open" else None,
            )
            opens_alert = set(opened)
            detections = set(np.flatnonzero(sig[m] >= thr).tolist())
            # an alert opens exactly at detections that find no alert open (clear_windows=1:
            # any window below the threshold resolves it)
            assert opens_alert <= detections
            inside = {i for i in detections if i > 0 and sc[i - 1] >= thr}
            assert detections - opens_alert <= inside


def test_gate_state_round_trips():
    g = OpeningGate(20, 4)
    g.step(np.array([0, 3]), np.array([0.4, 0.9]))
    h = OpeningGate.from_state(g.to_state())
    probe = np.array([0.5, 0.5])
    assert g.peek(np.array([0, 3]), probe).tolist() == h.peek(np.array([0, 3]), probe).tolist()
    assert h.peek(np.array([0, 3]), probe).tolist() == [True, False]
    with pytest.raises(ValueError):
        OpeningGate(25, 4)
