"""Bad input ends in the DLQ without stopping the worker; kill -9 loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import time

import orjson

from pipeline import kafka as kq
from storage.connect import count_rows
from storage.tenants import create_tenant
from tests.integration.conftest import consume_all, group_lag, spawn_worker, wait_for

CHAIN = "normalize,enrich,detect,sink"

NOW = time.time()


def good(tenant: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": tenant,
            "host": f"h{i % 7}",
            "metric": "cpu_load",
            "value": 10 + i % 50,
            "ts_event": NOW - 60 + i * 1e-3,
            "unit": "%",
        }
    )


def test_bad_input_goes_to_dlq_with_reason_and_good_events_of_the_batch_are_stored(
    settings, conn, tenant, start_worker
):
    base = {"tenant_id": tenant, "host": "h", "metric": "cpu_load", "value": 1.0, "ts_event": NOW}

    def mk(**kw) -> bytes:
        d = {**base, **kw}
        return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()

    bad = {
        b'{"tenant_id": "x", broken': "bad_json",
        mk(value=...): "missing_field",
        mk(value="ninety"): "bad_type",
        mk(host=42): "bad_type",
        mk(value=float("nan")): "non_finite",  # json.dumps writes NaN
        mk(value=float("inf")): "non_finite",
        mk(value=float("-inf")): "non_finite",
        mk(ts_event=NOW + 366 * 86400): "ts_out_of_range",
        mk(ts_event=NOW - 366 * 86400): "ts_out_of_range",
        mk(tags={"blob": "x" * 100_000}): "tag_too_large",
        b"\xc3\x28\xa0\xa1 not utf-8": "bad_encoding",
        mk(tenant_id="nobody-registered"): "unknown_tenant",
    }
    raws = [good(tenant, 0)] + list(bad) + [good(tenant, 1)]
    p = kq.producer(settings)
    # one key: same partition, so good and bad records share the worker's micro-batch
    kq.produce_all(p, settings.topic_raw, raws, [f"{tenant}|h"] * len(raws))
    kq.flush(p)
    w = start_worker()

    dlq = consume_all(settings, settings.topic_dlq, len(bad), timeout=30)
    got = {}
    for m in dlq:
        h = dict(m.headers())
        got[m.value()] = h["reason"].decode()
        assert h["source.topic"].decode() == settings.topic_raw
        assert int(h["source.offset"]) >= 0 and h["detail"]
    assert got == bad  # original bytes, one reason each
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 2,
        30,
        what="the two good events",
    )

    # the worker is still alive and keeps consuming
    kq.produce_all(p, settings.topic_raw, [good(tenant, 2)], [f"{tenant}|h"])
    kq.flush(p)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 3,
        30,
        what="an event after the bad ones",
    )
    assert w.thread.is_alive() and w.error is None
    assert w.worker.stats.dead == len(bad)


def test_kill_9_mid_stream_then_restart_stores_every_event_exactly_once(
    settings, conn, tenant, tmp_path
):
    n = 100_000
    p = kq.producer(settings)
    raws = [good(tenant, i) for i in range(n)]
    kq.produce_all(p, settings.topic_raw, raws, [f"{tenant}|h{i % 7}" for i in range(n)])
    kq.flush(p)
    s = settings.model_copy(update={"batch_max_events": 2000})
    log = tmp_path / "worker.log"

    count = lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,))  # noqa: E731
    w1 = spawn_worker(s, CHAIN, log)
    try:
        wait_for(lambda: count() >= 15_000 or w1.poll() is not None, 90, what="first rows")
        assert w1.poll() is None, log.read_text()[-2000:]
        os.kill(w1.pid, signal.SIGKILL)
        w1.wait(10)
    finally:
        if w1.poll() is None:
            w1.kill()
    mid = count()
    assert mid < n, "the kill came too late to test anything"

    w2 = spawn_worker(s, CHAIN, log)
    try:
        wait_for(lambda: count() >= n or w2.poll() is not None, 120, interval=0.5, what="all rows")
        assert w2.poll() is None, log.read_text()[-2000:]
        # drained (every input record committed), then stopped: nothing more can land
        wait_for(lambda: group_lag(s, CHAIN) == 0, 30, what="offsets committed")
        w2.send_signal(signal.SIGTERM)
        assert w2.wait(30) == 0, log.read_text()[-2000:]
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM metrics WHERE tenant_id = %s", (tenant,)
        ).fetchone()
    finally:
        if w2.poll() is None:
            w2.kill()
    assert (total, distinct) == (n, n), f"killed at {mid} rows"
    expected = {
        f"{settings.topic_raw}:{m.partition()}:{m.offset()}"
        for m in consume_all(settings, settings.topic_raw, n, timeout=60)
    }
    stored = {
        r[0] for r in conn.execute("SELECT event_id FROM metrics WHERE tenant_id = %s", (tenant,))
    }
    assert stored == expected


def test_events_of_a_tenant_created_after_the_worker_started_are_stored_not_dead_lettered(
    settings, conn, tenant, start_worker
):
    """Regression: a new tenant's events were dead-lettered as ``unknown_tenant`` until the
    worker's next tenants refresh (``inventory_refresh_s``, 30 s by default)."""
    import uuid

    s = settings.model_copy(update={"inventory_refresh_s": 3600.0})
    start_worker(CHAIN, s)
    p = kq.producer(s)
    kq.produce_all(p, s.topic_raw, [good(tenant, 0)], [f"{tenant}|h0"])
    kq.flush(p)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 1,
        30,
        what="the worker running",
    )
    late = f"tn{uuid.uuid4().hex[:8]}"
    create_tenant(conn, late)  # after the worker loaded its tenants
    raws = [good(late, i) for i in range(20)]
    kq.produce_all(p, s.topic_raw, raws, [f"{late}|h{i % 7}" for i in range(20)])
    kq.flush(p)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (late,)) == 20,
        30,
        what="the new tenant's events stored (none dead-lettered)",
    )
