"""Cross-metric features through the sink into ``features`` (COPY and ON CONFLICT paths, rows of
an older producer without them) and back out of ``training.datasets.from_postgres``: the training
columns equal what the live detect stage computed."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd

from core.batch import MetricBatch
from features.cross import CROSS_FEATURES
from models.rules import RuleSet
from pipeline.simulate import Simulator
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.detect.window_rows import WindowRows
from pipeline.stages.normalize import NormalizeConfig, Normalizer
from storage.sink import Sink
from training.datasets import from_postgres


def detect_pairs(tenant: str) -> list[tuple[MetricBatch, WindowRows | None]]:
    day = 86400.0
    sim = Simulator(
        hosts=3,
        tenant=tenant,
        seed=4,
        interval=10.0,
        start=(time.time() // day - 2) * day,
        anomaly_rate=0.02,
    )
    raws = [e for evs in sim.events(ticks=600) for e in evs]
    norm = Normalizer(NormalizeConfig())
    det = DetectStage(RuleSet([]), window_s=60.0)
    out = []
    for lo in range(0, len(raws), 701):
        b, dead = norm(
            raws[lo : lo + 701],
            "raw",
            [0] * len(raws[lo : lo + 701]),
            range(lo, lo + len(raws[lo : lo + 701])),
        )
        assert not dead
        out.append((b, det(b).windows))
    out.append((MetricBatch.empty(), det.flush().windows))
    return out


def test_cross_metric_features_stored_by_the_sink_are_what_training_reads(conn, tenant, settings):
    pairs = detect_pairs(tenant)
    live = WindowRows.concat([w for _, w in pairs if w is not None])
    assert live.features["host_deviating"].max() >= 1
    sink = Sink(conn)
    (b0, w0), (b1, w1), (b2, w2) = pairs[:3]
    sink.write(b0, windows=w0)  # COPY path
    # a replay of batch 0 with batch 1: UniqueViolation, then staging + ON CONFLICT for both
    sink.write(MetricBatch.concat([b0, b1]), windows=WindowRows.concat([w0, w1]))
    # batch 2 from an older producer: its score records carry no cross-metric features
    recs = w2.records()
    for r in recs:
        for k in CROSS_FEATURES:
            del r["features"][k]
    old = WindowRows.from_records(recs)
    sink.write(b2, windows=old)
    for b, w in pairs[3:]:
        sink.write(b, windows=w)
    assert len(w0) and len(w1) and len(w2)

    all_null = " AND ".join(f"{k} IS NULL" for k in CROSS_FEATURES)
    n_null = conn.execute(
        f"SELECT count(*) FILTER (WHERE {all_null}), count(*) FROM features WHERE tenant_id = %s",
        (tenant,),
    ).fetchone()
    assert n_null == (len(w2), len(live))
    stored = conn.execute(
        "SELECT host, metric, extract(epoch FROM window_start)::float8, "
        + ", ".join(CROSS_FEATURES)
        + " FROM features WHERE tenant_id = %s AND host_metrics IS NOT NULL",
        (tenant,),
    ).fetchall()
    key = {
        (h, m, s): i
        for i, (h, m, s) in enumerate(zip(live.host, live.metric, live.start.tolist(), strict=True))
    }
    idx = np.array([key[(h, m, s)] for h, m, s, *_ in stored])
    for j, k in enumerate(CROSS_FEATURES):
        np.testing.assert_array_equal(np.array([r[3 + j] for r in stored]), live.features[k][idx])

    ds = from_postgres(settings, tenant=tenant)
    names = [ds.names[c] for c in ds.X["series"]]
    order = np.array(
        [
            key[(n.split("/")[1], n.split("/")[2], s)]
            for n, s in zip(names, ds.X["start"].tolist(), strict=True)
        ]
    )
    assert sorted(order.tolist()) == list(range(len(live)))
    for k in CROSS_FEATURES:  # stored rows as stored, the older producer's rows recomputed
        np.testing.assert_array_equal(ds.X[k], live.features[k][order])
        assert ds.X[k].dtype == live.features[k].dtype
    np.testing.assert_array_equal(
        ds.hosts[ds.X["series"]], np.unique(live.host[order], return_inverse=True)[1]
    )


def test_model_trained_with_cross_features_registers_loads_and_scores_live(mlflow_settings, tenant):
    """``eventops train --cross-metric``'s config: logged with its feature tuple, loaded back from
    the registry, it scores the detect stage's windows like the local model does."""
    from features.cross import CROSS_FEATURES
    from features.windows import FEATURES
    from registry.client import client
    from registry.loading import load_version
    from training.datasets import from_frame, inject_host_incidents
    from training.train import TrainConfig, fit, log_and_register

    pairs = detect_pairs(tenant)
    live = WindowRows.concat([w for _, w in pairs if w is not None])
    df = pd.DataFrame(
        {
            "tenant_id": live.tenant_id.astype(str),
            "host": live.host.astype(str),
            "metric": live.metric.astype(str),
            "start": live.start,
            "end": live.end,
            **live.features,
        }
    )
    ds = inject_host_incidents(from_frame(df), per_host=1, seed=0)
    s = mlflow_settings.model_copy(update={"model_name": f"test-{uuid.uuid4().hex[:8]}"})
    cfg = TrainConfig(features=FEATURES + CROSS_FEATURES, params={"n_estimators": 20})
    local = fit(ds, cfg)
    version, _ = log_and_register(s, local, cfg, ds)
    loaded = load_version(client(s), s.model_name, version)
    assert loaded.features == FEATURES + CROSS_FEATURES
    det = DetectStage(RuleSet([]), window_s=60.0, model=lambda: (version, loaded))
    rows = WindowRows.concat(
        [w for w in (det(b).windows for b, _ in pairs[:-1]) if w is not None]
        + [det.flush().windows]
    )
    X = {**rows.features, "series": np.zeros(len(rows), np.int64)}
    got = np.array([c["batch"] for c in rows.components])
    np.testing.assert_allclose(got, np.round(np.clip((local.score_many(X) - 0.55) / 0.30, 0, 1), 4))
    assert set(rows.model_version) == {version}
