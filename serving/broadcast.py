"""One alert broadcaster per API process, fanning out to every SSE client in ``seq`` order.

PostgreSQL is the order, the topic is the doorbell. Every alert transition is an
``alert_events`` row whose ``seq`` is the SSE event id. The live sources — the ``ops.alert.v1``
topic in Kafka mode (one consumer per process, partitions assigned explicitly at their end, no
consumer group, so clients never steal each other's alerts) or the embedded runner's in-process
:class:`pipeline.embedded.Bus` — only say *which tenant* has something new (and up to which
``seq``). A :class:`Feed` per tenant with subscribers then reads that tenant's rows after its
horizon from PostgreSQL (``seq > horizon ORDER BY seq``, pages of ``page_size``) and hands every
page, framed once, to each of its subscriptions. Why not forward the topic's payloads: the sink
keys alerts by ``tenant|host`` over several partitions, and a consumer returns one partition's
fetch before the next one's, so live payloads arrive out of ``seq`` order (and in split mode
before they are stored, without a ``seq``); a client that forwarded them and skipped what is
``<=`` its cursor would lose alerts, one that did not would deliver them out of order. One
indexed query per tenant per wake-up (coalesced: a burst becomes a few large pages) costs the
same whatever the number of clients.

Each subscription holds at most ``queue_size`` framed events. A page that does not fit clears
the queue and counts a drop: the client (:func:`serving.sse.alert_stream`) then refills itself
from PostgreSQL after its own cursor, in pages, until a page comes back short, and continues
from the queue (skipping what it has already sent). Nothing is skipped silently and memory per
client stays bounded by ``queue_size + page_size`` events whatever its lag.

A frame's ``data`` is the stored ``alert_events.payload`` text with its ``seq`` added, as
PostgreSQL renders it (no decoding and encoding per event): the JSON object of
:meth:`core.records.AlertEvent.to_dict` of the stored transition, which
:meth:`~core.records.AlertEvent.from_dict` reads back.

Outages: a feed whose query fails retries with backoff (its clients keep their heartbeats and
decide when to close, see :mod:`serving.sse`); the Kafka source reconnects with backoff and,
while it is down, feeds poll PostgreSQL every second instead of every ``poll_s``, so alerts keep
flowing (slower) and nothing between two sessions is lost. :meth:`Broadcaster.status` feeds
``/readyz``.

Assumption: ``alert_events`` rows commit in ``seq`` order (one sink writer, as deployed). Two
sink processes committing interleaved ``seq`` values could make a row visible after a higher
one was read; it would then reach clients only through ``Last-Event-ID`` replays of an older
cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from core.records import AlertEvent
from core.settings import Settings
from pipeline import kafka as kq
from storage import alerts as alerts_repo

log = logging.getLogger(__name__)

#: a database call of the SSE paths waits at most this long for a pooled connection
DB_TIMEOUT_S = 5.0
#: errors that mean "PostgreSQL is unavailable right now" (PoolTimeout is an OperationalError)
DB_DOWN = (psycopg.OperationalError, psycopg.errors.AdminShutdown)


@dataclass(frozen=True, slots=True)
class Item:
    """One alert transition, framed once for every client of its tenant."""

    seq: int
    frame: bytes
    read_at: float  # time.monotonic() after the query that read it returned


def alert_frame(seq: int, data: str) -> bytes:
    return b"id: %d\nevent: alert\ndata: %s\n\n" % (seq, data.encode())


async def read_page(pool, tenant: str, after: int, limit: int) -> tuple[list[Item], list[str]]:
    """The tenant's transitions with ``seq > after``, oldest first (at most ``limit``), and
    their keys."""
    async with pool.connection(timeout=DB_TIMEOUT_S) as conn:
        rows = await alerts_repo.events_after(conn, tenant, after, limit)
    now = time.monotonic()
    return [Item(s, alert_frame(s, d), now) for s, _, d in rows], [k for _, k, _ in rows]


async def head_seq(pool, tenant: str) -> int:
    """The tenant's newest ``seq`` (0 when it has none)."""
    async with pool.connection(timeout=DB_TIMEOUT_S) as conn:
        return await alerts_repo.head_seq(conn, tenant)


class Subscription:
    """One SSE client's bounded queue of framed events; ``dropped`` counts overflows."""

    __slots__ = ("tenant", "limit", "items", "dropped", "start", "_event", "closed")

    def __init__(self, tenant: str, limit: int) -> None:
        self.tenant = tenant
        self.limit = limit
        self.items: deque[Item] = deque()
        self.dropped = 0
        #: the feed's horizon when this subscription joined: a client without ``Last-Event-ID``
        #: starts after it (None until the feed knows its horizon)
        self.start: int | None = None
        self._event = asyncio.Event()
        self.closed = False

    def offer(self, items: list[Item]) -> None:
        if len(self.items) + len(items) > self.limit:
            self.items.clear()  # the client refills from PostgreSQL after its cursor
            self.dropped += 1
        else:
            self.items.extend(items)
        self._event.set()

    def pop(self, n: int) -> list[Item]:
        items = self.items
        if len(items) <= n:
            out = list(items)
            items.clear()
            return out
        return [items.popleft() for _ in range(n)]

    async def wait(self, timeout: float) -> None:
        """Until something was offered (or the subscription closed), at most ``timeout`` s."""
        if self.items or self.closed:
            return
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()

    def wake(self) -> None:
        self._event.set()


