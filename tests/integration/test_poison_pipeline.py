"""Issue 8 on the real broker and database: every poison input of the corpus ends in the DLQ with
its reason, exactly its original bytes and its source offset, between good events of two
tenants on one partition, and nothing stops: every good event is stored exactly once and the
worker keeps consuming. Also: a stage raising on one marked event costs that event only, and
late events keep their original record (chained, split and embedded)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource, NewTopic

from pipeline import kafka as kq
from pipeline.embedded import EmbeddedPipeline
from pipeline.kafka_worker import KafkaWorker
from pipeline.stages.detect.stage import DetectStage
from storage.connect import connect, count_rows
from storage.migrate import migrate
from storage.tenants import create_tenant
from tests.integration.conftest import consume_all, group_lag, wait_for
from tests.poison import PoisonCase, load_corpus

CHAIN = "normalize,enrich,detect,sink"
B_EVENTS = 4000


class FaultyDetect(DetectStage):
    """The real detect stage, raising (after mutating its state) on a batch holding host BOOM."""

    BOOM = "h-boom"

    def __call__(self, batch):
        out = super().__call__(batch)
        if len(batch) and (batch.host == self.BOOM).any():
            raise RuntimeError("injected detect fault")
        return out


def ev(tenant: str, host: str, value: float, ts: float, **kw) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": tenant,
            "host": host,
            "metric": "cpu_load",
            "value": value,
            "ts_event": ts,
            "unit": "%",
            **kw,
        }
    )


def stream(
    a: str, b: str, now: float
) -> tuple[list[bytes], list[PoisonCase], list[bytes], list[bytes]]:
    """Each corpus case (tenant ``a``) after one good event of ``a`` and ~25 of ``b``; all in
    event-time order within a few seconds, so no window closes under them."""
    cases = load_corpus(a, now)
    per_b = -(-B_EVENTS // len(cases))
    good_a, good_b, raws = [], [], []
    for i, c in enumerate(cases):
        good_a.append(ev(a, f"ga{i % 5}", i, now + i * 1e-3))
        raws.append(good_a[-1])
        for j in range(per_b):
            if len(good_b) < B_EVENTS:
                good_b.append(ev(b, f"gb{j % 9}", j, now + i * 1e-3 + j * 1e-5))
                raws.append(good_b[-1])
        raws.append(c.raw)
    return raws, cases, good_a, good_b


def produce_to_partition_0(settings, raws: list[bytes]) -> None:
    # no compression: the 2,097,000-byte case meets the raw topic's real size limit
    p = kq.producer(settings, **{"compression.type": "none", "message.max.bytes": 10_000_000})
    errors = kq.DeliveryErrors()
    for r in raws:
        while True:
            try:
                p.produce(settings.topic_raw, r, None, partition=0, on_delivery=errors)
                break
            except BufferError:
                p.poll(0.05)
    kq.flush(p)
    errors.check()


def raw_offsets(settings, n: int) -> dict[bytes, int]:
    return {m.value(): m.offset() for m in consume_all(settings, settings.topic_raw, n, timeout=60)}


def expected_ids(settings, cases, offsets) -> dict[str, str]:
    """event_id of each weird-but-valid case as stored."""
    out = {}
    for c in cases:
        if c.reason is None:
            eid = json.loads(c.raw).get("event_id")  # orjson refuses an ignored lone surrogate
            out[c.name] = eid or f"{settings.topic_raw}:0:{offsets[c.raw]}"
    return out


def test_poison_corpus_through_chained_worker_between_two_tenants(
    settings, conn, tenant, start_worker
):
    other = f"tb{uuid.uuid4().hex[:8]}"
    create_tenant(conn, other)
    now = time.time() - 20
    raws, cases, good_a, good_b = stream(tenant, other, now)
    poison = [c for c in cases if c.reason]
    produce_to_partition_0(settings, raws)
    w = start_worker(CHAIN)

    dlq = consume_all(settings, settings.topic_dlq, len(poison), timeout=120)
    offsets = raw_offsets(settings, len(raws))
    by_raw = {}
    for m in dlq:
        assert m.value() not in by_raw, "a case dead-lettered twice"
        by_raw[m.value()] = {k: v.decode() for k, v in m.headers()}
    for c in poison:
        h = by_raw.get(c.raw)
        assert h is not None, f"{c.name}: not in the DLQ with its original bytes"
        assert h["reason"] == c.reason, (c.name, h["reason"], h["detail"])
        assert h["source.topic"] == settings.topic_raw and h["source.partition"] == "0"
        assert int(h["source.offset"]) == offsets[c.raw], c.name
        assert h["detail"] and "raw.truncated" not in h
    assert len(dlq) == len(poison)

    ids = expected_ids(settings, cases, offsets)
    count = lambda t: count_rows(conn, "metrics", "tenant_id = %s", (t,))  # noqa: E731
    wait_for(
        lambda: count(other) == B_EVENTS and count(tenant) == len(good_a) + len(ids),
        90,
        what="every good event of both tenants",
    )
    total, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM metrics WHERE tenant_id = ANY(%s)",
        ([tenant, other],),
    ).fetchone()
    assert total == distinct == B_EVENTS + len(good_a) + len(ids)
    stored = {
        r[0] for r in conn.execute("SELECT event_id FROM metrics WHERE tenant_id = %s", (tenant,))
    }
    assert set(ids.values()) <= stored, {n for n, e in ids.items() if e not in stored}
    want_b = {f"{settings.topic_raw}:0:{offsets[r]}" for r in good_b}
    got_b = {
        r[0] for r in conn.execute("SELECT event_id FROM metrics WHERE tenant_id = %s", (other,))
    }
    assert got_b == want_b

    # alive and consuming after all of it
    last = ev(other, "gb-last", 1.0, time.time())
    produce_to_partition_0(settings, [last])
    wait_for(lambda: count(other) == B_EVENTS + 1, 30, what="an event after the corpus")
    assert w.thread.is_alive() and w.error is None
    assert w.worker.stats.dead == len(poison)


def test_dlq_topic_holds_more_than_the_raw_topic(settings):
    got = _max_message_bytes(settings, [settings.topic_raw, settings.topic_dlq])
    assert got[settings.topic_raw] == kq.TOPIC_MAX_MESSAGE_BYTES
    assert got[settings.topic_dlq] == kq.DLQ_MAX_MESSAGE_BYTES > kq.TOPIC_MAX_MESSAGE_BYTES


def _max_message_bytes(settings, topics) -> dict[str, int]:
    a = kq.admin(settings)  # held until the futures settle
    res = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    return {
        r.name: int(f.result(timeout=30)["max.message.bytes"].value)
        for r, f in a.describe_configs(res).items()
    }


def test_topics_create_raises_the_limit_of_a_dlq_created_before(settings):
    s = settings.model_copy(update={"topic_dlq": f"{settings.topic_dlq}-old"})
    a = kq.admin(s)
    fut = a.create_topics([NewTopic(s.topic_dlq, 1, 1, config={"max.message.bytes": "2097152"})])
    fut[s.topic_dlq].result(timeout=30)

    def described():
        try:
            return _max_message_bytes(s, [s.topic_dlq])
        except KafkaException:  # not in the metadata yet
            return None

    try:
        assert wait_for(described, 30, what="the new topic") == {s.topic_dlq: 2097152}
        assert kq.create_topics(s, [s.topic_dlq]) == []
        assert _max_message_bytes(s, [s.topic_dlq]) == {s.topic_dlq: kq.DLQ_MAX_MESSAGE_BYTES}
    finally:
        kq.delete_topics(s, [s.topic_dlq])


def test_poison_corpus_through_embedded_runner(settings, conn, tenant):
    other = f"tb{uuid.uuid4().hex[:8]}"
    create_tenant(conn, other)
    now = time.time() - 20
    raws, cases, good_a, good_b = stream(tenant, other, now)
    source = f"emb-{uuid.uuid4().hex[:8]}"
    pipe = EmbeddedPipeline(settings, source=source)
    try:
        dead = []
        for i in range(0, len(raws), 700):
            _, d, _ = pipe.feed(raws[i : i + 700])
            dead += d
    finally:
        pipe.close()
    offset = {r: i for i, r in enumerate(raws)}
    rows = conn.execute(
        "SELECT reason, detail, stage, source, raw FROM dead_letters WHERE source LIKE %s",
        (f"{source}:%",),
    ).fetchall()
    poison = [c for c in cases if c.reason]
    assert len(rows) == len(poison) == len(dead)
    by_raw = {bytes(r[4]): r for r in rows}
    for c in poison:
        reason, detail, stage, src, _ = by_raw[c.raw]
        assert reason == c.reason, (c.name, reason, detail)
        assert src == f"{source}:0:{offset[c.raw]}" and stage == "normalize" and detail
    count = lambda t: count_rows(conn, "metrics", "tenant_id = %s", (t,))  # noqa: E731
    n_valid = sum(c.reason is None for c in cases)
    assert count(other) == B_EVENTS and count(tenant) == len(good_a) + n_valid


def test_detect_raising_on_one_event_in_a_chained_worker_costs_that_event_only(
    settings, conn, tenant
):
    """A fault-injected detect stage object inside a real worker (real Kafka and PostgreSQL)."""
    now = time.time() - 30
    raws = [ev(tenant, f"h{i % 6}", float(i), now + i * 1e-3) for i in range(3000)]
    boom = ev(tenant, FaultyDetect.BOOM, 1.0, now + 1.0, event_id=f"{tenant}-boom")
    raws.insert(1700, boom)
    produce_to_partition_0(settings, raws)
    w = KafkaWorker(settings, CHAIN)
    w.stages.detect.__class__ = FaultyDetect  # the stage object the worker built, now faulty
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        [d] = consume_all(settings, settings.topic_dlq, 1, timeout=60)
        h = {k: v.decode() for k, v in d.headers()}
        assert d.value() == boom and h["reason"] == "stage_error" and h["stage"] == "detect"
        assert int(h["source.offset"]) == 1700 and h["source.topic"] == settings.topic_raw
        assert "injected detect fault" in h["detail"]
        wait_for(
            lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 3000,
            60,
            what="the other 3000 events",
        )
        assert not count_rows(conn, "metrics", "event_id = %s", (f"{tenant}-boom",))
        produce_to_partition_0(settings, [ev(tenant, "h-after", 1.0, time.time())])
        wait_for(
            lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 3001,
            30,
            what="an event after the fault",
        )
        assert t.is_alive()
    finally:
        w.stop()
        t.join(30)


def _late_case(settings, tenant):
    """Events advancing one series' event time, then one behind its closed windows."""
    now = time.time()
    early = [ev(tenant, "h-late", float(i), now - 290 + i * 10) for i in range(29)]
    late = ev(tenant, "h-late", 42.0, now - 600, event_id=f"{tenant}-late")
    return early, late


