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

from core.records import AlertEvent
from pipeline.embedded import Bus, EmbeddedPipeline
from serving.broadcast import Broadcaster
from storage.connect import connect, count_rows
from storage.tenants import create_tenant
from tests.integration.api_support import Api, alert_event, hdr, make_key, raw_event, store_alerts
from tests.integration.conftest import SseClient, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def env(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db, "sse_heartbeat_s": 0.5})
    conn = connect(s, autocommit=True)
    tenant, other = f"tr{uuid.uuid4().hex[:8]}", f"to{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    create_tenant(conn, other)
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
    return [a.seq for a in stored]


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
    wait_for(lambda: count_rows(conn, "alert_events", "tenant_id = %s", (tenant,)) >= 10, 10)
    c = SseClient(api.url + f"/alerts/stream?last_event_id={start}&key={key}")
    t.join(30)
    assert done.is_set()
    expected = [
        r[0]
        for r in conn.execute(
            "SELECT seq FROM alert_events WHERE tenant_id = %s AND seq > %s ORDER BY seq",
            (tenant, start),
        )
    ]
    assert len(expected) == 40
    wait_for(lambda: len(c.events) >= 40, 15, what="all 40 alerts")
    c.close()
    assert sorted(seqs(c)) == expected
    assert len(seqs(c)) == len(set(seqs(c)))


def test_a_frame_is_the_stored_alert_event(env):
    """A frame's data (the stored payload text as PostgreSQL renders it, with ``seq``) decodes
    with ``AlertEvent.from_dict`` to the transition the sink stored, key for key and value for
    value; the alert's history in the API serves the same payload."""
    s, conn, tenant, other, pipe, api, key = env
    c = SseClient(api.url + "/alerts/stream", headers=hdr(key))
    assert c.connected.wait(10)
    _, dead, stored = pipe.feed([raw_event(tenant, "hf", 95.0)])
    assert not dead and len(stored) == 1 and stored[0].seq is not None
    wait_for(lambda: c.events, 10, what="the alert frame")
    c.close()
    frame = c.events[0]["data"]
    assert c.events[0]["id"] == str(stored[0].seq)
    assert frame == stored[0].to_dict()
    assert AlertEvent.from_dict(frame) == stored[0]
    r = httpx.get(api.url + f"/alerts/{stored[0].alert_id}", headers=hdr(key))
    assert r.status_code == 200, r.text
    (hist,) = r.json()["events"]
    assert hist["seq"] == stored[0].seq and hist["kind"] == "open"
    assert AlertEvent.from_dict(hist["payload"]).stored(hist["seq"]) == stored[0]


def test_bad_last_event_id_is_400(env):
    s, conn, tenant, other, pipe, api, key = env
    r = httpx.get(api.url + "/alerts/stream", headers={**hdr(key), "Last-Event-ID": "abc"})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]


def test_resume_replays_more_than_a_page_and_is_not_capped(env):
    """Regression (issue 8): the replay stopped at EVENTOPS_SSE_REPLAY_MAX and never resumed.

    With pages of 5, a client back after 23 missed alerts gets all 23 (five pages), then live
    ones."""
    s, conn, tenant, other, pipe, api, key = env
    from serving.config import ServingSettings

    paged = Api(
        s,
        bus=pipe.bus,
        serving=ServingSettings(
            rate_limit_rps=0, auth_cache_s=0.5, sse_page_size=5, _env_file=None
        ),
    )
    try:
        base = open_alerts(pipe, tenant, ["p0"])[0]
        missed = []
        for i in range(1, 24):
            missed += open_alerts(pipe, tenant, [f"p{i}"])
        open_alerts(pipe, other, ["x"])
        c = SseClient(
            paged.url + "/alerts/stream", headers={**hdr(key), "Last-Event-ID": str(base)}
        )
        wait_for(lambda: len(c.events) >= 23, 15, what="23 replayed alerts")
        live = open_alerts(pipe, tenant, ["p24", "p25"])
        wait_for(lambda: len(c.events) >= 25, 10, what="live alerts after a paged replay")
        c.close()
        assert seqs(c) == missed + live
    finally:
        paged.stop()


def test_connected_frame_carries_the_start_so_an_early_reconnect_misses_nothing(env):
    """A client without Last-Event-ID learns its starting point from the first frame (``id:``)."""
    s, conn, tenant, other, pipe, api, key = env
    before = open_alerts(pipe, tenant, ["e0"])
    with httpx.stream("GET", api.url + "/alerts/stream", headers=hdr(key), timeout=10) as r:
        head = next(r.iter_raw())
    start = int(head.split(b"id: ", 1)[1].split(b"\n", 1)[0])
    assert start == before[0]
    after = open_alerts(pipe, tenant, ["e1", "e2"])  # while "disconnected"
    c = SseClient(api.url + "/alerts/stream", headers={**hdr(key), "Last-Event-ID": str(start)})
    wait_for(lambda: len(c.events) >= 2, 10, what="alerts after the start")
    c.close()
    assert seqs(c) == after


