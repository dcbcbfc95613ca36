"""A Kafka worker's ``GET /metrics`` (worker health port): counts, stage times, lag, checkpoints."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core import telemetry
from pipeline import kafka as kq
from tests.integration.conftest import produce_sim, wait_for

CHAIN = "normalize,enrich,detect,sink"


def _samples(text: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def _value(samples: list, name: str, **labels) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_worker_exposes_what_it_did(settings, tenant, start_worker):
    port = _free_port()
    s = settings.model_copy(update={"worker_health_port": port, "checkpoint_interval_s": 0.5})
    before = _samples(telemetry.exposition()[0].decode())  # the counters of this test process
    _, n = produce_sim(s, tenant, hosts=2, ticks=40)
    p = kq.producer(s)
    kq.produce_all(p, s.topic_raw, [b"{not json", b"[1]"], [b"k", b"k"])
    kq.flush(p)
    first = start_worker(CHAIN, s)
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> list:
        try:
            r = httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return []
        assert r.headers["content-type"].startswith("text/plain")
        got = _samples(r.text)
        done = (
            _value(got, "eventops_events_stored_total", runner="kafka")
            - _value(before, "eventops_events_stored_total", runner="kafka")
            >= n
        )
        lag = [x for x in got if x.name == "eventops_consumer_lag"
               and x.labels["topic"] == s.topic_raw]  # fmt: skip
        age = [x for x in got if x.name == "eventops_checkpoint_age_seconds"]
        return got if done and lag and all(x.value == 0 for x in lag) and age else []

    got = wait_for(scraped, 90, 0.5, "the worker's metrics to show the batch stored")

    def delta(name: str, **labels) -> float:
        return _value(got, name, **labels) - _value(before, name, **labels)

    assert delta("eventops_events_consumed_total", runner="kafka") == n + 2
    assert delta("eventops_events_dead_lettered_total", runner="kafka", reason="bad_json") == 1
    assert delta("eventops_events_dead_lettered_total", runner="kafka", reason="not_object") == 1
    for stage in ("normalize", "enrich", "detect", "sink", "produce", "commit"):
        assert delta("eventops_stage_batch_seconds_count", stage=stage) >= 1, stage
    parts = {
        x.labels["partition"]
        for x in got
        if x.name == "eventops_consumer_lag" and x.labels["topic"] == s.topic_raw
    }
    assert parts and parts <= {"0", "1", "2"}
    ages = [x.value for x in got if x.name == "eventops_checkpoint_age_seconds"]
    assert ages and all(0 <= a < 60 for a in ages)
    assert _value(got, "eventops_champion_version", tenant=tenant) == 0  # the ensemble alone

    # a restarted worker knows the age of the checkpoints it restored (before it writes one)
    first.stop()
    gone = _samples(telemetry.exposition()[0].decode())
    assert not [x for x in gone if x.name == "eventops_checkpoint_age_seconds"]  # revoked
    assert not [x for x in gone if x.name == "eventops_consumer_lag"
                and x.labels["topic"] == s.topic_raw]  # fmt: skip
    port2 = _free_port()
    start_worker(CHAIN, s.model_copy(update={"worker_health_port": port2}))

    def restored() -> list:
        try:
            text = httpx.get(f"http://127.0.0.1:{port2}/metrics", timeout=2).text
        except httpx.HTTPError:
            return []
        return [x.value for x in _samples(text) if x.name == "eventops_checkpoint_age_seconds"]

    again = wait_for(restored, 60, 0.3, "the restored checkpoints' age")
    assert all(0 <= a < 120 for a in again) and len(again) == len(ages)


def test_lag_is_what_the_group_has_not_committed(settings):
    """The consumer's statistics as librdkafka reports them: the lag of an owned partition is
    its end offset minus the group's commit; a revoked partition's series is gone and its
    statistics do not set it again."""
    from confluent_kafka import TopicPartition

    from pipeline.worker_gauges import PartitionGauges

    s = settings
    kq.create_topics(s)
    p = kq.producer(s)
    kq.produce_all(p, s.topic_raw, [b"{}"] * 30, [None] * 30)
    kq.flush(p)
    g = PartitionGauges()
    got: list[str] = []
    c = kq.consumer(
        s,
        kq.unique_group("lag"),
        stats_cb=got.append,
        **{"statistics.interval.ms": 200},
    )
    c.subscribe(
        [s.topic_raw], on_assign=lambda _c, ps: g.assigned((x.topic, x.partition) for x in ps)
    )

    def lag() -> dict[int, float]:
        return {
            int(x.labels["partition"]): x.value
            for x in _samples(telemetry.exposition()[0].decode())
            if x.name == "eventops_consumer_lag" and x.labels["topic"] == s.topic_raw
        }

    try:
        read = []
        wait_for(lambda: read.extend(c.consume(100, 0.2)) or len(read) >= 30, 30, 0, "30 read")
        mid = read[9]
        c.commit(offsets=[TopicPartition(s.topic_raw, mid.partition(), mid.offset() + 1)],
                 asynchronous=False)  # fmt: skip
        ends = {}
        for m in read:
            ends[m.partition()] = m.offset() + 1

        def settled():
            got.clear()
            c.consume(1, 0.3)
            for raw in got:
                g.on_stats(raw)
            seen = lag()
            return seen if mid.partition() in seen else None

        seen = wait_for(settled, 30, 0, "the lag of the committed partition")
        assert seen[mid.partition()] == ends[mid.partition()] - (mid.offset() + 1), (seen, ends)
        assert set(seen) <= set(ends)

        g.checkpoint_stored([mid.partition()], age_s=7.0)
        g.revoked([(s.topic_raw, mid.partition())])
        got.clear()
        wait_for(lambda: c.consume(1, 0.3) is not None and got, 10, 0, "more statistics")
        for raw in got:
            g.on_stats(raw)
        assert mid.partition() not in lag()
        ages = [
            x
            for x in _samples(telemetry.exposition()[0].decode())
            if x.name == "eventops_checkpoint_age_seconds"
            and x.labels["partition"] == str(mid.partition())
        ]
        assert not ages
        g.on_stats("{not json")  # never raises
        g.clear()
        assert lag() == {}
    finally:
        c.close()