def test_ts_too_old_in_chained_worker_carries_original_bytes_and_offset(
    settings, conn, tenant, start_worker
):
    early, late = _late_case(settings, tenant)
    produce_to_partition_0(settings, early)
    start_worker(CHAIN)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == len(early),
        60,
        what="the early events",
    )
    produce_to_partition_0(settings, [late])
    [d] = consume_all(settings, settings.topic_dlq, 1, timeout=60)
    h = {k: v.decode() for k, v in d.headers()}
    assert h["reason"] == "ts_too_old" and h["stage"] == "detect"
    assert d.value() == late  # the original bytes, not a re-encoded body
    assert h["source.topic"] == settings.topic_raw and h["source.partition"] == "0"
    assert int(h["source.offset"]) == len(early)


def test_ts_too_old_in_split_detect_worker_names_the_enriched_record(
    settings, conn, tenant, start_worker
):
    """A detect worker consuming signals.enriched.v1 dead-letters the record it consumed."""
    early, late = _late_case(settings, tenant)
    produce_to_partition_0(settings, early)
    start_worker("normalize,enrich")
    start_worker("detect,sink")
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == len(early),
        60,
        what="the early events",
    )
    produce_to_partition_0(settings, [late])
    [d] = consume_all(settings, settings.topic_dlq, 1, timeout=60)
    h = {k: v.decode() for k, v in d.headers()}
    assert h["reason"] == "ts_too_old" and h["source.topic"] == settings.topic_enriched
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": kq.unique_group("t"),
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.assign(
            [
                TopicPartition(
                    settings.topic_enriched, int(h["source.partition"]), int(h["source.offset"])
                )
            ]
        )
        rec = wait_for(lambda: next(iter(c.consume(1, 1.0)), None), 20, what="the enriched record")
    finally:
        c.close()
    assert rec.value() == d.value()
    assert orjson.loads(d.value())["event_id"] == f"{tenant}-late"


