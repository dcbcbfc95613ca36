"""Window aggregation vs a naive pure-Python reference; lateness; state round-trip."""

from __future__ import annotations

import math
import pickle
from collections import defaultdict

import numpy as np
import pytest

from features.windows import FEATURES, ClosedWindows, WindowAggregator, window_features


def naive(series, ts, value, W):
    groups = defaultdict(list)
    for i, (s, t, v) in enumerate(zip(series, ts, value, strict=False)):
        groups[(int(s), math.floor(t / W))].append((t, i, v))
    out = {}
    prev = {}
    for s, w in sorted(groups):
        ev = groups[(s, w)]
        vals = [v for _, _, v in ev]
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
        last = max(ev, key=lambda e: (e[0], e[1]))[2]
        tm = sum(t for t, _, _ in ev) / n
        stt = sum((t - tm) ** 2 for t, _, _ in ev)
        slope = sum((t - tm) * (v - mean) for t, _, v in ev) / stt if stt > 1e-12 else 0.0
        pw, pm = prev.get(s, (None, None))
        out[(s, w)] = {
            "count": n, "mean": mean, "std": std, "min": min(vals), "max": max(vals),
            "last": last, "slope": slope, "change": 0.0 if pw is None else mean - pm,
            "gap": 0 if pw is None else w - pw - 1,
        }  # fmt: skip
        prev[s] = (w, mean)
    return out


def check(cw: ClosedWindows, ref, W):
    got = {
        (int(s), int(round(st / W))): i
        for i, (s, st) in enumerate(zip(cw.series, cw.start, strict=False))
    }
    assert set(got) == set(ref)
    for key, i in got.items():
        for f in FEATURES:
            assert cw.features[f][i] == pytest.approx(ref[key][f], rel=1e-7, abs=1e-7), (key, f)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_in_batches(seed):
    rng = np.random.default_rng(seed)
    n, W = 3000, 60.0
    s = rng.integers(0, 40, n)
    ts = np.sort(rng.uniform(1e9, 1e9 + 3600, n))

    v = rng.normal(100, 10, n)
    agg = WindowAggregator(window_s=W, allowed_lateness_s=0.0)
    parts = [agg.push(s[i : i + 337], ts[i : i + 337], v[i : i + 337]) for i in range(0, n, 337)]
    parts.append(agg.flush())
    cw = ClosedWindows.concat(parts)
    assert cw.late_idx.size == 0
    check(cw, naive(s, ts, v, W), W)


def test_offline_equals_naive_with_unsorted_input():
    rng = np.random.default_rng(5)
    s, ts, v = rng.integers(0, 7, 500), rng.uniform(0, 5000, 500), rng.normal(size=500)
    check(window_features(s, ts, v, 100.0), naive(s, ts, v, 100.0), 100.0)


def test_watermark_and_late_events():
    agg = WindowAggregator(window_s=10.0, allowed_lateness_s=5.0)
    out = agg.push(np.array([0, 0]), np.array([1.0, 12.0]), np.array([1.0, 2.0]))
    assert len(out) == 0 and agg.watermark == 7.0  # window [0,10) still open
    out = agg.push(np.array([0]), np.array([9.0]), np.array([3.0]))  # within lateness
    assert len(out) == 0 and out.n_late == 0
    out = agg.push(np.array([0]), np.array([16.0]), np.array([4.0]))  # watermark 11 -> close
    assert out.series.tolist() == [0] and out.features["count"].tolist() == [2]
    out = agg.push(np.array([1, 0, 0]), np.array([3.0, 2.0, 15.0]), np.array([1.0, 1.0, 1.0]))
    assert out.late_idx.tolist() == [0, 1] and agg.n_late == 2
    assert agg.flush().features["count"].tolist() == [3]


def test_invalid_events_reported_and_bad_config_raises():
    agg = WindowAggregator(60.0)
    out = agg.push(np.array([0, 0]), np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    assert out.invalid_idx.tolist() == [0]
    with pytest.raises(ValueError):
        WindowAggregator(0.0)
    with pytest.raises(ValueError):
        WindowAggregator(60.0, -1.0)
    with pytest.raises(ValueError):
        agg.push(np.array([-1]), np.array([1.0]), np.array([1.0]))


@pytest.mark.parametrize("hosts", [None, 4])
def test_state_round_trip_mid_stream(hosts):
    rng = np.random.default_rng(3)
    n = 2000
    s, ts, v = rng.integers(0, 20, n), np.sort(rng.uniform(0, 1800, n)), rng.normal(size=n)
    h = None if hosts is None else s % hosts  # event time per host: 5 series each
    a = WindowAggregator(60.0, 30.0, idle_close_s=None if hosts is None else 600.0)

    def hs(sl):
        return None if h is None else h[sl]

    first = a.push(s[:1000], ts[:1000], v[:1000], host=hs(slice(0, 1000)))
    b = WindowAggregator.from_state(pickle.loads(pickle.dumps(a.to_state())))
    ra = ClosedWindows.concat(
        [a.push(s[1000:], ts[1000:], v[1000:], host=hs(slice(1000, n))), a.flush()]
    )
    rb = ClosedWindows.concat(
        [b.push(s[1000:], ts[1000:], v[1000:], host=hs(slice(1000, n))), b.flush()]
    )
    for f in FEATURES:
        np.testing.assert_array_equal(ra.features[f], rb.features[f])
    np.testing.assert_array_equal(ra.series, rb.series)
    assert ra.n_late == rb.n_late == 0
    check(ClosedWindows.concat([first, ra]), naive(s, ts, v, 60.0), 60.0)


def test_gap_and_change():
    cw = window_features(
        np.zeros(3, np.int64), np.array([0.0, 65.0, 250.0]), np.array([1.0, 3.0, 2.0]), 60.0
    )
    assert cw.features["gap"].tolist() == [0, 0, 2]
    assert cw.features["change"].tolist() == [0.0, 2.0, -1.0]
