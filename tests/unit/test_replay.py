"""The out-of-sample replay: split, injection on raw events, no look-ahead, arm figures."""

from __future__ import annotations

import numpy as np
import pytest

from training.replay import Events, arm_metrics, inject, judge, replay, split_time


def events(n: int = 1500, hosts: int = 2, shift: bool = False, seed: int = 1) -> Events:
    """``hosts`` one-minute series; ``shift``: a noisier regime from 72 % of the range on."""
    rng = np.random.default_rng(seed)
    host, ts, val = [], [], []
    for h in range(hosts):
        v = 50 + 2 * rng.standard_normal(n) + 5 * np.sin(np.arange(n) / 100)
        if shift:
            k = int(n * 0.72)
            v[k:] = 50 + 6 * rng.standard_normal(n - k)
        host.append(np.full(n, f"h{h}", object))
        ts.append(1.7e9 + 60.0 * np.arange(n))
        val.append(v)
    hs = np.concatenate(host)
    return Events("t", hs, np.full(hs.size, "cpu", object), np.concatenate(ts),
                  np.concatenate(val), 60.0)  # fmt: skip


def test_split_is_a_window_boundary_inside_the_range():
    ev = events()
    s = split_time(ev, 0.7)
    assert s % 60 == 0 and ev.ts[0] < s < ev.ts[-1]
    assert abs((s - ev.ts[0]) / (ev.ts[-1] - ev.ts[0]) - 0.7) < 0.01
    with pytest.raises(ValueError):
        split_time(ev, 1.0)


def test_injection_changes_only_labelled_spans_and_none_straddles_the_split():
    ev = events()
    s = split_time(ev)
    inj, labels = inject(ev, s, per_series=2, seed=3)
    assert set(labels) == {("h0", "cpu"), ("h1", "cpu")}
    changed = inj.value != ev.value
    assert changed.any()
    covered = np.zeros(len(ev), bool)
    for (h, m), spans in labels.items():
        assert sum(lo < s for lo, _ in spans) == 2 and sum(lo >= s for lo, _ in spans) == 2
        for lo, hi in spans:
            assert not (lo < s <= hi - 5 * 60), "an anomaly straddles the split"
            covered |= (ev.host == h) & (ev.metric == m) & (ev.ts >= lo) & (ev.ts <= hi)
    assert not (changed & ~covered).any()
    # deterministic: the same seed injects the same values
    again, labels2 = inject(ev, s, per_series=2, seed=3)
    assert labels2 == labels and np.array_equal(again.value, inj.value)


def test_replay_arms_differ_only_by_the_batch_model_and_figures_are_per_part():
    ev = events(n=900)
    base = replay(ev)

    class Loud:  # a batch model that scores every window high
        def score_many(self, X):
            return np.full(len(X["series"]), 0.99)

    loud = replay(ev, Loud(), "9")
    assert np.array_equal(base.end, loud.end)
    # every series opens an alert under the loud model (which then stays open, so the count of
    # openings says nothing against the base arm's)
    assert set(loud.host[loud.opened]) == {"h0", "h1"}
    assert (loud.score >= 0.99 - 1e-9).all() and loud.latency_ms_per_10k() is not None
    s = split_time(ev)
    m_in = arm_metrics(loud, (ev.ts[0], s), {}, window_s=60.0)
    m_out = arm_metrics(loud, (s, ev.ts[-1] + 60), {}, window_s=60.0)
    assert m_in["series"] == m_out["series"] == 2
    assert m_in["series_days"] > m_out["series_days"] > 0  # 70 % vs 30 % of the range


def test_judge_fits_only_on_the_training_part():
    ev = events(n=1200)
    seen = {}

    # a model that never scores: the candidate arm is the ensemble again
    class Zero:
        def score_many(self, X):
            return np.zeros(len(X["series"]))

    def fit_zero(X, rows):
        seen["rows"] = rows
        return Zero()

    cand, rep = judge(ev, fit_zero)
    base = rep.replays["ensemble"]
    assert (base.end[seen["rows"]] <= rep.split_ts).all()
    assert rep.arms["candidate"]["nab_standard"] == rep.arms["ensemble"]["nab_standard"]
    t = rep.table()
    assert set(t["part"]) == {"in_sample", "out_of_sample"} and set(t["arm"]) == {
        "ensemble",
        "candidate",
    }
