"""The MVP quickstart, replayed through real Kafka and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import orjson

from core.records import AlertEvent
from pipeline import kafka as kq
from serving.auth import create_key
from storage.inventory import set_inventory
from storage.tenants import create_tenant
from tests.integration.conftest import SseClient, consume_all, wait_for


def key_for(conn, tenant: str, scope: str = "read") -> dict[str, str]:
    """Headers carrying a fresh API key of ``tenant`` (every route but health needs one)."""
    return {"Authorization": f"Bearer {create_key(conn, tenant, scope)[1]}"}


def sample_event(tenant: str, value: float = 92, **kw) -> bytes:
    ev = {
        "tenant_id": tenant,
        "host": "host-a",
        "metric": "cpu_load",
        "value": value,
        "ts_event": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "unit": "percent",
        "tags": {"dc": "eu1"},
    }
    ev.update(kw)
    return orjson.dumps(ev)


def test_mvp_quickstart_event_to_metrics_alert_topic_and_two_sse_clients(
    settings, conn, tenant, start_worker, api_server
):
    set_inventory(conn, tenant, "host-a", {"team": "payments", "env": "prod"})
    api = api_server()
    auth = key_for(conn, tenant)
    clients = [
        SseClient(f"{api.url}/alerts/stream?tenant={tenant}", headers=auth) for _ in range(2)
    ]
    for c in clients:
        assert c.connected.wait(10), "SSE client did not connect"
    start_worker()

    p = kq.producer(settings)
    kq.produce_all(p, settings.topic_raw, [sample_event(tenant)], [f"{tenant}|host-a"])
    kq.flush(p)

    row = wait_for(
        lambda: conn.execute(
            "SELECT value, tags, event_id FROM metrics WHERE tenant_id = %s", (tenant,)
        ).fetchone(),
        30,
        what="metrics row",
    )
    assert row[0] == 92
    assert row[1] == {"dc": "eu1", "team": "payments", "env": "prod"}
    assert row[2] == f"{settings.topic_raw}:" + row[2].split(":", 1)[1]  # derived from offset

    alert = wait_for(
        lambda: conn.execute(
            "SELECT severity, state, value, host, metric FROM alerts WHERE tenant_id = %s",
            (tenant,),
        ).fetchone(),
        30,
        what="alerts row",
    )
    assert alert == ("critical", "open", 92, "host-a", "cpu_load")

    msgs = consume_all(settings, settings.topic_alert, 1)
    on_topic = orjson.loads(msgs[0].value())
    assert on_topic["tenant_id"] == tenant and on_topic["severity"] == "critical"
    assert on_topic["kind"] == "open"

    for c in clients:
        wait_for(lambda c=c: c.events, 15, what="SSE alert")
    for c in clients:
        assert len(c.events) == 1
        assert c.events[0]["event"] == "alert"
        assert c.events[0]["data"]["alert_id"] == on_topic["alert_id"]
        assert c.events[0]["id"] == str(on_topic["seq"])
        # the frame (stored payload) and the topic's record are the same alert event
        assert c.events[0]["data"] == on_topic
        assert AlertEvent.from_dict(c.events[0]["data"]) == AlertEvent.from_dict(on_topic)
        c.close()

    # the MVP's read endpoints
    r = httpx.get(
        f"{api.url}/metrics/cpu", params={"tenant": tenant, "host": "host-a"}, headers=auth
    )
    assert r.status_code == 200 and r.json()[0]["value"] == 92
    r = httpx.get(
        f"{api.url}/metrics/latest", params={"tenant": tenant, "metric": "cpu_load"}, headers=auth
    )
    assert r.status_code == 200 and [x["host"] for x in r.json()] == ["host-a"]
    r = httpx.get(f"{api.url}/alerts", params={"tenant": tenant}, headers=auth)
    assert r.status_code == 200 and r.json()[0]["severity"] == "critical"


def test_sse_clients_only_see_their_tenant(settings, conn, start_worker, api_server):
    a, b = f"ta{time.time_ns() % 10**8}", f"tb{time.time_ns() % 10**8}"
    create_tenant(conn, a)
    create_tenant(conn, b)
    api = api_server()
    ca = SseClient(f"{api.url}/alerts/stream?tenant={a}", headers=key_for(conn, a))
    cb = SseClient(f"{api.url}/alerts/stream?tenant={b}", headers=key_for(conn, b))
    assert ca.connected.wait(10) and cb.connected.wait(10)
    start_worker()
    p = kq.producer(settings)
    kq.produce_all(
        p,
        settings.topic_raw,
        [sample_event(a), sample_event(b, host="host-b")],
        [f"{a}|host-a", f"{b}|host-b"],
    )
    kq.flush(p)
    wait_for(lambda: ca.events and cb.events, 30, what="both tenants' alerts")
    time.sleep(0)  # no extra waiting: the assertion below is on what arrived
    assert {e["data"]["tenant_id"] for e in ca.events} == {a}
    assert {e["data"]["tenant_id"] for e in cb.events} == {b}
    ca.close()
    cb.close()


def test_api_rejects_bad_parameters_with_4xx(settings, conn, tenant, api_server):
    api = api_server()
    auth = key_for(conn, tenant)
    for path, params in [
        ("/metrics/cpu", {"tenant": tenant}),
        ("/metrics/cpu", {"tenant": "a b", "host": "h"}),
        ("/metrics/cpu", {"tenant": tenant, "host": "h", "limit": "x"}),
        ("/metrics/latest", {}),
        ("/alerts", {"tenant": tenant, "state": "bogus"}),
    ]:
        r = httpx.get(api.url + path, params=params, headers=auth)
        assert 400 <= r.status_code < 500, (path, params, r.status_code)
        assert r.json()["detail"]
    # and without a key: 401, whatever the parameters
    r = httpx.get(api.url + "/metrics/cpu", params={"tenant": tenant, "host": "h"})
    assert r.status_code == 401 and r.json()["detail"]
