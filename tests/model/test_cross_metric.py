"""Cross-metric features: the live detect stage and the training dataset path compute the same
columns; micro-batch boundaries and checkpoint restores do not change them; models trained
without them keep scoring exactly as before."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pandas as pd
import pytest

from core.batch import MetricBatch
from features.cross import CROSS_FEATURES, cross_metric_features
from features.windows import FEATURES as WINDOW_FEATURES
from models.batch import BatchModel
from models.rules import RuleSet
from pipeline.simulate import Simulator
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.detect.window_rows import FEATURES, WindowRows
from pipeline.stages.normalize import NormalizeConfig, Normalizer
from training import datasets
from training.estimators import CalibratedDetector, relative_features, relative_names

WINDOW_S = 60.0


def raw_stream(seed: int = 3, hosts: int = 6, ticks: int = 900) -> list[bytes]:
    day = 86400.0  # two days ago at midnight: same data every run, inside the accepted age
    sim = Simulator(
        hosts=hosts,
        tenant="t1",
        seed=seed,
        interval=10.0,
        start=(time.time() // day - 2) * day,
        anomaly_rate=0.01,
    )
    return [e for evs in sim.events(ticks=ticks) for e in evs]


def batches(raws: list[bytes], cuts: list[int]) -> list[MetricBatch]:
    """Normalized micro-batches cut at ``cuts`` (event positions), three partitions by host."""
    norm = Normalizer(NormalizeConfig())
    out = []
    bounds = [0, *cuts, len(raws)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        b, dead = norm(raws[lo:hi], "raw", [0] * (hi - lo), range(lo, hi))
        assert not dead
        b.partition = np.array([int(h[-3:]) % 3 for h in b.host.tolist()], np.int64)
        out.append(b)
    return out


def run(bs: list[MetricBatch], model=None, restore_every: int = 0) -> WindowRows:
    """Detect over ``bs``; with ``restore_every``, hand every partition's checkpoint to a fresh
    stage every that many batches (what a kill -9 and a restart do)."""
    provider = (lambda: ("1", model)) if model is not None else None
    det = DetectStage(RuleSet([]), window_s=WINDOW_S, model=provider)
    parts = []
    for i, b in enumerate(bs):
        parts.append(det(b).windows)
        if restore_every and (i + 1) % restore_every == 0:
            blobs = {p: det.snapshot(p) for p in list(det.parts)}
            det = DetectStage(RuleSet([]), window_s=WINDOW_S, model=provider)
            for p, blob in blobs.items():
                det.restore(p, blob)
    parts.append(det.flush().windows)
    return WindowRows.concat([p for p in parts if p is not None])


def keyed(rows: WindowRows) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "tenant_id": rows.tenant_id.astype(str),
            "host": rows.host.astype(str),
            "metric": rows.metric.astype(str),
            "start": rows.start,
            "end": rows.end,
            **rows.features,
        }
    )
    return df.sort_values(["tenant_id", "host", "metric", "start"], ignore_index=True)


@pytest.fixture(scope="module")
def raws() -> list[bytes]:
    return raw_stream()


@pytest.fixture(scope="module")
def live(raws) -> WindowRows:
    # cuts at odd positions: a tick's events of one host land in different micro-batches
    return run(batches(raws, list(range(37, len(raws), 1009))))


def test_live_rows_carry_cross_metric_features_that_vary(live):
    assert set(FEATURES) == set(WINDOW_FEATURES) | set(CROSS_FEATURES)
    assert set(live.features) == set(FEATURES)
    f = live.features
    assert set(np.unique(f["host_metrics"]).tolist()) == {4}  # every host reports its 4 metrics
    assert f["host_deviating"].max() >= 1 and (f["host_deviating"] == 0).mean() > 0.9
    assert np.isfinite(f["host_max_z"]).all() and f["host_max_z"].max() > 3.0


def test_training_dataset_path_computes_the_live_columns(live):
    """Same windows, cross columns recomputed by the training path from the base features only
    (rows stored before the columns existed) and read back as stored: identical to live."""
    df = keyed(live)
    base = df.drop(columns=list(CROSS_FEATURES))
    recomputed = datasets.from_frame(base)
    names = (df["tenant_id"] + "/" + df["host"] + "/" + df["metric"]).tolist()
    assert [recomputed.names[c] for c in recomputed.X["series"]] == names  # same row order
    for k in CROSS_FEATURES:
        np.testing.assert_array_equal(recomputed.X[k], df[k].to_numpy())
        assert recomputed.X[k].dtype == live.features[k].dtype
    # stored values, a third of them NULL (an older worker wrote those rows)
    stored = df.copy()
    stored[list(CROSS_FEATURES)] = stored[list(CROSS_FEATURES)].astype(float)
    stored.loc[stored.index % 3 == 0, list(CROSS_FEATURES)] = np.nan
    mixed = datasets.from_frame(stored)
    for k in CROSS_FEATURES:
        np.testing.assert_array_equal(mixed.X[k], df[k].to_numpy())


def test_micro_batch_boundaries_and_checkpoint_restores_change_nothing(raws, live):
    other = run(batches(raws, list(range(500, len(raws), 4001))), restore_every=3)
    a, b = keyed(live), keyed(other)
    assert len(a) == len(b) > 6 * 4 * 100
    pd.testing.assert_frame_equal(a, b)


def test_old_models_score_as_before_and_new_models_use_the_columns(raws, live):
    X = {**live.features, "series": np.zeros(len(live), np.int64)}
    old = BatchModel.fit_isolation_forest(X, features=WINDOW_FEATURES, seed=0, n_estimators=30)
    new = BatchModel.fit_isolation_forest(X, features=FEATURES, seed=0, n_estimators=30)
    bs = batches(raws, list(range(37, len(raws), 1009)))
    for model in (old, new):
        rows = run(bs, model=model)
        got = np.array([c["batch"] for c in rows.components])
        Xr = {**rows.features, "series": np.zeros(len(rows), np.int64)}
        if model is old:  # the model never sees the new columns: scores of the base features
            Xr = {k: v for k, v in Xr.items() if k not in CROSS_FEATURES}
        want = np.clip((model.score_many(Xr) - 0.55) / 0.30, 0.0, 1.0)
        np.testing.assert_allclose(got, np.round(want, 4), atol=1e-12)
    # a model restored from a checkpoint made before this change (no cross columns in its tuple)
    st = pickle.loads(pickle.dumps(old.to_state()))
    assert BatchModel.from_state(st).features == WINDOW_FEATURES


def test_records_round_trip_and_records_of_older_producers(live):
    recs = live.records()[:50]
    back = WindowRows.from_records(recs)
    for k in CROSS_FEATURES:
        np.testing.assert_array_equal(back.features[k], live.features[k][:50])
    for r in recs:
        for k in CROSS_FEATURES:
            del r["features"][k]
    old = WindowRows.from_records(recs)
    assert all(np.isnan(old.features[k]).all() for k in CROSS_FEATURES)


def test_injection_recomputes_the_groups_it_touches(live):
    ds = datasets.from_frame(keyed(live))
    hosts = ds.hosts
    assert hosts is not None and np.bincount(hosts).tolist() == [4] * 6
    inc = datasets.inject_host_incidents(ds, per_host=2, magnitude=4.0, seed=1)
    new_labels = {c: set(v) - set(ds.labels.get(c, [])) for c, v in inc.labels.items()}
    by_time: dict[tuple[int, float], int] = {}
    for c, ivs in new_labels.items():
        for lo, _ in ivs:
            by_time[(int(hosts[c]), lo)] = by_time.get((int(hosts[c]), lo), 0) + 1
    assert len(by_time) >= 6 and all(n >= 2 for n in by_time.values())  # several metrics at once
    for res in (inc, datasets.inject_anomalies(ds, per_series=2, seed=2)):
        fresh = res.cross_features()
        for k in CROSS_FEATURES:
            np.testing.assert_array_equal(res.X[k], fresh[k])
        changed = np.zeros(len(ds), dtype=bool)
        for k in CROSS_FEATURES:
            changed |= res.X[k] != ds.X[k]
        assert changed.any()
    # an incident's windows see their siblings move
    hit = inc.X["host_deviating"] > ds.X["host_deviating"]
    assert hit.sum() >= 6


def test_csv_style_datasets_get_single_host_columns_and_models_keep_their_view():
    rng = np.random.default_rng(0)
    n = 300
    X = {"series": np.repeat(np.arange(3), n // 3), "start": np.tile(60.0 * np.arange(n // 3), 3)}
    X["end"] = X["start"] + 60.0
    for f in WINDOW_FEATURES:
        X[f] = rng.normal(10, 1, n)
    X["count"] = np.full(n, 6, np.int64)
    ds = datasets.WindowDataset(X, ["a", "b", "c"])  # no hosts: each series its own host
    assert ds.X["host_metrics"].tolist() == [1] * n and ds.X["host_max_z"].max() == 0.0
    M = ds.matrix(FEATURES)
    base = relative_features(M[:, : len(WINDOW_FEATURES)], WINDOW_FEATURES)
    full = relative_features(M, FEATURES)
    assert base.shape == (n, 8) and full.shape == (n, 10)
    np.testing.assert_array_equal(full[:, :8], base)
    assert relative_names(WINDOW_FEATURES) == relative_names(FEATURES)[:8]
    with pytest.raises(ValueError):
        relative_names((*WINDOW_FEATURES, "host_max_z"))
    det = CalibratedDetector("robust_z", features=FEATURES).fit(M)
    assert det.model_.median_.shape == (10,)
    # a scores-only dataset (no feature columns) still builds, without cross columns
    bare = datasets.WindowDataset({k: X[k] for k in ("series", "start", "end")}, ["a", "b", "c"])
    assert not set(CROSS_FEATURES) & set(bare.X) and bare.series_days() > 0


def test_cross_function_matches_dataset_grouping_on_hosts_with_missing_metrics():
    """A host that skipped a metric in some window: the group is what was reported."""
    X = {
        "count": np.full(5, 6),
        "mean": np.full(5, 10.0),
        "std": np.ones(5),
        "change": np.array([5.0, 0.0, 0.0, 5.0, 0.0]),
    }
    out = cross_metric_features(np.array([0, 0, 0, 0, 0]), np.array([0.0, 0.0, 0.0, 60.0, 60.0]), X)
    assert out["host_metrics"].tolist() == [3, 3, 3, 2, 2]
    assert out["host_deviating"].tolist() == [0, 1, 1, 0, 1]


def test_an_alert_on_a_host_wide_incident_says_the_other_metrics_moved():
    from datetime import datetime

    import orjson

    raws = raw_stream(seed=5, hosts=3, ticks=900)
    evs = [orjson.loads(r) for r in raws]
    ts = np.array([datetime.fromisoformat(e["ts_event"]).timestamp() for e in evs])
    t0 = (ts.min() + 700 * 10.0) // WINDOW_S * WINDOW_S
    for e, t in zip(evs, ts, strict=True):  # every metric of host-001 triples for three windows
        if e["host"].endswith("001") and t0 <= t < t0 + 3 * WINDOW_S:
            e["value"] = e["value"] * 3 + 50
    det = DetectStage(RuleSet([]), window_s=WINDOW_S)
    alerts = [
        a
        for b in batches([orjson.dumps(e) for e in evs], list(range(997, len(evs), 997)))
        for a in det(b).alerts
    ]
    opened = [
        a
        for a in alerts
        if a.rule == "anomaly:ensemble"
        and a.kind == "open"
        and a.host.endswith("001")
        and t0 < a.ts <= t0 + 4 * WINDOW_S
    ]
    assert len({a.metric for a in opened}) >= 2, opened
    for a in opened:
        ctx = a.explanation["host"]
        assert ctx["metrics"] == 4 and ctx["deviating"] >= 1 and ctx["max_z"] >= 3
        assert "other metric" in a.message and "moved too" in a.message
    # and the message claims it only when it is so
    for a in alerts:
        if a.rule == "anomaly:ensemble" and a.kind == "open":
            assert ("moved too" in a.message) == (
                a.explanation.get("host", {}).get("deviating", 0) > 0
            )
