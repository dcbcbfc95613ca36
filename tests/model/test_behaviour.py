"""Behaviour of the shipped default detector set (``default_ensemble()``) on synthetic telemetry.

"Flagged" means the combined score reaches the ensemble's ``warning`` level (the alert level).
"""

from __future__ import annotations

import numpy as np

from features.windows import window_features
from models.presets import default_ensemble

W = 300.0
DAYS = 8


def daily(seed=0, n_series=1, days=DAYS):
    rng = np.random.default_rng(seed)
    t = np.arange(0, days * 86400, W)
    v = 50 + 20 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 1.0, t.size)
    return t, np.tile(v, (n_series, 1))


def run(t, v, codes=None):
    n_series = v.shape[0]
    codes = np.arange(n_series) if codes is None else np.asarray(codes)
    s = np.repeat(codes, t.size)
    cw = window_features(s, np.tile(t, n_series), v.ravel(), W)
    ens = default_ensemble()
    res = ens.process(cw.columns())
    return cw, res.score


ALERT = default_ensemble().warning


def score_at(cw, scores, series, t):
    return scores[(cw.series == series) & (cw.start == np.floor(t / W) * W)][0]


def test_injected_spike_is_flagged():
    t, v = daily()
    i = t.size - 100
    v[0, i] += 15
    cw, sc = run(t, v)
    assert score_at(cw, sc, 0, t[i]) >= ALERT
    assert score_at(cw, sc, 0, t[i]) > np.quantile(sc[t.size // 2 :], 0.99)


def test_level_shift_is_flagged():
    t, v = daily()
    i = t.size - 150
    v[0, i:] += 12
    cw, sc = run(t, v)
    assert sc[i : i + 5].max() >= ALERT


def test_usual_daily_peak_is_not_flagged():
    t, v = daily()
    cw, sc = run(t, v)
    last_day = cw.start >= (DAYS - 1) * 86400
    assert sc[last_day].max() < ALERT


def test_renaming_a_series_changes_nothing():
    t, v = daily(n_series=3)
    v[1, -50] += 20
    cw_a, a = run(t, v, codes=[0, 1, 2])
    cw_b, b = run(t, v[[2, 0, 1]], codes=[7, 3, 12])  # other codes, other order
    for old, new in [(0, 3), (1, 12), (2, 7)]:
        np.testing.assert_allclose(a[cw_a.series == old], b[cw_b.series == new])


def test_bigger_deviation_scores_higher():
    out = []
    for size in (4, 8, 16):
        t, v = daily()
        v[0, -60] += size
        cw, sc = run(t, v)
        out.append(score_at(cw, sc, 0, t[-60]))
    assert out[0] < out[1] < out[2]
