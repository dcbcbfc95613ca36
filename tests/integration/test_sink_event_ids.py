"""Event ids are unique per tenant: another tenant's id is stored, a replay is dropped silently,
the same tenant reusing an id for a different event is dead-lettered as ``duplicate_event_id``.

Issue 8: "B's event reusing A's id was dropped with no DLQ record".
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import pytest

from core.batch import MetricBatch
from pipeline import kafka as kq
from storage.connect import count_rows
from storage.sink import Sink
from storage.tenants import create_tenant
from tests.integration.conftest import consume_all, group_lag, wait_for


def obj(xs):
    a = np.empty(len(xs), dtype=object)
    a[:] = xs
    return a


#: yesterday noon UTC: far from a partition boundary, so a changed ts stays in the same partition
NOON = (time.time() // 86400 - 1) * 86400 + 43200


def batch(tenants, ids, hosts=None, metrics=None, values=None, ts=None) -> MetricBatch:
    n = len(ids)
    return MetricBatch(
        obj(ids),
        obj(tenants if isinstance(tenants, list) else [tenants] * n),
        obj(hosts or ["h"] * n),
        obj(metrics or ["m"] * n),
        np.asarray(values if values is not None else np.arange(n) + 0.25, dtype=float),
        np.asarray(ts if ts is not None else NOON + np.arange(n) * 0.001234567, dtype=float),
        obj(["u"] * n),
        obj([None] * n),
    )


@pytest.fixture
def other_tenant(conn) -> str:
    t = f"tn{uuid.uuid4().hex[:8]}"
    create_tenant(conn, t)
    return t


def stored(conn, tenant) -> list[tuple]:
    return conn.execute(
        "SELECT event_id, host, metric, value FROM metrics WHERE tenant_id = %s ORDER BY event_id",
        (tenant,),
    ).fetchall()


def test_another_tenants_event_with_the_same_id_is_stored_not_dropped(conn, tenant, other_tenant):
    sink = Sink(conn)
    ids = [f"shared-{i}" for i in range(5)]
    assert sink.write(batch(tenant, ids))[0] == 5
    # fast path: no conflict at all, the ids are another tenant's
    assert sink.write(batch(other_tenant, ids, values=[9.0] * 5))[0] == 5
    assert sink.collided.size == 0
    assert [r[0] for r in stored(conn, other_tenant)] == ids
    # and through the ON CONFLICT path (a batch mixing a replay with the other tenant's rows)
    third = f"tn{uuid.uuid4().hex[:8]}"
    n, _ = sink.write(batch([tenant] * 5 + [third] * 5, ids + ids))
    assert (n, sink.collided.size) == (5, 0)
    assert len(stored(conn, third)) == 5


def test_replay_of_the_same_events_is_dropped_silently(conn, tenant):
    sink = Sink(conn)
    b = batch(tenant, [f"r-{i}" for i in range(200)])
    assert sink.write(b)[0] == 200
    assert sink.write(b)[0] == 0
    assert sink.collided.size == 0
    assert len(stored(conn, tenant)) == 200


@pytest.mark.parametrize("field", ["host", "metric", "value", "ts"])
def test_same_tenant_reusing_an_id_for_a_different_event_is_refused(conn, tenant, field):
    sink = Sink(conn)
    first = batch(tenant, ["a", "b", "c"])
    sink.write(first)
    changed = {
        "host": dict(hosts=["h", "other", "h"]),
        "metric": dict(metrics=["m", "other", "m"]),
        "value": dict(values=[0.25, 99.0, 2.25]),
        "ts": dict(ts=first.ts + np.array([0, 30.0, 0])),
    }[field]
    again = batch(tenant, ["a", "b", "c"], **changed)
    n, _ = sink.write(again)
    assert n == 0
    assert sink.collided.tolist() == [1]  # "a" and "c" are replays; "b" is another event
    assert stored(conn, tenant) == [
        ("a", "h", "m", 0.25),
        ("b", "h", "m", 1.25),
        ("c", "h", "m", 2.25),
    ]


def test_two_events_with_one_id_in_one_batch_store_the_first(conn, tenant):
    sink = Sink(conn)
    b = batch(tenant, ["x", "y", "x", "x"], values=[1.0, 2.0, 3.0, 1.0], ts=[NOON] * 4)
    n, _ = sink.write(b)
    assert n == 2
    assert sink.collided.tolist() == [2]  # the 4th row is the same event as the 1st
    assert stored(conn, tenant) == [("x", "h", "m", 1.0), ("y", "h", "m", 2.0)]


def test_embedded_collision_is_dead_lettered_in_the_same_transaction(
    settings, conn, tenant, other_tenant
):
    from pipeline.embedded import EmbeddedPipeline

    now = time.time() - 30

    def ev(t, value, **kw) -> bytes:
        return orjson.dumps(
            {
                "tenant_id": t,
                "host": "h1",
                "metric": "cpu_load",
                "value": value,
                "ts_event": now,
                "event_id": "agent-7",
                **kw,
            }
        )

    pipe = EmbeddedPipeline(settings)
    try:
        assert pipe.feed([ev(tenant, 1.0)])[0] == 1
        assert pipe.feed([ev(other_tenant, 1.0)])[0] == 1  # another tenant: stored
        n, dead, _ = pipe.feed([ev(tenant, 1.0)])  # replay: dropped silently
        assert (n, dead) == (0, [])
        collision = ev(tenant, 2.0)
        n, dead, _ = pipe.feed([collision])
    finally:
        pipe.close()
    assert n == 0
    assert [(d.reason, d.stage) for d in dead] == [("duplicate_event_id", "sink")]
    assert dead[0].raw == collision and dead[0].topic == pipe.source and dead[0].offset == 3
    rows = conn.execute(
        "SELECT reason, detail, source, raw FROM dead_letters WHERE reason = 'duplicate_event_id'"
        " AND detail LIKE %s",
        (f"%{tenant}%",),
    ).fetchall()
    assert len(rows) == 1
    assert "agent-7" in rows[0][1]
    assert rows[0][2] == f"{pipe.source}:0:3" and bytes(rows[0][3]) == collision  # original bytes
    assert stored(conn, tenant) == [("agent-7", "h1", "cpu_load", 1.0)]


@pytest.mark.parametrize(
    "chains",
    [("normalize,enrich,detect,sink",), ("normalize,enrich,detect", "sink")],
    ids=["one", "split"],
)
def test_kafka_collision_goes_to_the_dlq_before_the_offsets_are_committed(
    settings, conn, tenant, other_tenant, start_worker, chains
):
    """``split``: the sink worker's dead letter carries the enriched record it read."""
    now = time.time() - 30

    def ev(t, value, eid) -> bytes:
        return orjson.dumps(
            {
                "tenant_id": t,
                "host": "h1",
                "metric": "cpu_load",
                "value": value,
                "ts_event": now,
                "event_id": eid,
            }
        )

    p = kq.producer(settings)
    first = [ev(tenant, 1.0, "e1"), ev(tenant, 2.0, "e2"), ev(other_tenant, 5.0, "e1")]
    kq.produce_all(p, settings.topic_raw, first, [f"{tenant}|h1"] * 2 + [f"{other_tenant}|h1"])
    kq.flush(p)
    workers = [start_worker(c) for c in chains]
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id IN (%s, %s)", (tenant, other_tenant)) == 3,
        60,
        what="first events stored",
    )
    # a replay of e1 (dropped) and a different event under e2 (dead-lettered)
    collision = ev(tenant, 3.0, "e2")
    kq.produce_all(p, settings.topic_raw, [ev(tenant, 1.0, "e1"), collision], [f"{tenant}|h1"] * 2)
    kq.flush(p)
    dlq = consume_all(settings, settings.topic_dlq, 1, timeout=60)
    h = {k: v.decode() for k, v in dlq[0].headers()}
    assert h["reason"] == "duplicate_event_id" and h["stage"] == "sink"
    assert int(h["source.offset"]) >= 0
    if len(chains) == 1:
        assert h["source.topic"] == settings.topic_raw
        assert dlq[0].value() == collision  # the original bytes
    else:
        assert h["source.topic"] == settings.topic_enriched
        rec = orjson.loads(dlq[0].value())
        assert (rec["event_id"], rec["value"]) == ("e2", 3.0)
    sink_chain = chains[-1]
    topic = settings.topic_raw if len(chains) == 1 else settings.topic_enriched
    wait_for(lambda: group_lag(settings, sink_chain, topic) == 0, 30, what="offsets committed")
    assert all(w.error is None for w in workers)
    assert stored(conn, tenant) == [("e1", "h1", "cpu_load", 1.0), ("e2", "h1", "cpu_load", 2.0)]
    assert stored(conn, other_tenant) == [("e1", "h1", "cpu_load", 5.0)]
