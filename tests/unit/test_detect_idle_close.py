"""Processing-time idle close: a partition that receives nothing gets its windows closed by the
runner's wall clock (:meth:`DetectStage.tick`, :meth:`WindowAggregator.advance`), and every
scored window carries its band (typical deviation) and confidence / warming state.

The rule: after ``idle_s >= idle_close_wall_s`` seconds without input, each host closes the
windows that end at or before its newest event + ``idle_s`` - the allowed lateness, never past
the window of its newest event.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.batch import MetricBatch
from features.windows import WindowAggregator
from models.rules import RuleSet
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.detect.window_rows import WindowRows

W, L, WALL = 60.0, 30.0, 30.0
B = 1_779_999_960.0  # a window start (a multiple of W)


def batch(rows, partition: int = 0) -> MetricBatch:
    """rows: (host, metric, value, ts) of tenant t1."""
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    h, m, v, ts = zip(*rows, strict=True)
    n = len(rows)
    return MetricBatch(
        obj([f"e{x}" for x in range(n)]),
        obj(["t1"] * n),
        obj(h),
        obj(m),
        np.array(v, float),
        np.array(ts, float),
        obj([""] * n),
        obj([None] * n),
        partition=np.full(n, partition, np.int64),
    )


def history(ticks: int = 30, hosts=("a", "b")) -> MetricBatch:
    """cpu and mem of each host every 10 s from B, ``ticks`` times (newest: B + 10 (ticks - 1))."""
    rows = []
    for k in range(ticks):
        for h in hosts:
            rows += [(h, "cpu", 50.0 + k % 3, B + 10 * k), (h, "mem", 40.0 + k % 2, B + 10 * k)]
    return batch(rows)


def stage(wall: float | None = WALL) -> DetectStage:
    return DetectStage(RuleSet([]), window_s=W, lateness_s=L, idle_close_wall_s=wall)


def starts(out) -> list[float]:
    """Distinct starts of the windows an output closed, relative to B."""
    return [] if out.windows is None else sorted({x - B for x in out.windows.start.tolist()})


# ------------------------------------------------------------------------- the aggregator rule
def test_advance_rule_per_host():
    agg = WindowAggregator(W, L)
    host = np.array([0, 1], np.int64)
    agg.push(np.array([0, 1]), np.array([100.0, 150.0]), np.ones(2), host=host)
    # nothing closes before each host's clock + idle - lateness reaches its window's end (120/180)
    assert len(agg.advance(49.0)) == 0  # 100 + 49 - 30 = 119 < 120
    first = agg.advance(50.0)  # host 0: 120 -> [60, 120) closes; host 1: 170 < 180
    assert first.series.tolist() == [0] and first.start.tolist() == [60.0]
    second = agg.advance(60.0)  # host 1: 150 + 60 - 30 = 180
    assert second.series.tolist() == [1] and second.start.tolist() == [120.0]
    assert agg.n_open == 0 and len(agg.advance(1e9)) == 0


def test_advance_never_closes_past_the_newest_window_so_later_events_are_on_time():
    agg = WindowAggregator(W, L)
    agg.push(np.array([0]), np.array([100.0]), np.ones(1))
    assert agg.advance(1e6).start.tolist() == [60.0]  # however long the silence
    late = agg.push(np.array([0, 0]), np.array([119.0, 120.0]), np.ones(2))
    assert late.late_idx.tolist() == [0]  # inside the closed window: late; the next one is not
    assert agg.n_open == 1


def test_advance_state_round_trips_and_a_restored_copy_continues_equally():
    a = WindowAggregator(W, L, idle_close_s=600.0)
    a.push(np.array([0, 1]), np.array([100.0, 130.0]), np.ones(2), host=np.array([0, 0]))
    a.advance(60.0)
    b = WindowAggregator.from_state(a.to_state())
    nxt = (np.array([0, 1, 0]), np.array([110.0, 190.0, 250.0]), np.array([1.0, 2.0, 3.0]))
    ra, rb = a.push(*nxt, host=np.array([0, 0, 0])), b.push(*nxt, host=np.array([0, 0, 0]))
    assert ra.late_idx.tolist() == rb.late_idx.tolist() == [0]
    assert ra.start.tolist() == rb.start.tolist()
    for k in ra.features:
        np.testing.assert_array_equal(ra.features[k], rb.features[k])


def test_advance_refuses_a_negative_or_nan_time():
    agg = WindowAggregator(W, L)
    with pytest.raises(ValueError, match="seconds"):
        agg.advance(-1.0)
    with pytest.raises(ValueError, match="seconds"):
        agg.advance(float("nan"))


# ------------------------------------------------------------------------- the detect stage
def test_windows_close_on_tick_not_before():
    det = stage()
    # newest event at B + 250, 10 s into [B + 240, B + 300): [B + 180, B + 240) is still held
    # by the lateness (250 - 30 < 240)
    out = det(history(ticks=26))
    assert 180.0 not in starts(out) and 120.0 in starts(out)
    assert starts(det.tick(0, 5.0)) == []
    assert starts(det.tick(0, WALL - 0.1)) == []  # below the idle threshold: nothing
    assert starts(det.tick(0, WALL)) == [180.0]  # 250 + 30 - 30 >= 240
    assert starts(det.tick(0, 79.0)) == []  # 250 + 79 - 30 < 300
    closed = det.tick(0, 80.0)  # 250 + 80 - 30 = 300: the last window
    assert starts(closed) == [240.0]
    w = closed.windows
    assert len(w) == 4 and set(w.host.tolist()) == {"a", "b"}  # every series of both hosts
    assert starts(det.tick(0, 1e6)) == []  # nothing open any more
    assert det.parts[0].agg.n_open == 0


def test_tick_is_off_without_the_setting_and_on_unknown_partitions():
    for wall in (None, 0.0):
        det = stage(wall)
        det(history())
        assert starts(det.tick(0, 1e6)) == []
        assert det.parts[0].agg.n_open > 0
    det = stage()
    det(history())
    assert starts(det.tick(7, 1e6)) == []  # a partition this stage has no state of
    with pytest.raises(ValueError, match="idle_close_wall_s"):
        stage(-1.0)


def test_a_tick_that_closes_nothing_leaves_the_state_as_it_was():
    det = stage()
    det(history())
    before = det.snapshot(0)
    assert det.tick(0, WALL).windows is None  # newest at B + 290: its window ends at B + 300
    assert det.snapshot(0) == before
    assert det.tick(0, 40.0).windows is not None


def test_a_checkpoint_taken_after_the_tick_restores_the_same_state():
    det = stage()
    det(history(ticks=26))
    ticked = det.tick(0, 1e6)
    assert starts(ticked) == [180.0, 240.0] and len(ticked.windows) == 8
    blob = det.snapshot(0)
    restored = stage()
    restored.restore(0, blob)
    # the same continuation: an event for an idle-closed window (late), then newer ones
    rows = [("a", "cpu", 99.0, B + 295.0)]
    rows += [(h, m, 50.0, B + 300.0 + 10 * k) for k in range(12) for h in "ab" for m in ("cpu",)]
    more = batch(rows)
    a, b = det(more), restored(more)
    assert a.late_idx.tolist() == b.late_idx.tolist() == [0]  # behind the idle-closed window
    fa, fb = det.flush(), restored.flush()
    for x, y in ((a.windows, b.windows), (fa.windows, fb.windows)):
        assert x.start.tolist() == y.start.tolist() and x.host.tolist() == y.host.tolist()
        np.testing.assert_array_equal(x.score, y.score)
        np.testing.assert_array_equal(x.features["mean"], y.features["mean"])
        np.testing.assert_array_equal(x.confidence, y.confidence)
    assert det.parts[0].agg.n_open == restored.parts[0].agg.n_open == 0


def test_idle_closed_windows_are_scored_like_any_others():
    """The same windows closed by a tick or by newer events get the same features and scores."""
    by_tick, by_events = stage(), stage()
    by_tick(history(ticks=26))
    by_events(history(ticks=26))
    t = by_tick.tick(0, 1e6).windows
    # an event 90 s past the newest one (B + 250) moves the clocks past both held windows
    e = by_events(batch([(h, "cpu", 50.0, B + 340.0) for h in "ab"])).windows

    def key(w):
        cols = (w.host, w.metric, w.start, w.score, w.features["mean"], w.confidence)
        return sorted(zip(*(c.tolist() for c in cols), strict=True))

    assert key(t) == key(e)


# ------------------------------------------------------------------------- band and confidence
def test_every_scored_window_carries_confidence_and_its_typical_deviation():
    det = stage()
    w = WindowRows.concat([det(history()).windows, det.tick(0, 1e6).windows])
    conf = w.confidence
    assert conf.shape == (len(w),) and np.all((conf >= 0) & (conf <= 1))
    assert w.warming == [bool(c < 1) for c in conf.tolist()]
    assert all(w.warming)  # 5 windows of history: far from min_windows
    assert w.scale.shape == (len(w),)
    rec = w.records()[-1]
    assert {"typical_deviation", "confidence", "warming"} <= set(rec)
    assert rec["warming"] is True and 0 <= rec["confidence"] < 1


def test_score_records_round_trip_band_and_confidence_and_old_records_lack_them():
    det = stage()
    w = det(history()).windows
    w.scale = np.where(np.arange(len(w)) % 2 == 0, 1.5, np.nan)
    back = WindowRows.from_records(w.records())
    np.testing.assert_array_equal(back.scale, w.scale)
    np.testing.assert_array_equal(back.confidence, w.confidence)
    assert back.warming == w.warming
    old = []
    for r in w.records():  # a producer from before these columns
        for k in ("typical_deviation", "confidence", "warming"):
            r.pop(k)
        old.append(r)
    back = WindowRows.from_records(old)
    assert np.isnan(back.scale).all() and np.isnan(back.confidence).all()
    assert back.warming == [None] * len(w)
    both = WindowRows.concat([back, w])  # rows with and without them, in one batch
    assert both.warming == [None] * len(w) + w.warming
