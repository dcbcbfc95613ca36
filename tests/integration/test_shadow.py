"""A Kafka detect worker scores the MLflow challenger in shadow: stored, compared in /models,
never alerting (real Kafka, PostgreSQL and a PostgreSQL-backed MLflow registry)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from pipeline.stages.detect.score_alerts import ANOMALY_RULE
from pipeline.stages.detect.stage import calibrate_batch_score
from registry.loading import load_version
from registry.names import tenant_model
from registry.tags import CHALLENGER, TAG_SET_AT
from storage.connect import count_rows
from storage.sink import Sink
from storage.tenants import create_tenant
from tests.integration.api_support import Api, hdr, make_key
from tests.integration.conftest import nab_dir, produce_sim, settings_env, wait_for


@pytest.fixture(scope="module")
def store(mlflow_settings):
    return mlflow_settings.model_copy(update={"model_name": f"shadow-{uuid.uuid4().hex[:8]}"})


#: the tenant whose registered model the module's versions are (each test creates it)
TENANT = f"sh{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registry(store):
    """Two registered versions: ``champion`` = v1, ``challenger`` = v2; returns (v1, v2)."""
    from registry.aliases import promote
    from registry.client import client
    from training import datasets
    from training.train import TrainConfig, train_and_register

    ds = datasets.from_csv(nab_dir() / "data" / "artificialWithAnomaly", nab_dir() / "windows.json")
    v1 = train_and_register(
        store, ds, TrainConfig(params={"n_estimators": 30}), promote=False, tenant=TENANT
    ).version
    # a trigger-happy challenger: half of the training windows already reach its 0.5
    v2 = train_and_register(
        store, ds, TrainConfig(family="robust_z", quantile=0.51), promote=False, tenant=TENANT
    ).version
    c = client(store)
    name = tenant_model(store, TENANT)
    promote(c, name, v1, reason="test: champion")
    c.set_registered_model_alias(name, CHALLENGER, str(v2))
    c.set_registered_model_tag(name, TAG_SET_AT.format(alias=CHALLENGER), repr(time.time()))
    return str(v1), str(v2)


def test_start_watcher_honours_the_settings(base_settings):
    from registry.watcher import start_watcher

    assert (
        start_watcher(base_settings.model_copy(update={"shadow_scoring": False}), CHALLENGER)
        is None
    )
    assert (
        start_watcher(base_settings.model_copy(update={"champion_poll_s": 0.0}), CHALLENGER) is None
    )


@pytest.mark.parametrize(
    "chains",
    [("normalize,enrich,detect,sink",), ("normalize,enrich,detect", "sink")],
    ids=["one", "split"],
)
def test_worker_scores_challenger_in_shadow_without_alerting_on_it(
    settings, conn, store, registry, start_worker, chains
):
    """``split``: the shadow scores travel on signals.score.v1 to a separate sink worker."""
    from registry.client import client

    v1, v2 = registry
    tenant = TENANT
    create_tenant(conn, tenant)
    c = client(store)
    s = settings.model_copy(
        update={
            "mlflow_database": store.mlflow_database,
            "model_name": store.model_name,
            "mlflow_artifacts": store.mlflow_artifacts,
            "champion_poll_s": 0.5,
            "window_s": 20.0,
            "allowed_lateness_s": 0.0,
        }
    )
    workers = [start_worker(chain, s) for chain in chains]
    w = workers[0]
    assert w.worker.watcher.wait_for(v1, 30, tenant=tenant), w.worker.watcher.last_error
    assert w.worker.shadow_watcher.wait_for(v2, 30, tenant=tenant), (
        w.worker.shadow_watcher.last_error
    )

    _, sent = produce_sim(s, tenant, hosts=5, ticks=200, seed=4, anomaly_rate=0.03)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == sent,
        90,
        what="all metrics stored",
    )
    # windows closed by the last events: 5 hosts x 4 metrics x (2000 s / 20 s) minus the open ones
    wait_for(
        lambda: count_rows(conn, "scores", "tenant_id = %s", (tenant,)) >= 5 * 4 * 95,
        30,
        what="the windows scored",
    )

    # one snapshot: every scored window has exactly one shadow row, and only that
    unmatched, n_scores, n_shadow = conn.execute(
        "SELECT count(*) FILTER (WHERE s.tenant_id IS NULL OR h.tenant_id IS NULL),"
        " count(s.tenant_id), count(h.tenant_id)"
        " FROM (SELECT * FROM scores WHERE tenant_id = %(t)s) s"
        " FULL JOIN (SELECT * FROM shadow_scores WHERE tenant_id = %(t)s) h"
        " USING (tenant_id, host, metric, window_start)",
        {"t": tenant},
    ).fetchone()
    assert unmatched == 0 and n_scores == n_shadow >= 5 * 4 * 95

    versions = conn.execute(
        "SELECT DISTINCT model_version FROM scores WHERE tenant_id = %s", (tenant,)
    )
    assert {r[0] for r in versions} == {v1}
    shadow = conn.execute(
        "SELECT DISTINCT model_version, champion_version FROM shadow_scores WHERE tenant_id = %s",
        (tenant,),
    ).fetchall()
    assert shadow == [(v2, v1)]
    # the champion's side of each shadow row is the batch component of the stored score, and the
    # stored score never comes from the challenger (it is the ensemble's and the champion's)
    bad = conn.execute(
        "SELECT count(*) FROM shadow_scores h"
        " JOIN scores s USING (tenant_id, host, metric, window_start)"
        " WHERE h.tenant_id = %s AND (h.window_end <> s.window_end"
        " OR h.champion_score IS DISTINCT FROM (s.components->>'batch')::float8"
        " OR s.components ? 'shadow' OR s.score < h.champion_score - 1e-4)",
        (tenant,),
    ).fetchone()[0]
    assert bad == 0
    # and the shadow scores are v2's: re-score the stored features with both registry versions
    cols = ("count", "mean", "std", "min", "max", "last", "slope", "change", "gap")
    rows = conn.execute(
        "SELECT h.raw, h.score, h.champion_score, "
        + ", ".join(f"f.{k}" for k in cols)
        + " FROM shadow_scores h JOIN features f USING (tenant_id, host, metric, window_start)"
        " WHERE h.tenant_id = %s",
        (tenant,),
    ).fetchall()
    assert len(rows) == n_shadow
    arr = np.array(rows, dtype=np.float64)
    X = {k: arr[:, 3 + j] for j, k in enumerate(cols)}
    X["count"] = X["count"].astype(np.int64)
    X["series"] = np.zeros(len(arr), np.int64)
    raw2 = load_version(c, tenant_model(store, tenant), v2).score_many(X)
    raw1 = load_version(c, tenant_model(store, tenant), v1).score_many(X)
    np.testing.assert_allclose(arr[:, 0], raw2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(arr[:, 1], calibrate_batch_score(raw2), atol=1e-12)
    np.testing.assert_allclose(arr[:, 2], np.round(calibrate_batch_score(raw1), 4), atol=1e-9)
    assert np.abs(raw1 - raw2).max() > 1e-3, "v1 and v2 should be different models"

    # the challenger flags most windows; had its scores reached severity, they would all alert
    flagged, flagged_ok = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE s.severity = 'ok') FROM shadow_scores h"
        " JOIN scores s USING (tenant_id, host, metric, window_start)"
        " WHERE h.tenant_id = %s AND h.score >= 0.5",
        (tenant,),
    ).fetchone()
    assert flagged > n_shadow // 4 and flagged_ok > n_shadow // 4
    alerts = conn.execute(
        "SELECT rule, model_version FROM alerts WHERE tenant_id = %s", (tenant,)
    ).fetchall()
    assert alerts, "the injected anomalies should have raised alerts"
    assert all(v != v2 for _, v in alerts)
    assert {v for r, v in alerts if r == ANOMALY_RULE} <= {v1}
    events = conn.execute(
        "SELECT count(*) FROM alert_events WHERE tenant_id = %s AND payload->>'model_version' = %s",
        (tenant, v2),
    ).fetchone()[0]
    assert events == 0
    assert all(x.thread.is_alive() and x.error is None for x in workers)
    assert w.worker.stages.detect.shadow_failures == 0

    # /models: the challenger's shadow statistics for the key's tenant, beside the champion's
    stats = conn.execute(
        "SELECT count(*), avg(score), avg((score >= 0.5)::int)::float8, avg(champion_score)"
        " FROM shadow_scores WHERE tenant_id = %s",
        (tenant,),
    ).fetchone()
    other = f"tn{uuid.uuid4().hex[:8]}"
    create_tenant(conn, other)
    api = Api(s, stub_models=False)
    try:
        r = httpx.get(api.url + "/models", headers=hdr(make_key(conn, tenant)), timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["champion"]["version"] == v1
        ch = body["challenger"]
        assert ch["version"] == v2 and ch["shadow"] is not None
        sh = ch["shadow"]
        assert sh["hours"] == 24 and sh["threshold"] == 0.5
        assert sh["windows"] >= stats[0]  # the worker may have closed more windows since
        assert sh["challenger"]["versions"] == [v2]
        assert sh["challenger"]["mean_score"] == pytest.approx(stats[1], abs=0.02)
        assert sh["challenger"]["high_fraction"] == pytest.approx(stats[2], abs=0.02)
        assert sh["challenger"]["high_fraction"] > sh["champion"]["high_fraction"] + 0.2
        assert sh["champion"]["versions"] == [v1] and sh["champion"]["windows"] == sh["windows"]
        assert sh["champion"]["mean_score"] == pytest.approx(stats[3], abs=0.02)
        assert sh["only_challenger_high"] > 0  # v2 scores ~2/3 of windows high, v1 hardly any
        assert sh["feedback"]["true_positive"] == {
            "alerts": 0,
            "scored": 0,
            "challenger_high": 0,
            "champion_high": 0,
        }
        # another tenant's key sees its own registered model: none, so no shadow statistics
        r = httpx.get(api.url + "/models", headers=hdr(make_key(conn, other)), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["champion"] is None and r.json()["challenger"] is None
        assert r.json()["tenant"] == other
    finally:
        api.stop()
    # the same statistics for scripts, from training.status on a plain connection
    from training.status import shadow_stats

    st = shadow_stats(conn, tenant, v2)
    assert st["windows"] >= stats[0] and st["champion"]["versions"] == [v1]
    assert st["challenger"]["mean_score"] == pytest.approx(stats[1], abs=0.02)
    # and on the command line: eventops models status --tenant T
    from typer.testing import CliRunner

    from cli.main import app

    r = CliRunner().invoke(app, ["models", "status", "--tenant", tenant], env=settings_env(s))
    assert r.exit_code == 0, r.output
    sh = json.loads(r.stdout)["challenger"]["shadow"]
    assert sh["windows"] >= stats[0] and sh["challenger"]["versions"] == [v2]


def test_replayed_shadow_rows_are_written_once(conn, tenant):
    """The sink's ON CONFLICT path (a replayed batch) stores each shadow row once."""
    from core.batch import MetricBatch
    from pipeline.stages.detect.window_rows import FEATURES, WindowRows

    def obj(xs):
        a = np.empty(len(xs), dtype=object)
        a[:] = xs
        return a

    n = 6
    start = 1.7e9 + 60.0 * np.arange(n)
    f = {k: np.linspace(1, 2, n) for k in FEATURES}
    f["count"] = np.full(n, 6, np.int64)
    rows = WindowRows(
        obj([tenant] * n),
        obj(["h"] * n),
        obj(["m"] * n),
        start,
        start + 60,
        f,
        np.zeros(n),
        obj(["ok"] * n),
        [{"batch": 0.25}] * n,
        np.full(n, np.nan),
        [{}] * n,
        ["1"] * n,
        ["2"] * 4 + [None] * 2,
        np.full(n, 0.75),
        np.linspace(0.5, 0.9, n),
    )
    ids = [f"{tenant}-{i}" for i in range(n)]
    batch = MetricBatch(
        obj(ids),
        obj([tenant] * n),
        obj(["h"] * n),
        obj(["m"] * n),
        np.ones(n),
        start + 1,
        obj(["u"] * n),
        obj([None] * n),
    )
    sink = Sink(conn)
    part = WindowRows(
        *(
            getattr(rows, k)[:3]
            if not isinstance(getattr(rows, k), dict)
            else {c: v[:3] for c, v in rows.features.items()}
            for k in WindowRows.__dataclass_fields__
        )
    )
    sink.write(batch.take(np.arange(3)), windows=part)  # COPY path
    sink.write(batch, windows=rows)  # replay: UniqueViolation, then ON CONFLICT
    got = conn.execute(
        "SELECT model_version, extract(epoch FROM window_start), score, raw, champion_version,"
        " champion_score FROM shadow_scores WHERE tenant_id = %s ORDER BY window_start",
        (tenant,),
    ).fetchall()
    assert len(got) == 4
    assert [g[0] for g in got] == ["2"] * 4
    assert [float(g[1]) for g in got] == start[:4].tolist()
    assert all(g[2] == 0.75 and g[4] == "1" and g[5] == 0.25 for g in got)
    assert [g[3] for g in got] == pytest.approx(np.linspace(0.5, 0.9, n)[:4].tolist())
    assert count_rows(conn, "scores", "tenant_id = %s", (tenant,)) == n