def test_overflowed_client_queue_is_refilled_from_postgres_in_pages(env):
    """A client too slow for its bounded queue loses nothing: the gap is read back from the DB,
    page by page, and it continues from the live feed in seq order, each alert once."""
    s, conn, tenant, other, pipe, api, key = env
    from psycopg_pool import AsyncConnectionPool

    from serving.auth import KeyStore
    from serving.sse import StreamConf, alert_stream

    class Req:
        async def is_disconnected(self):
            return False

    async def run() -> tuple[list[int], list[int], int]:
        async with AsyncConnectionPool(
            s.pg_dsn(), min_size=1, max_size=3, kwargs={"autocommit": True}
        ) as pool:
            keys = KeyStore(ttl=5.0)
            principal = await keys.verify(pool, key)
            b = Broadcaster(pool, queue_size=4, page_size=3, loop=asyncio.get_running_loop())
            gen = alert_stream(Req(), pool, b, keys, principal, None, StreamConf(page_size=3))
            assert b"connected" in await anext(gen)  # subscribed; the feed knows its horizon
            (sub,) = b.feeds[tenant].subs
            ts = datetime.now(UTC)
            _, stored = store_alerts(
                s, [alert_event(tenant, f"o{i}", ts=ts + timedelta(seconds=i)) for i in range(10)]
            )
            want = [e.seq for e in stored]
            b.ring({tenant: (want[-1], [])})
            for _ in range(100):  # the feed reads 3 + 3 + 3 + 1 while nobody reads the stream
                await asyncio.sleep(0.05)
                if b.feeds[tenant].horizon == want[-1]:
                    break
            assert sub.dropped >= 1  # pages of 3 into a queue of 4: it overflowed
            got: list[int] = []
            while len(got) < 10:
                chunk = await asyncio.wait_for(anext(gen), 5)
                got += [int(x.split(b"\n", 1)[0]) for x in chunk.split(b"id: ")[1:]]
            # and live again afterwards: the next alert comes from the feed, not twice
            _, more = store_alerts(s, [alert_event(tenant, "o10", ts=ts + timedelta(seconds=10))])
            b.ring({tenant: (more[0].seq, [])})
            chunk = await asyncio.wait_for(anext(gen), 5)
            got += [int(x.split(b"\n", 1)[0]) for x in chunk.split(b"id: ")[1:]]
            dropped = sub.dropped
            await gen.aclose()
            assert tenant not in b.feeds  # the last subscriber left: the feed stopped
            return got, want + [more[0].seq], dropped

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:  # a loop of its own, whatever else runs in this thread
        got, want, dropped = ex.submit(asyncio.run, run()).result(timeout=30)
    assert got == want
    assert dropped >= 1


def test_resume_while_a_new_feed_reads_its_horizon_loses_nothing(env):
    """Regression (found in this work): a resuming client that was alone on its tenant's feed
    could finish its replay before the new feed had read its horizon; a transition committed
    between the two was neither in the replay nor fanned out live.

    The feed is held before it reads its horizon; a transition is committed; the feed then
    starts at a horizon that includes it. The client must still get it, from its replay."""
    s, conn, tenant, other, pipe, api, key = env
    from psycopg_pool import AsyncConnectionPool

    from serving.auth import KeyStore
    from serving.broadcast import Feed, head_seq
    from serving.sse import StreamConf, alert_stream

    class Req:
        async def is_disconnected(self):
            return False

    async def run() -> tuple[list[int], int]:
        async with AsyncConnectionPool(
            s.pg_dsn(), min_size=1, max_size=3, kwargs={"autocommit": True}
        ) as pool:
            keys = KeyStore(ttl=5.0)
            principal = await keys.verify(pool, key)
            b = Broadcaster(pool, queue_size=10, page_size=10, loop=asyncio.get_running_loop())
            feed = b.feeds[tenant] = Feed(tenant)  # no task yet: its horizon is unknown
            base = open_alerts(pipe, tenant, ["n0"])[0]
            gen = alert_stream(Req(), pool, b, keys, principal, base, StreamConf(page_size=10))
            assert b"connected" in await anext(gen)
            nxt = asyncio.ensure_future(anext(gen))
            await asyncio.sleep(0.5)  # the replay found nothing after `base`; it must not be done
            assert not nxt.done()
            (late,) = open_alerts(pipe, tenant, ["n1"])
            feed.horizon = await head_seq(pool, tenant)  # what the feed would now start from
            assert feed.horizon == late
            for sub in feed.subs:
                sub.start = feed.horizon
                sub.wake()
            chunk = await asyncio.wait_for(nxt, 5)
            got = [int(x.split(b"\n", 1)[0]) for x in chunk.split(b"id: ")[1:]]
            await gen.aclose()
            return got, late

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        got, late = ex.submit(asyncio.run, run()).result(timeout=30)
    assert got == [late]
