"""Event time per host through a real chained worker: another tenant's clock skew on the same
Kafka partition does not dead-letter anyone's on-time events (issue 8, item 2)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from pipeline import kafka as kq
from storage.connect import count_rows
from storage.tenants import create_tenant
from tests.integration.conftest import group_lag, wait_for
from tests.unit.test_event_time import events

CHAIN = "normalize,enrich,detect,sink"


def _records(s, topic: str) -> int:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": kq.unique_group("count")})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_tenant_a_stamping_now_plus_290s_does_not_make_tenant_b_late_through_kafka(
    settings, conn, start_worker
):
    a, b = f"ta{uuid.uuid4().hex[:8]}", f"tb{uuid.uuid4().hex[:8]}"
    create_tenant(conn, a)
    create_tenant(conn, b)
    now = time.time()
    p = kq.producer(settings)
    start_worker(CHAIN, settings)

    def send(key: str, values: list[bytes]) -> None:
        for v in values:  # both tenants on one partition
            p.produce(settings.topic_raw, v, key, partition=0)
        kq.flush(p)

    # A's event first, processed on its own (as in the report), then B's on-time events
    send(f"{a}|web-1", events(a, "web-1", [now + 290.0]))
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (a,)) == 1,
        60,
        what="tenant A's event stored",
    )
    send(f"{b}|db-1", events(b, "db-1", [now - 100.0 + i for i in range(100)]))
    wait_for(
        lambda: (
            count_rows(conn, "metrics", "tenant_id = %s", (b,)) == 100
            or _records(settings, settings.topic_dlq)
        ),
        60,
        what="tenant B's events stored",
    )
    wait_for(lambda: group_lag(settings, CHAIN) == 0, 30, what="offsets committed")
    # committed after the batch's dead letters were produced: none were
    assert count_rows(conn, "metrics", "tenant_id = %s", (b,)) == 100
    assert _records(settings, settings.topic_dlq) == 0
