"""NAB-style scoring on hand-made examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.evaluate import PROFILES, LabelledSeries, event_metrics, nab_score, scaled_sigmoid

TS = pd.date_range("2024-01-01", periods=100, freq="5min").to_numpy()
WIN = [(TS[50], TS[59])]  # rows 50..59; probation = rows 0..14


def series(hits, windows=WIN, name="s"):
    sc = np.zeros(100)
    sc[list(hits)] = 1.0
    return LabelledSeries(name, TS, sc, windows)


def test_sigmoid_anchor_values():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(4.0) == -1.0


def test_perfect_and_null():
    std = PROFILES["standard"]
    assert nab_score([series([50])], std)["score"] == pytest.approx(100.0)
    assert nab_score([series([])], std)["score"] == 0.0


def test_only_first_detection_in_window_counts():
    std = PROFILES["standard"]
    a = nab_score([series([55])], std, threshold=0.5)["raw"]
    b = nab_score([series([55, 56, 57, 58])], std, threshold=0.5)["raw"]
    assert a == b == pytest.approx(scaled_sigmoid(-(59 - 55) / 9))


def test_false_positive_weights():
    std = PROFILES["standard"]
    # before the first window: full -A_FP; just after the window: almost free
    before = nab_score([series([20])], std, threshold=0.5)["raw"] + 1.0
    assert before == pytest.approx(-0.11)
    after = nab_score([series([60])], std, threshold=0.5)["raw"] + 1.0
    assert after == pytest.approx(0.11 * scaled_sigmoid(1 / 9))
    assert -0.11 < after < 0


def test_probation_rows_are_ignored():
    std = PROFILES["standard"]
    assert nab_score([series([3, 10])], std, threshold=0.5)["raw"] == -1.0


def test_profiles_and_threshold_sweep():
    sc = np.zeros(100)
    sc[52] = 0.6
    sc[[20, 30]] = 0.9  # two FPs above the hit
    s = LabelledSeries("s", TS, sc, WIN)
    std = nab_score([s], PROFILES["standard"])
    # detecting at 0.6 costs two FPs (0.22) but gains ~1.9: threshold 0.6 is optimal
    assert std["threshold"] == 0.6
    assert std["raw"] == pytest.approx(scaled_sigmoid(-7 / 9) - 0.22)
    lfn = nab_score([s], PROFILES["reward_low_FN"])
    assert lfn["raw_null"] == -2.0
    # exhaustive check of the sweep against fixed thresholds
    for prof in PROFILES.values():
        best = max(nab_score([s], prof, threshold=t)["raw"] for t in [np.inf, 0.9, 0.6, 0.0])
        assert nab_score([s], prof)["raw"] == pytest.approx(best)


def test_event_metrics():
    m = event_metrics([series([52, 53, 70, 71, 90])], 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 0)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 1.0
    assert m["mean_delay_s"] == 600.0


def test_window_inside_probation_is_not_counted():
    s = series([], windows=[(TS[2], TS[8]), (TS[50], TS[59])])
    assert nab_score([s], PROFILES["standard"])["windows"] == 1


def test_bad_input_raises():
    with pytest.raises(ValueError):
        LabelledSeries("x", TS, np.zeros(5), [])
    with pytest.raises(ValueError):
        LabelledSeries("x", TS, np.full(100, np.nan), [])
