"""Everything that talks to Kafka: admin, producers, consumers, dead-letter and alert records
(the metric stream's records are :mod:`pipeline.codec`'s).

Stages never import this module; runners do. Settings that bite with librdkafka defaults are
set explicitly: idempotent producer, ``auto.offset.reset=earliest``, no auto-commit (offsets
are committed by the runner only after the database commit), short session timeout, and
reconnect attempts at most 1 s apart (librdkafka's default backoff grows to 10 s, which delays
the first batch after a broker restart by as much).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import uuid
from collections.abc import Iterable, Sequence

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from core.batch import DeadLetter, safe_detail
from core.errors import ServiceError
from core.records import AlertEvent
from core.settings import Settings

log = logging.getLogger(__name__)


#: ``max.message.bytes`` of every topic but the DLQ: the largest record an agent can produce to
#: the raw topic (the broker's ``message.max.bytes`` in scripts/services.sh matches it)
TOPIC_MAX_MESSAGE_BYTES = 2_097_152
#: ``max.message.bytes`` of the DLQ topic and ``message.max.bytes`` of our producers: a dead
#: letter is the original record's bytes plus headers, so it must fit more than any record an
#: input topic accepts (twice the headroom: headers, record overhead, and compressed input
#: batches whose records are larger uncompressed; those beyond it are truncated, see below)
DLQ_MAX_MESSAGE_BYTES = 2 * TOPIC_MAX_MESSAGE_BYTES
#: bytes kept free in a dead letter for its headers and the record framing
_DLQ_SLACK_BYTES = 16_384


def all_topics(s: Settings) -> list[str]:
    return [
        s.topic_raw,
        s.topic_metric,
        s.topic_enriched,
        s.topic_score,
        s.topic_alert,
        s.topic_dlq,
    ]


def admin(s: Settings) -> AdminClient:
    return AdminClient(s.kafka_common())


def wait_for_broker(s: Settings, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin(s).list_topics(timeout=5)
            if md.brokers:
                return
        except KafkaException as e:
            last = e
        time.sleep(0.5)
    raise ServiceError(f"no Kafka broker at {s.kafka_bootstrap} ({last}); run `make services-up`")


def create_topics(
    s: Settings, topics: Iterable[str] | None = None, partitions: int | None = None
) -> list[str]:
    """Create missing topics; returns the names created. Idempotent.

    Existing topics whose ``max.message.bytes`` is below what is wanted here (a DLQ created
    before its limit was raised) get it raised, so every dead letter stays producible.
    """
    a = admin(s)
    wanted = list(topics or all_topics(s))
    existing = set(a.list_topics(timeout=10).topics)

    def limit(t: str) -> str:
        return str(DLQ_MAX_MESSAGE_BYTES if t == s.topic_dlq else TOPIC_MAX_MESSAGE_BYTES)

    _raise_size_limits(a, {t: int(limit(t)) for t in wanted if t in existing})
    new = [
        NewTopic(
            t,
            num_partitions=partitions or s.topic_partitions,
            replication_factor=1,
            config={"retention.ms": str(s.topic_retention_ms), "max.message.bytes": limit(t)},
        )
        for t in wanted
        if t not in existing
    ]
    if not new:
        return []
    created = []
    for name, fut in a.create_topics(new, operation_timeout=30).items():
        try:
            fut.result(timeout=60)
            created.append(name)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    # wait until metadata shows them, so producers do not race topic creation
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        md = a.list_topics(timeout=5).topics
        if all(
            t in md
            and not md[t].error
            and md[t].partitions
            and all(pm.leader >= 0 for pm in md[t].partitions.values())
            for t in wanted
        ):
            break
        time.sleep(0.2)
    return created


def _raise_size_limits(a: AdminClient, limits: dict[str, int], timeout: float = 30.0) -> None:
    """Raise ``max.message.bytes`` of existing topics to ``limits`` where it is lower."""
    if not limits:
        return
    res = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in limits]
    low = []
    for r, fut in a.describe_configs(res, request_timeout=timeout).items():
        entry = fut.result(timeout=timeout).get("max.message.bytes")
        if entry is None or int(entry.value) < limits[r.name]:
            low.append(r.name)
    if not low:
        return
    alter = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            t,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes", str(limits[t]), incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        for t in low
    ]
    for r, fut in a.incremental_alter_configs(alter, request_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
        except KafkaException as e:
            raise ServiceError(
                f"could not raise max.message.bytes of topic {r.name} to {limits[r.name]} ({e}); "
                f"set it with kafka-configs.sh --alter --entity-type topics --entity-name {r.name} "
                f"--add-config max.message.bytes={limits[r.name]}"
            ) from e
        log.info("topic %s: max.message.bytes raised to %d", r.name, limits[r.name])


def delete_topics(s: Settings, topics: Sequence[str], timeout: float = 60.0) -> list[str]:
    """Delete ``topics`` (missing ones are ignored); returns those not confirmed deleted.

    The admin client is held until every future has settled: a client dropped while requests
    are in flight may never resolve them, and an unbounded ``result()`` then hangs for good.
    """
    a = admin(s)
    failed = []
    deadline = time.monotonic() + timeout
    for name, fut in a.delete_topics(list(topics), operation_timeout=30).items():
        try:
            fut.result(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                failed.append(name)
        except concurrent.futures.TimeoutError:
            failed.append(name)
    if failed:
        log.warning("topics not confirmed deleted: %s", ", ".join(failed))
    return failed


def producer(s: Settings, **overrides: object) -> Producer:
    return Producer(producer_config(s, **overrides))


def producer_config(s: Settings, **overrides: object) -> dict:
    return {
        **s.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        # the dead letter of the largest accepted input must be producible (issue 8): the DLQ's
        # limit; the broker still holds every other topic to TOPIC_MAX_MESSAGE_BYTES
        "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
        "reconnect.backoff.max.ms": 1000,
        **overrides,
    }


def consumer(s: Settings, group: str, **overrides: object) -> Consumer:
    conf = {
        **s.kafka_common(),
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": s.session_timeout_ms,
        "heartbeat.interval.ms": max(500, s.session_timeout_ms // 4),
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "partition.assignment.strategy": "cooperative-sticky",
        "reconnect.backoff.max.ms": 1000,
        **overrides,
    }
    return Consumer(conf)


def produce_all(
    p: Producer, topic: str, values: Iterable[bytes], keys: Iterable[bytes | str | None]
) -> None:
    """Produce many records, serving delivery callbacks when the local queue is full."""
    for v, k in zip(values, keys, strict=True):
        while True:
            try:
                p.produce(topic, v, k)
                break
            except BufferError:
                p.poll(0.05)
    p.poll(0)


def flush(p: Producer, timeout: float = 60.0) -> None:
    left = p.flush(timeout)
    if left:
        raise ServiceError(f"{left} Kafka records not delivered within {timeout}s")


class DeliveryErrors:
    """Delivery callback that remembers the first failure (raised by the runner)."""

    def __init__(self) -> None:
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and self.error is None:
            self.error = err

    def check(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise ServiceError(f"Kafka delivery failed: {err}")


# --- wire formats ---------------------------------------------------------------------------


def dead_letter_headers(d: DeadLetter) -> list[tuple[str, bytes]]:
    """``reason``, ``detail`` (valid UTF-8, at most ``DETAIL_MAX_CHARS`` characters), ``stage``
    and the source record's ``source.topic`` / ``source.partition`` / ``source.offset``."""
    return [
        ("reason", d.reason.encode()),
        ("detail", safe_detail(d.detail).encode("utf-8", "replace")),
        ("stage", d.stage.encode()),
        ("source.topic", d.topic.encode("utf-8", "replace")),
        ("source.partition", str(d.partition).encode()),
        ("source.offset", str(d.offset).encode()),
        ("dlq.ts", str(int(time.time() * 1000)).encode()),
    ]


