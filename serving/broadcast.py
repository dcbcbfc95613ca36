"""One alert broadcaster per API process, fanning out to every SSE client.

Sources: the ``ops.alert.v1`` topic (Kafka mode: one consumer per process, partitions assigned
explicitly at their current end — no consumer group, so clients never steal each other's
alerts), or the embedded runner's in-process :class:`pipeline.runner.Bus`.
Each client has a bounded queue; a client too slow to keep up loses its oldest events (and
is told so by a counter), it never blocks the others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline import kafka as kq
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscription:
    tenant: str | None
    queue: asyncio.Queue
    dropped: int = 0


@dataclass
class Broadcaster:
    queue_size: int = 1000
    subs: set[Subscription] = field(default_factory=set)
    loop: asyncio.AbstractEventLoop | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    delivered: int = 0
    closed: bool = False

    def subscribe(self, tenant: str | None) -> Subscription:
        sub = Subscription(tenant, asyncio.Queue(self.queue_size))
        self.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subs.discard(sub)

    def close(self) -> None:
        """Tell every subscriber the process is shutting down (a ``None`` in its queue)."""
        self.closed = True
        for sub in list(self.subs):
            if sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(None)

    def publish_threadsafe(self, event: dict) -> None:
        """Called from a source thread; hands the event to the event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._fanout, event)

    def _fanout(self, event: dict) -> None:
        tenant = event.get("tenant_id")
        for sub in list(self.subs):
            if sub.tenant is not None and sub.tenant != tenant:
                continue
            q = sub.queue
            if q.full():
                q.get_nowait()
                sub.dropped += 1
            q.put_nowait(event)
            self.delivered += 1


class KafkaAlertSource(threading.Thread):
    """Reads the alert topic from its current end and feeds the broadcaster."""

    def __init__(self, s: Settings, broadcaster: Broadcaster) -> None:
        super().__init__(name="alert-source", daemon=True)
        self.s = s
        self.b = broadcaster
        self._halt = threading.Event()
        self.error: Exception | None = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            c: Consumer = kq.consumer(self.s, kq.unique_group("eventops-api"), **{
                "enable.partition.eof": False,
            })
            parts = self._end_offsets(c)
            c.assign(parts)
            self.b.ready.set()
            log.info("alert broadcaster reading %s[%d partitions]", self.s.topic_alert, len(parts))
            while not self._halt.is_set():
                for m in c.consume(500, 0.25):
                    if m.error():
                        continue
                    try:
                        ev = orjson.loads(m.value())
                    except orjson.JSONDecodeError:
                        log.warning("undecodable alert at %s[%d]@%d", m.topic(), m.partition(), m.offset())
                        continue
                    self.b.publish_threadsafe(ev)
            c.close()
        except Exception as e:  # surfaced by /readyz
            self.error = e
            self.b.ready.clear()
            log.exception("alert broadcaster stopped")

    def _end_offsets(self, c: Consumer, timeout: float = 30.0) -> list[TopicPartition]:
        """Current end of every partition (retried while a new topic's leaders settle)."""
        topic = self.s.topic_alert
        deadline = time.monotonic() + timeout
        while True:
            try:
                md = c.list_topics(topic, timeout=10).topics[topic]
                if md.error:
                    raise KafkaException(md.error)
                return [
                    TopicPartition(topic, p, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                    for p in md.partitions
                ]
            except KafkaException:
                if time.monotonic() > deadline or self._halt.is_set():
                    raise
                time.sleep(0.5)