@dataclass(eq=False)
class Feed:
    """A tenant's transitions read from PostgreSQL in ``seq`` order, for its subscriptions."""

    tenant: str
    subs: set[Subscription] = field(default_factory=set)
    horizon: int | None = None
    hint: int = 0  # the highest seq a doorbell announced (looked for until hint_until)
    hint_until: float = 0.0
    pending: dict[str, float] = field(
        default_factory=dict
    )  # doorbells without seq: key -> deadline
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    error: str | None = None
    pages: int = 0


@dataclass
class Broadcaster:
    """Per-tenant feeds and their subscriptions; ``ring*`` is how sources announce new rows."""

    pool: object = None
    queue_size: int = 1000
    page_size: int = 1000
    poll_s: float = 5.0
    loop: asyncio.AbstractEventLoop | None = None
    #: how long a feed looks for a transition announced without ``seq`` (split workers)
    chase_s: float = 10.0
    feeds: dict[str, Feed] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    source_error: str | None = None
    delivered: int = 0
    closed: bool = False

    # --- subscriptions (event loop) ---------------------------------------------------------

    def subscribe(self, tenant: str) -> Subscription:
        sub = Subscription(tenant, self.queue_size)
        feed = self.feeds.get(tenant)
        if feed is None:
            feed = self.feeds[tenant] = Feed(tenant)
            feed.task = asyncio.get_running_loop().create_task(
                self._run(feed), name=f"feed-{tenant}"
            )
        sub.start = feed.horizon
        feed.subs.add(sub)
        if self.closed:
            sub.closed = True
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        feed = self.feeds.get(sub.tenant)
        if feed is None:
            return
        feed.subs.discard(sub)
        if not feed.subs:
            del self.feeds[sub.tenant]
            if feed.task is not None:
                feed.task.cancel()

    def close(self) -> None:
        """Shutting down: every subscription is told (its stream ends), every feed stops."""
        self.closed = True
        for feed in list(self.feeds.values()):
            for sub in feed.subs:
                sub.closed = True
                sub.wake()
            if feed.task is not None:
                feed.task.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the feeds have stopped (lifespan shutdown)."""
        tasks = [f.task for f in self.feeds.values() if f.task is not None]
        self.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> str:
        """``ok``, ``starting`` or ``degraded: …`` (for ``/readyz``)."""
        if self.source_error:
            return f"degraded: {self.source_error}"
        errors = sorted({f.error for f in self.feeds.values() if f.error})
        if errors:
            return f"degraded: {errors[0]}"
        return "ok" if self.ready.is_set() else "starting"

    # --- doorbells --------------------------------------------------------------------------

    def publish_threadsafe(self, event: AlertEvent) -> None:
        """One stored transition (embedded bus), from any thread."""
        self.ring_threadsafe({event.tenant_id: (event.seq, [event.event_key])})

    def ring_threadsafe(self, news: dict[str, tuple[int | None, list]]) -> None:
        """``{tenant: (highest seq or None, event keys of transitions without seq)}``, any
        thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.ring, news)

    def ring_all_threadsafe(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.ring_all)

    def ring(self, news: dict[str, tuple[int | None, list]]) -> None:
        now = time.monotonic()
        for tenant, (seq, keys) in news.items():
            feed = self.feeds.get(tenant)
            if feed is None:
                continue
            if isinstance(seq, int):
                if seq > feed.hint:
                    feed.hint, feed.hint_until = seq, now + self.chase_s
            elif len(feed.pending) < 10_000:
                feed.pending.update((k, now + self.chase_s) for k in keys if isinstance(k, str))
            feed.wake.set()

    def ring_all(self) -> None:
        for feed in self.feeds.values():
            feed.wake.set()

    # --- feeds ------------------------------------------------------------------------------

    async def _run(self, feed: Feed) -> None:
        backoff = 0.2
        while not self.closed:
            try:
                if feed.horizon is None:
                    feed.horizon = await head_seq(self.pool, feed.tenant)
                    for sub in feed.subs:
                        if sub.start is None:
                            sub.start = feed.horizon
                            sub.wake()
                await self._drain(feed)
                if feed.error:
                    log.info("alert feed of %s reads PostgreSQL again", feed.tenant)
                feed.error, backoff = None, 0.2
            except Exception as e:  # noqa: BLE001 - a feed retries; its clients decide when to close
                if feed.error is None:
                    if isinstance(e, DB_DOWN):
                        log.warning(
                            "alert feed of %s cannot read PostgreSQL (%s); retrying",
                            feed.tenant,
                            type(e).__name__,
                        )
                    else:
                        log.exception("alert feed of %s failed; retrying", feed.tenant)
                feed.error = (
                    "postgres unavailable"
                    if isinstance(e, DB_DOWN)
                    else f"feed: {type(e).__name__}"
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            timeout = self.poll_s if self.source_error is None else min(self.poll_s, 1.0)
            if feed.hint > feed.horizon and time.monotonic() > feed.hint_until:
                feed.hint = 0  # never became visible (another database's topic?): stop looking
            if feed.pending or feed.hint > feed.horizon:
                timeout = min(timeout, 0.2)  # announced but not visible yet: look again soon
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await feed.wake.wait()
            feed.wake.clear()

    async def _drain(self, feed: Feed) -> None:
        """Read and fan out everything after the horizon, page by page."""
        while True:
            items, keys = await read_page(self.pool, feed.tenant, feed.horizon, self.page_size)
            if feed.pending:
                for k in keys:
                    feed.pending.pop(k, None)
                now = time.monotonic()
                for k in [k for k, t in feed.pending.items() if t < now]:
                    del feed.pending[k]
            if not items:
                return
            feed.pages += 1
            feed.horizon = items[-1].seq
            for sub in feed.subs:
                sub.offer(items)
            self.delivered += len(items) * len(feed.subs)
            if len(items) < self.page_size:
                return


class KafkaAlertSource(threading.Thread):
    """Rings the broadcaster for the transitions on the alert topic; survives broker outages.

    A session assigns every partition at its current end and consumes; a failure (broker gone
    at start, metadata errors, a changed partition count) ends the session, and the next one
    starts after a backoff. The consumer keeps its position across broker restarts inside a
    session; whatever a new session skips is read from PostgreSQL by the feeds (every feed is
    rung when a session starts, and polls every second while the source is degraded).
    """

    def __init__(self, s: Settings, broadcaster: Broadcaster, probe_s: float = 5.0) -> None:
        super().__init__(name="alert-source", daemon=True)
        self.s = s
        self.b = broadcaster
        self.probe_s = probe_s
        self._halt = threading.Event()
        self.error: Exception | None = None
        self.sessions = 0

    def stop(self) -> None:
        self._halt.set()

    def _degraded(self, why: str | None) -> None:
        if why != self.b.source_error:
            if why:
                log.warning("alert broadcaster degraded: %s", why)
            else:
                log.info("alert broadcaster attached to %s again", self.s.topic_alert)
        self.b.source_error = why

    def run(self) -> None:
        backoff = 0.5
        while not self._halt.is_set():
            try:
                self._session()
                return
            except Exception as e:  # noqa: BLE001 - retried; surfaced by /readyz
                self.error = e
                self._degraded(f"kafka: {type(e).__name__}: {e}"[:200])
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _session(self) -> None:
        c: Consumer = kq.consumer(
            self.s,
            kq.unique_group("eventops-api"),
            **{
                "enable.partition.eof": False,
                # a broker outage is reported once by this class (log + /readyz), not by
                # librdkafka's connect-refused line every few ms
                "log_level": 2,
                "reconnect.backoff.ms": 500,
                "reconnect.backoff.max.ms": 5000,
            },
        )
        try:
            parts = self._end_offsets(c)
            c.assign(parts)
            self.sessions += 1
            self.b.ready.set()
            self._degraded(None)
            self.b.ring_all_threadsafe()  # anything stored while no session was reading
            log.info("alert broadcaster reading %s[%d partitions]", self.s.topic_alert, len(parts))
            probed = time.monotonic()
            while not self._halt.is_set():
                self._ring(c.consume(1000, 0.25))
                if time.monotonic() - probed >= self.probe_s:
                    probed = time.monotonic()
                    self._probe(c, len(parts))
        finally:
            c.close()

    def _ring(self, msgs: Iterable) -> None:
        news: dict[str, tuple[int | None, list]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                self._degraded(f"kafka: {err.str()}"[:200])
                continue
            try:
                ev = orjson.loads(m.value())
                tenant, seq = ev.get("tenant_id"), ev.get("seq")
            except (orjson.JSONDecodeError, AttributeError):
                log.warning("undecodable alert at %s[%d]@%d", m.topic(), m.partition(), m.offset())
                continue
            if not isinstance(tenant, str):
                continue
            hi, keys = news.get(tenant, (None, []))
            if isinstance(seq, int):
                hi = seq if hi is None else max(hi, seq)
            else:
                keys.append(ev.get("event_key"))
            news[tenant] = (hi, keys)
        if news:
            self._degraded(None)
            self.b.ring_threadsafe(news)

    def _probe(self, c: Consumer, n: int) -> None:
        """Is the broker there, and has the topic still ``n`` partitions (else: a new session)?"""
        topic = self.s.topic_alert
        try:
            md = c.list_topics(topic, timeout=5).topics[topic]
        except KafkaException as e:
            self._degraded(f"kafka unreachable: {e.args[0].str() if e.args else e}"[:200])
            return
        if md.error is None and md.partitions:
            if len(md.partitions) != n:
                raise KafkaException(f"{topic} has {len(md.partitions)} partitions now (was {n})")
            self._degraded(None)

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
                    TopicPartition(
                        topic, p, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    )
                    for p in md.partitions
                ]
            except KafkaException:
                if time.monotonic() > deadline or self._halt.is_set():
                    raise
                time.sleep(0.5)
