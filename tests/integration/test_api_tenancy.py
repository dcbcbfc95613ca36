"""Tenant isolation over every endpoint and both SSE streams, plus authentication and scopes.

Tenants A and B share a host name (``host-a``) and each has a host of its own; every row of B
carries a marker string, so any response to A that contains it is a leak.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg.types.json import Jsonb

from core.silences import new_silence
from pipeline.embedded import Bus
from serving import auth
from storage import notify as notify_repo
from storage.connect import connect, count_rows
from storage.tenants import create_tenant, revoke_key
from tests.integration.api_support import Api, alert_event, hdr, make_key, seed, store_alerts
from tests.integration.conftest import SseClient, wait_for

pytestmark = pytest.mark.integration


class World:
    pass


@pytest.fixture(scope="module")
def world(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db, "sse_heartbeat_s": 0.5})
    w = World()
    w.s = s
    sfx = uuid.uuid4().hex[:6]
    w.a, w.b = f"ta{sfx}", f"tb{sfx}"
    w.mark_a, w.mark_b = f"MARKA{sfx}", f"MARKB{sfx}"
    conn = connect(s, autocommit=True)
    for t in (w.a, w.b):
        create_tenant(conn, t)
    w.seed_a = seed(s, conn, w.a, w.mark_a, hosts=("host-a", f"only-{w.a}"))
    w.seed_b = seed(s, conn, w.b, w.mark_b, hosts=("host-a", f"only-{w.b}"))
    w.keys = {(t, sc): make_key(conn, t, sc) for t in (w.a, w.b) for sc in auth.SCOPES}
    w.silence = {}
    for t, mark in ((w.a, w.mark_a), (w.b, w.mark_b)):
        sil = new_silence(t, ["host=nothing"], now=time.time(), duration_s=86400, comment=mark)
        w.silence[t] = notify_repo.add_silence(conn, sil).id
        notify_repo.add_channel(
            conn, t, "hook", "webhook", f"http://127.0.0.1:9/{mark}", "whsec_" + "A" * 43 + "=", {}
        )
    w.conn = conn
    w.bus = Bus()
    w.api = Api(s, bus=w.bus)
    yield w
    w.api.stop()
    conn.close()


def ids(w: World, tenant: str) -> dict:
    sd = w.seed_a if tenant == w.a else w.seed_b
    return {
        "host": sd["hosts"][1],
        "metric": "cpu_load",
        "alert": sd["alerts"][0],
        "incident": f"inc-{sd['alerts'][0]}",
        "source": sd["hosts"][1],
        "silence": w.silence[tenant],
    }


# (method, path template, scope, kind, json body); kind "id" = names an object of a tenant
ENDPOINTS = [
    ("GET", "/metrics/cpu?host={host}", "read", "list", None),
    ("GET", "/metrics/latest?metric=cpu_load", "read", "list", None),
    ("GET", "/metrics?host={host}&metric={metric}", "read", "id", None),
    ("GET", "/series", "read", "list", None),
    ("GET", "/series?q=only", "read", "list", None),
    ("GET", "/series/{host}/{metric}", "read", "id", None),
    ("GET", "/series/{host}/{metric}/scores", "read", "id", None),
    ("GET", "/series/{host}/{metric}/features", "read", "id", None),
    ("GET", "/hosts", "read", "list", None),
    ("GET", "/hosts/{host}", "read", "id", None),
    ("GET", "/alerts", "read", "list", None),
    ("GET", "/alerts?state=open&limit=1", "read", "list", None),
    ("GET", "/alerts/{alert}", "read", "id", None),
    ("GET", "/alerts/{alert}/feedback", "read", "id", None),
    ("POST", "/alerts/{alert}/feedback", "read", "id", {"label": "false_positive", "comment": "x"}),
    ("GET", "/feedback", "read", "list", None),
    ("GET", "/incidents", "read", "list", None),
    ("GET", "/incidents/{incident}", "read", "id", None),
    ("GET", "/inventory", "read", "list", None),
    ("GET", "/inventory/{source}", "read", "id", None),
    ("DELETE", "/inventory/{source}", "admin", "id", None),
    ("GET", "/models", "read", "list", None),
    ("GET", "/channels", "read", "list", None),
    ("GET", "/silences", "read", "list", None),
    ("GET", "/silences?expired=true", "read", "list", None),
    ("GET", "/silences/{silence}", "read", "id", None),
    ("GET", "/alerts/{alert}/deliveries", "read", "id", None),
]
STREAMS = [
    ("GET", "/alerts/stream", "read", "list", None),
    ("GET", "/series/{host}/{metric}/scores/stream", "read", "id", None),
]
ALL = ENDPOINTS + STREAMS
WRITES_ELSEWHERE = [  # another tenant's name: PUT creates the caller's own object, PATCH finds none
    ("PUT", "/inventory/{source}", "admin", "upsert", {"tags": {"team": "x"}}),
    ("PATCH", "/inventory/{source}", "admin", "merge", {"tags": {"team": "y"}}),
]


def _id(e) -> str:
    return f"{e[0]} {e[1]}"


@contextmanager
def call(w: World, ep, tenant_of_ids: str, key: str | None, extra: str = "", headers=None):
    method, tmpl, _, _, body = ep
    path = tmpl.format(**ids(w, tenant_of_ids))
    if extra:
        path += ("&" if "?" in path else "?") + extra
    h = dict(headers or {})
    if key:
        h.update(hdr(key))
    with (
        httpx.Client(base_url=w.api.url, timeout=10) as c,
        c.stream(method, path, headers=h, json=body) as r,
    ):
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            r.body = ""
        else:
            r.read()
            r.body = r.text
        yield r


@pytest.mark.parametrize("ep", ALL + WRITES_ELSEWHERE, ids=_id)
def test_no_key_or_bad_key_is_401(world, ep):
    w = world
    for key in (None, "nonsense", "eo_000000000000_" + "x" * 43):
        with call(w, ep, w.a, key) as r:
            assert r.status_code == 401, (key, r.status_code, r.body)
            assert "detail" in r.json()


def test_revoked_key_is_401(world):
    w = world
    key = make_key(w.conn, w.a, "read")
    assert httpx.get(w.api.url + "/alerts", headers=hdr(key)).status_code == 200
    key_id = key.split("_")[1]
    assert revoke_key(w.conn, key_id)
    wait_for(
        lambda: httpx.get(w.api.url + "/alerts", headers=hdr(key)).status_code == 401,
        w.api.app.state.serving.auth_cache_s + 5,
        what="revocation to take effect",
    )


@pytest.mark.parametrize("ep", ALL, ids=_id)
def test_own_tenant_is_served_and_never_sees_the_other(world, ep):
    w = world
    method, tmpl, scope, _, _ = ep
    key = w.keys[(w.a, "admin" if scope == "admin" else "read")]
    if method == "DELETE":  # make something of A's own to delete
        w.conn.execute(
            "INSERT INTO inventory (tenant_id, source_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (w.a, ids(w, w.a)["source"]),
        )
    with call(w, ep, w.a, key) as r:
        assert 200 <= r.status_code < 300, (r.status_code, r.body)
        assert w.mark_b not in r.body and w.b not in r.body
    # the MVP's tenant parameter: the key's own tenant is fine, any other is unknown
    if method == "GET":
        with call(w, ep, w.a, key, extra=f"tenant={w.a}") as r:
            assert r.status_code == 200
        with call(w, ep, w.a, key, extra=f"tenant={w.b}") as r:
            assert r.status_code == 404, r.body


@pytest.mark.parametrize("ep", [e for e in ALL if e[3] == "id"], ids=_id)
def test_other_tenants_ids_answer_404(world, ep):
    w = world
    key = w.keys[(w.a, "admin")]
    with call(w, ep, w.b, key) as r:
        assert r.status_code == 404, (r.status_code, r.body)
        assert w.mark_b not in r.body
    # nothing of B changed (feedback, inventory)
    assert count_rows(w.conn, "feedback", "tenant_id = %s", (w.b,)) == 1
    assert w.conn.execute(
        "SELECT 1 FROM inventory WHERE tenant_id = %s AND source_id = %s",
        (w.b, ids(w, w.b)["source"]),
    ).fetchone()


@pytest.mark.parametrize("ep", WRITES_ELSEWHERE, ids=_id)
def test_writes_with_another_tenants_name_touch_only_the_callers_tenant(world, ep):
    w = world
    src = ids(w, w.b)["source"]
    before = w.conn.execute(
        "SELECT tags FROM inventory WHERE tenant_id = %s AND source_id = %s", (w.b, src)
    ).fetchone()
    with call(w, ep, w.b, w.keys[(w.a, "admin")]) as r:
        assert r.status_code == (200 if ep[3] == "upsert" else 404) and w.mark_b not in r.body
    after = w.conn.execute(
        "SELECT tags FROM inventory WHERE tenant_id = %s AND source_id = %s", (w.b, src)
    ).fetchone()
    assert before == after
    w.conn.execute("DELETE FROM inventory WHERE tenant_id = %s AND source_id = %s", (w.a, src))


@pytest.mark.parametrize("ep", ALL + WRITES_ELSEWHERE, ids=_id)
def test_wrong_scope_is_403(world, ep):
    w = world
    scope = ep[2]
    wrong = ["ingest"] if scope == "read" else ["ingest", "read"]
    for sc in wrong:
        with call(w, ep, w.a, w.keys[(w.a, sc)]) as r:
            assert r.status_code == 403, (sc, r.status_code, r.body)


def test_ingest_scope_and_tenant(world):
    w = world
    url = w.api.url + "/ingest"
    ev = {
        "host": "host-i",
        "metric": "cpu_load",
        "value": 12.0,
        "ts_event": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    for sc in ("read", "admin"):
        assert httpx.post(url, json=[ev], headers=hdr(w.keys[(w.a, sc)])).status_code == 403
    r = httpx.post(url, json=[{**ev, "tenant_id": w.b}], headers=hdr(w.keys[(w.a, "ingest")]))
    assert r.status_code == 403
    r = httpx.post(url, json=[ev], headers=hdr(w.keys[(w.a, "ingest")]), timeout=30)
    assert r.status_code == 202, r.text
    assert {k: r.json()[k] for k in ("accepted", "mode", "stored", "dead_lettered")} == {
        "accepted": 1,
        "mode": "embedded",
        "stored": 1,
        "dead_lettered": 0,
    }
    wait_for(
        lambda: w.conn.execute(
            "SELECT 1 FROM metrics WHERE tenant_id = %s AND host = 'host-i'", (w.a,)
        ).fetchone(),
        10,
        what="ingested row",
    )


def test_alert_stream_replays_and_delivers_only_the_keys_tenant(world):
    w = world
    url = w.api.url + "/alerts/stream"
    ca = SseClient(url, headers={**hdr(w.keys[(w.a, "read")]), "Last-Event-ID": "0"})
    cq = SseClient(url + f"?key={w.keys[(w.a, 'read')]}")  # EventSource style
    assert ca.connected.wait(10) and cq.connected.wait(10)
    replay = wait_for(lambda: len(ca.events) >= 2 and ca.events, 10, what="replay")
    ts = datetime.now(UTC)
    _, stored = store_alerts(
        w.s,
        [
            alert_event(w.b, "host-a", ts=ts, marker=w.mark_b),
            alert_event(w.a, "host-a", ts=ts + timedelta(seconds=1), marker=w.mark_a),
        ],
    )
    for ev in stored:
        w.bus.publish(ev)
    wait_for(lambda: any(e["data"]["alert_id"] == stored[1].alert_id for e in ca.events), 10)
    wait_for(lambda: cq.events, 10)
    for c in (ca, cq):
        c.close()
        assert {e["data"]["tenant_id"] for e in c.events} == {w.a}
        assert all(w.mark_b not in str(e["data"]) for e in c.events)
    assert [e["data"]["alert_id"] for e in cq.events] == [stored[1].alert_id]
    assert len(replay) >= 2


def test_score_stream_only_for_own_series(world):
    w = world
    a_series = f"{w.seed_a['hosts'][1]}/cpu_load"
    url = f"{w.api.url}/series/{a_series}/scores/stream"
    c = SseClient(url, headers=hdr(w.keys[(w.a, "read")]))
    assert c.connected.wait(10)
    now = datetime.now(UTC) + timedelta(minutes=5)
    for t, h in ((w.b, w.seed_b["hosts"][1]), (w.b, "host-a"), (w.a, w.seed_a["hosts"][1])):
        w.conn.execute(
            "INSERT INTO scores (tenant_id, host, metric, window_start, window_end, score,"
            " severity, explanation) VALUES (%s, %s, 'cpu_load', %s, %s, 0.9, 'critical', %s)",
            (t, h, now, now + timedelta(minutes=1), Jsonb({"who": t})),
        )
    wait_for(lambda: c.events, 10, what="score event")
    c.close()
    assert len(c.events) == 1 and c.events[0]["event"] == "score"
    assert c.events[0]["data"]["explanation"] == {"who": w.a}
    assert int(c.events[0]["id"]) == int(now.timestamp() * 1000)