def test_ts_too_old_in_embedded_runner_carries_original_bytes(settings, conn, tenant):
    early, late = _late_case(settings, tenant)
    source = f"emb-{uuid.uuid4().hex[:8]}"
    pipe = EmbeddedPipeline(settings, source=source)
    try:
        pipe.feed(early)
        _, dead, _ = pipe.feed([late])
    finally:
        pipe.close()
    assert [(d.reason, d.raw, d.offset) for d in dead] == [("ts_too_old", late, len(early))]
    row = conn.execute(
        "SELECT reason, source, raw FROM dead_letters WHERE source LIKE %s", (f"{source}:%",)
    ).fetchone()
    assert row[0] == "ts_too_old" and row[1] == f"{source}:0:{len(early)}" and bytes(row[2]) == late


def _tables(c, exclude_host: str):
    scores = c.execute(
        "SELECT host, metric, window_start, round(score::numeric, 9), severity, components::text"
        " FROM scores WHERE host <> %s ORDER BY 1, 2, 3",
        (exclude_host,),
    ).fetchall()
    features = c.execute(
        "SELECT host, metric, window_start, count, round(mean::numeric, 9) FROM features"
        " WHERE host <> %s ORDER BY 1, 2, 3",
        (exclude_host,),
    ).fetchall()
    alerts = c.execute(
        "SELECT alert_id, host, metric, rule, severity, state, value, opened_at"
        " FROM alerts WHERE host <> %s ORDER BY 1",
        (exclude_host,),
    ).fetchall()
    events = c.execute("SELECT event_key, kind FROM alert_events ORDER BY 1").fetchall()
    return scores, features, alerts, events


