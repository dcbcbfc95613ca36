"""SSE resume: a client reconnecting with ``Last-Event-ID`` gets exactly the alerts it missed.

Alerts come from the real embedded pipeline (raw events → normalize → enrich → detect → sink →
in-process bus), the way ``make demo`` produces them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipeline import db
from pipeline.runner import Bus, EmbeddedPipeline
from serving.broadcast import Broadcaster
from tests.integration.api_support import Api, alert_event, hdr, make_key, raw_event, store_alerts
from tests.integration.conftest import SseClient, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def env(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db, "sse_heartbeat_s": 0.5})
    conn = db.connect(s, autocommit=True)
    tenant, other = f"tr{uuid.uuid4().hex[:8]}", f"to{uuid.uuid4().hex[:8]}"
    db.create_tenant(conn, tenant)
    db.create_tenant(conn, other)
    bus = Bus()
    pipe = EmbeddedPipeline(s, bus, source=f"resume-{uuid.uuid4().hex[:6]}")
    api = Api(s, bus=bus)
    yield s, conn, tenant, other, pipe, api, make_key(conn, tenant)
    api.stop()
    pipe.close()
    conn.close()


def open_alerts(pipe: EmbeddedPipeline, tenant: str, hosts: list[str]) -> list[int]:
    """Feed one critical cpu sample per host: one ``open`` alert event each; returns their seqs."""
    _, dead, stored = pipe.feed([raw_event(tenant, h, 95.0) for h in hosts])
    assert not dead
    assert len(stored) == len(hosts)
    return [a["seq"] for a in stored]


def seqs(c: SseClient) -> list[int]:
    return [int(e["id"]) for e in c.events]


def test_reconnect_with_last_event_id_gets_exactly_the_missed_alerts(env):
    s, conn, tenant, other, pipe, api, key = env
    url = api.url + "/alerts/stream"
    c1 = SseClient(url, headers=hdr(key))
    assert c1.connected.wait(10)
    first = open_alerts(pipe, tenant, [f"h{i}" for i in range(3)])
    wait_for(lambda: len(c1.events) == 3, 10, what="first three alerts")
    assert seqs(c1) == first
    c1.close()
    last = c1.events[-1]["id"]

    missed = open_alerts(pipe, tenant, [f"h{i}" for i in range(3, 7)])
    open_alerts(pipe, other, ["h0", "h1"])  # another tenant's, never replayed to this key
    c2 = SseClient(url, headers={**hdr(key), "Last-Event-ID": last})
    assert c2.connected.wait(10)
    wait_for(lambda: len(c2.events) >= 4, 10, what="replayed alerts")
    live = open_alerts(pipe, tenant, ["h7", "h8"])
    wait_for(lambda: len(c2.events) >= 6, 10, what="live alerts after replay")
    c2.close()
    assert seqs(c2) == missed + live
    assert {e["data"]["tenant_id"] for e in c2.events} == {tenant}
    assert [e["data"]["host"] for e in c2.events] == [f"h{i}" for i in range(3, 9)]


def test_resume_while_alerts_keep_arriving_has_no_gap_and_no_duplicate(env):
    """The hand-over from replay to live happens while the pipeline is publishing."""
    s, conn, tenant, other, pipe, api, key = env
    start = open_alerts(pipe, tenant, ["w0"])[0]
    done = threading.Event()

    def produce():
        for i in range(1, 41):
            open_alerts(pipe, tenant, [f"w{i}"])
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    wait_for(lambda: db.count_rows(conn, "alert_events", "tenant_id = %s", (tenant,)) >= 10, 10)
    c = SseClient(api.url + f"/alerts/stream?last_event_id={start}&key={key}")
    t.join(30)
    assert done.is_set()
    expected = [r[0] for r in conn.execute(
        "SELECT seq FROM alert_events WHERE tenant_id = %s AND seq > %s ORDER BY seq", (tenant, start))]
    assert len(expected) == 40
    wait_for(lambda: len(c.events) >= 40, 15, what="all 40 alerts")
    c.close()
    assert sorted(seqs(c)) == expected
    assert len(seqs(c)) == len(set(seqs(c)))


def test_bad_last_event_id_is_400(env):
    s, conn, tenant, other, pipe, api, key = env
    r = httpx.get(api.url + "/alerts/stream", headers={**hdr(key), "Last-Event-ID": "abc"})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]


def test_overflowed_client_queue_is_refilled_from_postgres(env):
    """A client too slow for its bounded queue loses nothing: the gap is read back from the DB."""
    s, conn, tenant, other, pipe, api, key = env
    from psycopg_pool import AsyncConnectionPool

    from serving.sse import alert_stream

    class Req:
        async def is_disconnected(self):
            return False

    async def run() -> list[int]:
        async with AsyncConnectionPool(s.pg_dsn(), min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
            b = Broadcaster(queue_size=2, loop=asyncio.get_running_loop())
            sub = b.subscribe(tenant)
            base = open_alerts(pipe, tenant, ["o0"])[0]
            gen = alert_stream(Req(), pool, b, sub, tenant, base, 5.0, 1000)
            assert (await anext(gen)).startswith(b"retry")
            ts = datetime.now(UTC)
            _, stored = store_alerts(s, [alert_event(tenant, f"o{i}", ts=ts + timedelta(seconds=i))
                                         for i in range(1, 11)])
            for ev in stored:
                b._fanout(ev)  # 10 events into a queue of 2: 8 dropped
            assert sub.dropped == 8
            got = []
            while len(got) < 10:
                chunk = await asyncio.wait_for(anext(gen), 5)
                got.append(int(chunk.split(b"\n", 1)[0].removeprefix(b"id: ")))
            await gen.aclose()
            return got, [e["seq"] for e in stored]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:  # a loop of its own, whatever else runs in this thread
        got, want = ex.submit(asyncio.run, run()).result(timeout=30)
    assert got == want