def dead_letter_record(d: DeadLetter) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of ``d``'s DLQ record: the original bytes in full whenever they fit
    :data:`DLQ_MAX_MESSAGE_BYTES` (always for records of our input topics). Larger ones (only a
    compressed batch from a producer with a higher limit can deliver them) keep their first
    bytes, with headers ``raw.truncated=1`` and ``raw.size`` (the original length)."""
    headers = dead_letter_headers(d)
    room = DLQ_MAX_MESSAGE_BYTES - _DLQ_SLACK_BYTES
    if len(d.raw) <= room:
        return d.raw, headers
    headers += [("raw.truncated", b"1"), ("raw.size", str(len(d.raw)).encode())]
    return d.raw[:room], headers


def produce_dead_letters(p: Producer, topic: str, dead: Sequence[DeadLetter]) -> None:
    for d in dead:
        value, headers = dead_letter_record(d)
        while True:
            try:
                p.produce(topic, value, None, headers=headers)
                break
            except BufferError:
                p.poll(0.05)


def encode_alert(ev: AlertEvent) -> bytes:
    """The alert topic's record of a transition: :meth:`AlertEvent.to_dict` as JSON."""
    return orjson.dumps(ev.to_dict())


def next_offsets(msgs: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after processing ``msgs``: last offset + 1 per partition."""
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        k = (m.topic(), m.partition())
        o = m.offset()
        if o > last.get(k, -1):
            last[k] = o
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def unique_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
