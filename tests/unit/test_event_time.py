"""Event time per host: one host's (or tenant's) clock never makes another's events late.

The policy of :mod:`features.windows` is restated here as a per-event pure-Python reference
(:func:`reference_late`) and the vectorized aggregator is compared with it on streams of several
hosts with skewed clocks, out-of-order events, a silent host and a host that resumes after silence,
under random micro-batch splits and checkpoint restores.  The regression tests of issue 8 item 2
(tenant A stamping now + 290 s made every on-time event of tenant B on the same partition late)
run through :class:`pipeline.stages.detect.stage.DetectStage`.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from core.batch import MetricBatch
from core.records import iso_z
from core.settings import Settings
from features.windows import (
    _NONE,
    ClosedWindows,
    WindowAggregator,
    _late_in_order,
    _late_in_order_sorted,
)
from models.rules import RuleSet
from pipeline.simulate import METRICS, UNITS, Simulator
from pipeline.stages.detect.stage import IDLE_CLOSE_S, DetectStage
from pipeline.stages.detect.window_rows import WindowRows
from pipeline.stages.normalize import NormalizeConfig, Normalizer
from tests.unit.test_features import check, naive

DATA = Path(__file__).resolve().parent.parent / "data"
W, L, IDLE = 60.0, 30.0, 600.0


# ---------------------------------------------------------------------------------- reference
def reference_late(host, ts, W=W, L=L, idle=IDLE, value=None) -> list[int]:
    """Late events, one at a time in input order: an event is late when its window index is
    below its host's bound -- its host's clock minus the lateness, or the partition clock minus
    ``idle`` -- as set by the valid events before it (an event with a non-finite ts or value is
    neither late nor moves a clock)."""
    clock: dict[int, float] = {}
    part = -math.inf
    late = []
    value = np.ones(len(ts)) if value is None else value
    for i, (h, t, v) in enumerate(zip(host.tolist(), ts.tolist(), value.tolist(), strict=True)):
        if not (math.isfinite(t) and math.isfinite(v)):
            continue
        bound = -math.inf
        if h in clock:
            bound = math.floor((clock[h] - L) / W)
        if idle is not None and part > -math.inf:
            bound = max(bound, math.floor((part - idle) / W))
        if math.floor(t / W) < bound:
            late.append(i)
        clock[h] = max(clock.get(h, -math.inf), t)
        part = max(part, t)
    return late


def skewed_stream(seed: int, hosts: int = 5, per_host: int = 3, n: int = 4000):
    """Events of ``hosts`` hosts (``per_host`` series each) with clocks skewed by up to +290 s /
    -200 s, jitter, a few events delivered far out of order, host 1 silent for 30 minutes in
    the middle and then resuming, in one interleaved input order."""
    rng = np.random.default_rng(seed)
    offset = np.array([0.0, 290.0, -200.0, 120.0, -60.0, 30.0, -150.0])[:hosts]
    h = rng.integers(0, hosts, n)
    t_true = 1.7e9 + np.sort(rng.uniform(0, 7200, n))
    ts = t_true + offset[h] + rng.normal(0, 3, n)
    silent = (h == 1) & (t_true > 1.7e9 + 2400) & (t_true < 1.7e9 + 4200)
    keep = ~silent
    h, ts = h[keep], ts[keep]
    n = h.size
    # 2 % of the events arrive 20-400 s of input later than their neighbours
    order = np.arange(n, dtype=np.float64)
    delayed = rng.random(n) < 0.02
    order[delayed] += rng.uniform(20, 400, delayed.sum()) * n / 7200
    idx = np.argsort(order, kind="stable")
    h, ts = h[idx], ts[idx]
    series = h * per_host + rng.integers(0, per_host, n)
    value = rng.normal(50, 5, n)
    value[rng.random(n) < 0.01] = np.nan  # invalid events: reported, never late, no clock
    ts[rng.random(n) < 0.005] = np.inf
    return series.astype(np.int64), h.astype(np.int64), ts, value


def run_split(series, host, ts, value, cuts, restore_at=(), idle=IDLE):
    """Push in micro-batches cut at ``cuts``; checkpoint + restore (pickled state) at the cut
    indices in ``restore_at``.  Returns (all closed windows, late indices, windows per push)."""
    agg = WindowAggregator(W, L, idle)
    bounds = [0, *cuts, series.size]
    parts, late, pushes = [], [], []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        out = agg.push(series[lo:hi], ts[lo:hi], value[lo:hi], host=host[lo:hi])
        parts.append(out)
        late.append(out.late_idx + lo)
        pushes.append(out)
        if k in restore_at:
            agg = WindowAggregator.from_state(pickle.loads(pickle.dumps(agg.to_state())))
    parts.append(agg.flush())
    pushes.append(parts[-1])
    return ClosedWindows.concat(parts), np.concatenate(late), pushes


# ---------------------------------------------------------------------------------- helpers
def test_late_in_order_dense_and_sorted_paths_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 300))
        host = rng.integers(0, int(rng.integers(1, 12)), n)
        spread = [3, 40, 100_000][trial % 3]  # the last: a sparse (host, level) space
        level = rng.integers(0, spread, n)
        level[rng.random(n) < 0.1] = _NONE  # invalid events move no clock
        win = level + rng.integers(-2, 3, n)
        want = np.array(
            [any(host[j] == host[i] and level[j] > win[i] for j in range(i)) for i in range(n)]
        )
        np.testing.assert_array_equal(_late_in_order(host, level, win), want)
        if n > 1:
            np.testing.assert_array_equal(_late_in_order_sorted(host, level, win), want)


# ---------------------------------------------------------------------------------- the policy
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aggregator_matches_the_per_event_reference_with_skewed_clocks(seed):
    series, host, ts, value = skewed_stream(seed)
    cw, late, pushes = run_split(series, host, ts, value, list(range(211, series.size, 211)))
    want = reference_late(host, ts, value=value)
    assert late.tolist() == want
    assert 0 < len(want) < series.size // 10  # the delayed events, not the skewed hosts
    valid = np.isfinite(ts) & np.isfinite(value)
    assert sum(p.invalid_idx.size for p in pushes) == (~valid).sum() > 0
    keep = np.setdiff1d(np.flatnonzero(valid), want)
    check(cw, naive(series[keep], ts[keep], value[keep], W), W)
    # all windows of a host with the same start close in the same push (features.cross)
    where = {}
    for k, p in enumerate(pushes):
        for s, st in zip(p.series.tolist(), p.start.tolist(), strict=True):
            assert where.setdefault((s // 3, st), k) == k


@pytest.mark.parametrize("seed", [4, 5])
def test_any_micro_batch_split_and_restore_point_gives_the_same_result(seed):
    series, host, ts, value = skewed_stream(seed)
    rng = np.random.default_rng(seed)
    one_by_one = run_split(
        series[:1500], host[:1500], ts[:1500], value[:1500], list(range(1, 1500))
    )
    whole = run_split(series[:1500], host[:1500], ts[:1500], value[:1500], [])
    cuts = np.sort(rng.choice(np.arange(1, series.size), 40, replace=False)).tolist()
    a = run_split(series, host, ts, value, cuts)
    b = run_split(series, host, ts, value, cuts[::3], restore_at=set(range(0, 14, 2)))
    c = run_split(series, host, ts, value, [])
    for x, y in ((one_by_one, whole), (a, b), (a, c)):
        assert x[1].tolist() == y[1].tolist()
        kx, ky = keyed_windows(x[0]), keyed_windows(y[0])
        pd.testing.assert_frame_equal(kx, ky)


def keyed_windows(cw: ClosedWindows) -> pd.DataFrame:
    df = pd.DataFrame({"series": cw.series, "start": cw.start, **cw.features})
    return df.sort_values(["series", "start"], ignore_index=True)


def test_a_host_far_ahead_closes_only_its_own_windows():
    agg = WindowAggregator(W, L, IDLE)
    # host 0 on time, host 1 stamps +290 s (inside the accepted skew), same batch
    out = agg.push(
        np.array([0, 1, 0]),
        np.array([1000.0, 1290.0, 1010.0]),
        np.ones(3),
        host=np.array([0, 1, 0]),
    )
    assert out.n_late == 0 and len(out) == 0
    out = agg.push(np.array([1]), np.array([1400.0]), np.ones(1), host=np.array([1]))
    assert out.series.tolist() == [1]  # host 1's own window [1260, 1320) closed by its clock
    out = agg.push(np.array([0, 0]), np.array([1015.0, 1019.0]), np.ones(2), host=np.array([0, 0]))
    assert out.n_late == 0 and len(out) == 0  # host 0's window [960, 1020) still open
    out = agg.push(np.array([0]), np.array([1051.0]), np.ones(1), host=np.array([0]))
    assert out.series.tolist() == [0] and out.features["count"].tolist() == [4]


def test_a_host_behind_is_on_time_up_to_idle_close_and_late_beyond():
    agg = WindowAggregator(W, L, IDLE)
    agg.push(np.array([0]), np.array([10_000.0]), np.ones(1), host=np.array([0]))
    lag = agg.push(
        np.array([1, 1]),
        np.array([10_000.0 - 500, 10_000.0 - 480]),
        np.ones(2),
        host=np.array([1, 1]),
    )
    assert lag.n_late == 0  # 500 s behind the partition: still inside idle_close_s
    far = agg.push(np.array([2]), np.array([10_000.0 - 700]), np.ones(1), host=np.array([2]))
    assert far.late_idx.tolist() == [0]  # 700 s behind: its window was closed for every host


def test_a_silent_host_is_closed_by_the_partition_clock_and_late_after_it_resumes():
    agg = WindowAggregator(W, L, IDLE)
    t0 = 60_000.0
    # hosts 0 and 1, two series each; host 1 then goes silent
    agg.push(np.array([0, 1, 2, 3]), np.full(4, t0 + 5), np.ones(4), host=np.array([0, 0, 1, 1]))
    closed_at = None
    for k in range(1, 20):  # host 0 keeps reporting every minute
        out = agg.push(
            np.array([0, 1]), np.full(2, t0 + 5 + 60 * k), np.ones(2), host=np.array([0, 0])
        )
        mine = out.series[out.series >= 2]
        if mine.size:
            assert closed_at is None and sorted(mine.tolist()) == [2, 3]  # both series at once
            closed_at = k
    # [t0, t0+60) closes once the partition clock is idle_close_s past its end
    assert closed_at == math.ceil((60 + IDLE - 5) / 60)
    assert agg.closed_upto()[1] == math.floor((t0 + 5 + 60 * 19 - IDLE) / W)
    # host 1 restarts: events behind its closed windows are late, newer ones are aggregated
    back = agg.push(
        np.array([2, 3, 2]),
        np.array([t0 + 30, t0 + 900, t0 + 1200]),
        np.ones(3),
        host=np.array([1, 1, 1]),
    )
    assert back.late_idx.tolist() == [0]
    assert back.series.tolist() == [3] and back.start.tolist() == [t0 + 900]  # by its own clock
    last = agg.flush()
    assert last.start[last.series == 2].tolist() == [t0 + 1200]


def test_without_host_codes_the_aggregator_keeps_one_clock():
    rng = np.random.default_rng(9)
    s, ts, v = rng.integers(0, 10, 800), rng.uniform(0, 3000, 800), rng.normal(size=800)
    a = run_split(s, np.zeros(800, np.int64), ts, v, list(range(50, 800, 50)), idle=None)
    agg = WindowAggregator(W, L)
    parts = [agg.push(s[i : i + 50], ts[i : i + 50], v[i : i + 50]) for i in range(0, 800, 50)]
    late = np.concatenate([p.late_idx + i for p, i in zip(parts, range(0, 800, 50), strict=True)])
    assert late.tolist() == a[1].tolist() == reference_late(np.zeros(800, np.int64), ts, idle=None)
    pd.testing.assert_frame_equal(
        keyed_windows(ClosedWindows.concat([*parts, agg.flush()])), keyed_windows(a[0])
    )


def test_invalid_events_are_never_late_and_move_no_clock():
    agg = WindowAggregator(W, 0.0, IDLE)
    out = agg.push(
        np.array([0, 0, 1, 1]),
        np.array([200.0, 10.0, np.inf, 5.0]),
        np.array([1.0, np.nan, 1.0, 1.0]),
        host=np.array([0, 0, 0, 0]),
    )
    assert out.invalid_idx.tolist() == [1, 2] and out.late_idx.tolist() == [3]
    assert agg.max_ts == 200.0 and agg.closed_upto().tolist() == [3]


def test_bad_host_codes_and_idle_close_raise():
    agg = WindowAggregator(W, L, IDLE)
    agg.push(np.array([0]), np.array([1.0]), np.ones(1), host=np.array([0]))
    with pytest.raises(ValueError, match="same host"):
        agg.push(np.array([0]), np.array([2.0]), np.ones(1), host=np.array([1]))
    with pytest.raises(ValueError, match="same host"):
        agg.push(np.array([5, 5]), np.array([2.0, 3.0]), np.ones(2), host=np.array([1, 2]))
    assert agg._host_of[5] == -1  # a refused batch leaves no trace
    with pytest.raises(ValueError):
        agg.push(np.array([1]), np.array([2.0]), np.ones(1), host=np.array([-1]))
    with pytest.raises(ValueError):
        WindowAggregator(W, L, idle_close_s=L - 1)
    with pytest.raises(ValueError):
        WindowAggregator(W, L, idle_close_s=float("inf"))


# ---------------------------------------------------------------------------------- checkpoints
def test_a_version_1_state_restores_with_the_partition_clock_for_every_host():
    # a version-1 state (one clock per partition), as main@4f710a9 wrote it
    v1 = {
        "version": 1,
        "window_s": W,
        "allowed_lateness_s": L,
        "max_ts": 1000.0,
        "closed_upto": 16,
        "n_late": 2,
        "n_events": 10,
        "seq": 12,
        "open_series": np.array([0, 1, 2]),
        "open_win": np.array([16, 16, 16]),
        "open": {
            k: np.array(v, np.int64 if k == "seqlast" else np.float64)
            for k, v in {
                "n": [2, 1, 1],
                "mv": [1.0, 2.0, 3.0],
                "m2v": [0.5, 0, 0],
                "mt": [10.0, 5, 5],
                "m2t": [8.0, 0, 0],
                "ctv": [1.0, 0, 0],
                "vmin": [0.5, 2, 3],
                "vmax": [1.5, 2, 3],
                "tlast": [12.0, 5, 5],
                "vlast": [1.5, 2, 3],
                "seqlast": [11, 9, 10],
            }.items()
        },
        "prev_mean": np.array([4.0, 5.0, 6.0]),
        "prev_win": np.array([15, 15, 14]),
    }
    agg = WindowAggregator.from_state(v1, host_of=np.array([0, 0, 1]), idle_close_s=IDLE)
    assert agg.to_state()["version"] == WindowAggregator.STATE_VERSION == 2
    assert agg.closed_upto().tolist() == [16, 16] and agg.n_open == 3
    out = agg.push(
        np.array([0, 2, 3]), np.array([959.0, 1010.0, 950.0]), np.ones(3), host=np.array([0, 1, 2])
    )
    assert out.late_idx.tolist() == [0]  # behind the migrated bound; host 2 is new: on time
    assert len(out) == 0
    out = agg.push(np.array([0]), np.array([1111.0]), np.ones(1), host=np.array([0]))
    assert out.series.tolist() == [0, 1] and out.features["count"].tolist() == [2, 1]
    assert out.features["change"].tolist() == [1.0 - 4.0, 2.0 - 5.0]
    # without host codes: one host for all series
    assert WindowAggregator.from_state(v1).closed_upto().tolist() == [16]
    with pytest.raises(ValueError, match="host code"):
        WindowAggregator.from_state(v1, host_of=np.array([0]))


def test_a_detect_checkpoint_written_before_the_upgrade_restores_and_continues():
    """``tests/data/detect_state_v1.pkl``: ``DetectStage.snapshot(0)`` written by the code of
    main@4f710a9 after the first 60 ticks of ``Simulator(hosts=3, tenant="t1", seed=7,
    interval=10.0, start=1_780_000_000.0, anomaly_rate=0.0)`` (window 60 s, lateness 30 s)."""
    blob = (DATA / "detect_state_v1.pkl").read_bytes()
    assert pickle.loads(blob)["agg"]["version"] == 1
    sim = Simulator(
        hosts=3, tenant="t1", seed=7, interval=10.0, start=1_780_000_000.0, anomaly_rate=0.0
    )
    ticks = list(sim.events(ticks=90))
    norm = Normalizer(NormalizeConfig(max_past_age_s=1e12))

    def batch(lo, hi):
        raws = [e for evs in ticks[lo:hi] for e in evs]
        b, dead = norm(raws, "raw", [0] * len(raws), range(len(raws)))
        assert not dead
        b.partition = np.zeros(len(b), np.int64)
        return b

    upgraded = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
    upgraded.restore(0, blob)
    rest = [upgraded(batch(60, 75)), upgraded(batch(75, 90)), upgraded.flush()]
    assert all(r.late_idx.size == 0 for r in rest)
    after = WindowRows.concat([r.windows for r in rest if r.windows is not None])
    fresh = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
    full = WindowRows.concat(
        [fresh(batch(0, 60)).windows, fresh(batch(60, 90)).windows, fresh.flush().windows]
    )
    cut = pickle.loads(blob)["agg"]["closed_upto"] * W  # windows closed before the checkpoint
    want = keyed(full)
    want = want[want["start"] >= cut].reset_index(drop=True)
    assert len(want) == 3 * 4 * 6  # [cut, cut + 360): the windows open or still to come
    pd.testing.assert_frame_equal(keyed(after), want)
    again = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
    again.restore(0, upgraded.snapshot(0))  # and the upgraded state checkpoints as version 2
    assert pickle.loads(upgraded.snapshot(0))["agg"]["version"] == 2


# ---------------------------------------------------------------------------------- detect stage
def keyed(rows: WindowRows) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "tenant_id": rows.tenant_id.astype(str),
            "host": rows.host.astype(str),
            "metric": rows.metric.astype(str),
            "start": rows.start,
            **rows.features,
            "score": rows.score,
        }
    )
    return df.sort_values(["tenant_id", "host", "metric", "start"], ignore_index=True)


def events(tenant: str, host: str, ts, start: int = 0) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event_id": f"{tenant}-{host}-{start + i}",
                "tenant_id": tenant,
                "host": host,
                "metric": METRICS[i % 2],
                "value": float(i % 7),
                "ts_event": iso_z(t, "milliseconds"),
                "unit": UNITS[i % 2],
                "tags": {},
            }
        )
        for i, t in enumerate(ts)
    ]


def normalized(raws: list[bytes], partition: int = 0) -> MetricBatch:
    b, dead = Normalizer(NormalizeConfig())(raws, "raw", [partition] * len(raws), range(len(raws)))
    assert not dead, dead[:1]
    b.partition = np.full(len(b), partition, np.int64)
    return b


@pytest.mark.parametrize("same_batch", [True, False])
def test_tenant_a_stamping_now_plus_290s_does_not_make_tenant_b_late(same_batch):
    """Issue 8, item 2: tenant A's event at now + 290 s (inside the accepted +300 s skew) sent
    100 of 100 on-time events of tenant B on the same partition to the DLQ as ``ts_too_old``."""
    now = time.time()
    a = events("tenant-a", "web-1", [now + 290.0])
    b = events("tenant-b", "db-1", now - 100.0 + np.arange(100.0))
    det = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
    if same_batch:
        outs = [det(normalized(a + b))]
    else:
        outs = [det(normalized(a)), det(normalized(b))]
    assert sum(o.late_idx.size for o in outs) == 0
    rows = WindowRows.concat([o.windows for o in [*outs, det.flush()] if o.windows is not None])
    mine = rows.tenant_id == "tenant-b"
    assert int(rows.features["count"][mine].sum()) == 100  # every B event in a scored window
    # B's windows closed by B's own clock: only those ending 30 s before its newest event
    live = WindowRows.concat([o.windows for o in outs if o.windows is not None])
    if live is not None:
        assert (live.end[live.tenant_id == "tenant-b"] <= now - 1.0 - L).all()


def test_a_hosts_future_stamped_event_does_not_close_a_sibling_hosts_windows():
    t = math.floor((time.time() - 400.0) / W) * W + 5.0  # early in a window (h1 + 400 s: no skew)
    det = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
    first = det(normalized(events("acme", "h2", [t, t + 1.0]) + events("acme", "h1", [t + 290.0])))
    assert first.windows is None and first.late_idx.size == 0
    # h1 runs ahead and closes its own windows; h2's current window stays open and keeps counting
    second = det(
        normalized(
            events("acme", "h1", [t + 400.0], start=1)
            + events("acme", "h2", [t + 20.0, t + 40.0], start=2)
        )
    )
    assert second.late_idx.size == 0
    assert set(second.windows.host.tolist()) == {"h1"}
    third = det(normalized(events("acme", "h2", [t + 100.0], start=4)))
    assert third.windows.host.tolist() == ["h2", "h2"]  # cpu_load and mem_used_pct together
    assert third.windows.features["count"].tolist() == [2, 2]


def skewed_raw_stream() -> list[bytes]:
    """Simulated telemetry of 6 hosts of two tenants with skewed clocks (+290 s to -200 s), one
    host silent for 25 minutes, and 0.5 % of the events delivered 5-15 minutes late, in one
    input order (by true time)."""
    day = 86400.0
    start = (time.time() // day - 2) * day
    offsets = [0.0, 290.0, -200.0, 120.0, -90.0, 0.0]
    rng = np.random.default_rng(11)
    rows = []
    for k, tenant in enumerate(("t1", "t2")):
        sim = Simulator(
            hosts=3, tenant=tenant, seed=3 + k, interval=10.0, start=start, anomaly_rate=0.01
        )
        for tick, evs in enumerate(sim.events(ticks=500)):
            for e in evs:
                ev = orjson.loads(e)
                h = 3 * k + int(ev["host"][-3:])
                if h == 5 and 200 <= tick < 350:
                    continue  # silent
                ev["host"] = f"host-{h:03d}"
                true_t = start + tick * 10.0
                ev["ts_event"] = iso_z(true_t + offsets[h], "milliseconds")
                delay = rng.uniform(300, 900) if rng.random() < 0.005 else 0.0
                rows.append((true_t + delay + rng.uniform(0, 1), orjson.dumps(ev)))
    rows.sort(key=lambda r: r[0])
    return [r for _, r in rows]


def run_detect(raws, cuts, restore_every=0):
    det = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
    bounds = [0, *cuts, len(raws)]
    rows, late = [], []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        b = normalized(raws[lo:hi])  # every host on one partition
        out = det(b)
        rows.append(out.windows)
        late += b.event_id[out.late_idx].tolist()
        if restore_every and (k + 1) % restore_every == 0:
            blob = det.snapshot(0)
            det = DetectStage(RuleSet([]), window_s=W, lateness_s=L)
            det.restore(0, blob)
    rows.append(det.flush().windows)
    return WindowRows.concat([r for r in rows if r is not None]), sorted(late)


def test_detect_with_skewed_clocks_is_batch_and_restore_invariant_and_matches_the_reference():
    raws = skewed_raw_stream()
    a_rows, a_late = run_detect(raws, list(range(37, len(raws), 1009)))
    b_rows, b_late = run_detect(raws, list(range(500, len(raws), 3001)), restore_every=2)
    assert a_late == b_late
    pd.testing.assert_frame_equal(keyed(a_rows), keyed(b_rows))
    # the late events are exactly those of the per-event reference (one clock per tenant|host)
    b = normalized(raws)
    host = pd.factorize(b.tenant_id + "|" + b.host)[0]
    want = sorted(b.event_id[reference_late(host, b.ts, idle=IDLE_CLOSE_S)].tolist())
    assert a_late == want
    assert 0 < len(want) <= 0.01 * len(raws)  # delayed events only, none of a skewed host
    df = keyed(a_rows)
    assert set(df["host"]) == {f"host-{h:03d}" for h in range(6)}
    assert df.groupby("host")["count"].sum().sum() == len(raws) - len(want)


def test_settings_require_idle_close_beyond_skew_window_and_lateness():
    assert Settings().idle_close_s == IDLE_CLOSE_S
    with pytest.raises(ValueError, match="EVENTOPS_IDLE_CLOSE_S"):
        Settings(idle_close_s=390.0)  # 300 + 60 + 30: a +300 s tenant could close others
    assert Settings(idle_close_s=391.0, window_s=60.0).idle_close_s == 391.0
    with pytest.raises(ValueError, match="EVENTOPS_IDLE_CLOSE_S"):
        Settings(window_s=300.0)  # the default idle_close_s no longer exceeds the sum


def test_the_module_examples_run():
    import doctest

    import features.windows

    res = doctest.testmod(features.windows)
    assert res.attempted >= 10 and res.failed == 0