def test_shadow_stats_compare_both_models_on_labelled_alerts(conn, tenant):
    """Per feedback label: the labelled alerts of the day, those with shadow windows in their
    episode, and how many each model scores high; plus the windows only one model scores high."""
    from training.status import shadow_stats

    now = time.time()
    t0 = now - 3600

    def ts(x):
        return datetime.fromtimestamp(x, UTC)

    # series h1/cpu: a confirmed incident (challenger high, champion low) at t0 .. t0+120
    # series h2/cpu: a false alarm both score low; series h3/cpu: a false alarm only the champion
    # scores high; series h4/cpu: a confirmed alert with no shadow window (not "scored")
    shadow = [
        ("h1", t0 - 60, 0.1, 0.1),
        ("h1", t0, 0.9, 0.2),
        ("h1", t0 + 60, 0.7, 0.3),
        ("h2", t0, 0.2, 0.1),
        ("h3", t0, 0.3, 0.8),
        ("h1", t0 + 600, 0.95, 0.9),
    ]
    with conn.transaction():
        for h, w, sc, cp in shadow:
            conn.execute(
                "INSERT INTO shadow_scores (tenant_id, model_version, window_start, host, metric,"
                " window_end, score, champion_version, champion_score)"
                " VALUES (%s, '7', %s, %s, 'cpu', %s, %s, '6', %s)",
                (tenant, ts(w), h, ts(w + 60), sc, cp),
            )
        labels = {
            "h1": "true_positive",
            "h2": "false_positive",
            "h3": "false_positive",
            "h4": "true_positive",
        }
        for h, label in labels.items():
            aid = f"{tenant}-{h}"
            conn.execute(
                "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity, ts_event,"
                " state, opened_at, updated_at, resolved_at)"
                " VALUES (%s, %s, %s, 'cpu', 1, 'warning',"
                " %s, 'resolved', %s, %s, %s)",
                (aid, tenant, h, ts(t0 + 60), ts(t0 + 60), ts(t0 + 120), ts(t0 + 120)),
            )
            # an earlier, superseded label: only the latest one counts
            conn.execute(
                "INSERT INTO feedback (tenant_id, alert_id, label, created_at)"
                " VALUES (%s, %s, %s, %s)",
                (
                    tenant,
                    aid,
                    "false_positive" if label == "true_positive" else "true_positive",
                    ts(now - 60),
                ),
            )
            conn.execute(
                "INSERT INTO feedback (tenant_id, alert_id, label) VALUES (%s, %s, %s)",
                (tenant, aid, label),
            )
    st = shadow_stats(conn, tenant, "7")
    assert st["windows"] == len(shadow)
    assert st["only_challenger_high"] == 2 and st["only_champion_high"] == 1
    assert st["feedback"] == {
        "true_positive": {"alerts": 2, "scored": 1, "challenger_high": 1, "champion_high": 0},
        "false_positive": {"alerts": 2, "scored": 2, "challenger_high": 0, "champion_high": 1},
    }
    # another version, or another tenant's feedback, counts nothing
    other = shadow_stats(conn, tenant, "8")
    assert other["windows"] == 0 and other["feedback"]["true_positive"]["scored"] == 0
    assert other["feedback"]["true_positive"]["alerts"] == 2  # the labels exist; no windows of v8
