"""The embedded runner: same stages, in memory, dead letters in PostgreSQL, alerts on the bus."""

from __future__ import annotations

import time

from core.records import AlertEvent
from pipeline.embedded import Bus, EmbeddedPipeline
from pipeline.simulate import Simulator
from storage.connect import count_rows


def test_embedded_pipeline_stores_simulated_metrics_and_alerts(settings, conn, tenant):
    bus = Bus()
    seen: list[AlertEvent] = []
    bus.subscribe(seen.append)
    pipe = EmbeddedPipeline(settings, bus)
    sim = Simulator(
        hosts=5, tenant=tenant, seed=3, interval=10, start=time.time() - 3600, anomaly_rate=0.05
    )
    total = 0
    for evs in sim.events(ticks=300):
        pipe.feed(evs + [b"{oops"])
        total += len(evs)
    pipe.close()
    assert count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == total
    assert count_rows(conn, "dead_letters", "reason = 'bad_json'") >= 300
    assert any(a.kind == "cpu_spike" for a in sim.anomalies)
    alerts = count_rows(conn, "alerts", "tenant_id = %s", (tenant,))
    assert alerts > 0
    opened = [e for e in seen if e.kind == "open"]
    assert len(opened) == alerts and all(e.tenant_id == tenant for e in seen)


def test_embedded_replay_writes_nothing_twice(settings, conn, tenant):
    sim = Simulator(
        hosts=3, tenant=tenant, seed=5, interval=10, start=time.time() - 600, anomaly_rate=0.2
    )
    evs = [e for tick in sim.events(ticks=40) for e in tick]
    for _ in range(2):
        pipe = EmbeddedPipeline(settings)
        pipe.feed(evs)
        pipe.close()
    total, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM metrics WHERE tenant_id = %s", (tenant,)
    ).fetchone()
    assert total == distinct == len(evs)
    a1 = count_rows(conn, "alert_events", "tenant_id = %s", (tenant,))
    assert a1 > 0


def test_window_features_api_serves_the_cross_metric_columns(settings, conn, tenant, api_server):
    import httpx

    from tests.integration.api_support import hdr, make_key

    sim = Simulator(
        hosts=2, tenant=tenant, seed=9, interval=10, start=time.time() - 1800, anomaly_rate=0.0
    )
    pipe = EmbeddedPipeline(settings)
    for evs in sim.events(ticks=150):
        pipe.feed(evs)
    pipe.close()
    api = api_server()
    r = httpx.get(
        f"{api.url}/series/{sim.names[0]}/cpu_load/features", headers=hdr(make_key(conn, tenant))
    )
    assert r.status_code == 200, r.text
    rows = r.json()
    assert len(rows) >= 20
    # every closed window of a 4-metric host: the host reported 4 metrics, the others' z are finite
    assert {w["host_metrics"] for w in rows} == {4}
    assert all(
        0 <= w["host_deviating"] <= 3 and w["host_max_z"] >= w["host_mean_z"] >= 0 for w in rows
    )