def test_detect_fault_mid_stream_gives_the_tables_of_a_run_where_the_event_was_harmless(
    settings, two_dbs
):
    """Many batches and checkpoints before the fault: detect's state is rewound from the last
    checkpoint's blobs plus the batches since, the poisoned batch bisected, and every score,
    feature and alert equals a run in which the marked event was an ordinary one (its own
    series aside)."""
    from pipeline.simulate import Simulator

    tenant = "poisonrun"
    runs = {}
    for label, dbname in zip(("clean", "faulty"), two_dbs, strict=True):
        s = settings.model_copy(
            update={
                "pg_database": dbname,
                "checkpoint_interval_s": 0.5,
                "batch_max_events": 1500,
                "window_s": 20.0,
                "allowed_lateness_s": 10.0,
                "consumer_group_prefix": f"{settings.consumer_group_prefix}-{label}",
            }
        )
        with connect(s, autocommit=True) as c:
            migrate(c)
            create_tenant(c, tenant)
        runs[label] = s
    sim = Simulator(
        hosts=12,
        tenant=tenant,
        seed=9,
        interval=10.0,
        start=time.time() - 3000 - 120,
        anomaly_rate=0.02,
    )
    ticks = list(sim.events(ticks=300))
    p = kq.producer(settings)
    boom_at = 200
    n = 0
    for t, evs in enumerate(ticks):
        if t == boom_at:  # as old as the tick before: moves no watermark
            ts = orjson.loads(ticks[t - 1][0])["ts_event"]
            kq.produce_all(
                p,
                settings.topic_raw,
                [ev(tenant, FaultyDetect.BOOM, 1.0, ts, event_id="boom")],
                [f"{tenant}|host-000"],
            )
        kq.produce_all(
            p, settings.topic_raw, evs, [f"{tenant}|{sim.names[i // 4]}" for i in range(len(evs))]
        )
        n += len(evs)
    kq.flush(p)

    def run(s, faulty: bool) -> KafkaWorker:
        w = KafkaWorker(s, CHAIN)
        if faulty:
            w.stages.detect.__class__ = FaultyDetect
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        try:
            wait_for(
                lambda: group_lag(s, CHAIN) == 0 or not t.is_alive(),
                120,
                interval=0.3,
                what="every record consumed and committed",
            )
            assert t.is_alive()
            with connect(s, autocommit=True) as c:
                # a retry on a half-mutated state would find events late (ts_too_old) and lose them
                assert count_rows(c, "metrics") == n + (not faulty)
        finally:
            w.stop()
            t.join(30)
        return w

    run(runs["clean"], faulty=False)
    w = run(runs["faulty"], faulty=True)
    assert w.stats.dead == 1
    [d] = consume_all(settings, settings.topic_dlq, 1)
    assert (
        dict(d.headers())["reason"] == b"stage_error"
        and orjson.loads(d.value())["event_id"] == "boom"
    )
    with (
        connect(runs["clean"], autocommit=True) as a,
        connect(runs["faulty"], autocommit=True) as b,
    ):
        assert count_rows(b, "checkpoints") > 0
        ta, tb = _tables(a, FaultyDetect.BOOM), _tables(b, FaultyDetect.BOOM)
        assert not count_rows(b, "metrics", "event_id = 'boom'")
    assert len(ta[0]) > 12 * 4 * 100
    for name, x, y in zip(
        ("scores", "features", "alerts", "alert transitions"), ta, tb, strict=True
    ):
        assert x == y, (
            f"{name} differ: {[(i, j) for i, j in zip(x, y, strict=False) if i != j][:3]}"
        )
