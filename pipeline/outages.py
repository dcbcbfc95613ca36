"""How a Kafka worker rides out outages of PostgreSQL and Kafka.

Outages never end a :class:`pipeline.kafka_worker.KafkaWorker`. The step that failed — the
sink's write of the batch, ``mark_published``, a checkpoint save, the outbox, the checkpoint
restore of a rebalance, a flush, an offset commit — is retried with exponential backoff and
jitter (:class:`pipeline.health.Backoff`, each wait capped at ``EVENTOPS_RETRY_BACKOFF_MAX_S``)
on a fresh connection, with the same batch (its writes are idempotent), for as long as the
service is away (``EVENTOPS_OUTAGE_GIVE_UP_S``, default 0 = never give up). Meanwhile the
assigned partitions are *paused* and the consumer keeps polling, so the worker stays in its
group (heartbeats, ``max.poll.interval.ms``) without fetching more input; produced records stay
queued in the producer (``message.timeout.ms=0``), never dropped. When the step succeeds
consumption resumes where it stopped: nothing is skipped, nothing is written twice. A failed
tenants/inventory refresh keeps the reference data already loaded. The worker's readiness
(``starting`` / ``ok`` / ``degraded`` with the reason) is in :class:`pipeline.health.Health`.

:class:`OutageHandling` holds the worker's steps for this (offset commits are
:class:`pipeline.offsets.OffsetCommits`'); :func:`kafka_transient` and :func:`pg_unavailable`
say which errors are outages (waited out) rather than bugs or refusals (raised).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from core.errors import ServiceError
from pipeline.health import Backoff
from storage.connect import connect
from storage.sink import Sink

# errors that mean "the broker or the group coordinator is away for now": waited out
_KAFKA_TRANSIENT = frozenset(
    {
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._WAIT_CACHE,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)


def kafka_transient(err: KafkaError | None) -> bool:
    """A Kafka error worth waiting out (broker or coordinator away), not a bug or a refusal."""
    return (
        err is not None and not err.fatal() and (err.code() in _KAFKA_TRANSIENT or err.retriable())
    )


def pg_unavailable(e: BaseException) -> bool:
    """PostgreSQL is down, restarting or the connection broke: the operation can be retried.

    The client losing or not getting a connection (no SQLSTATE; a closed connection raises
    ``InterfaceError``), class 08 (connection exception), 57P01-57P03 (``AdminShutdown``,
    crash shutdown, ``CannotConnectNow`` during start-up), 57014 (cancelled by an operator),
    class 53 (disk full, out of memory, too many connections) and class 40 (serialization
    failure, deadlock). Not data, integrity or program-limit errors (class 54, e.g. an index
    row too large): those would fail the same way forever and are raised.
    """
    if isinstance(e, ServiceError) and isinstance(e.__cause__, psycopg.OperationalError):
        return True  # storage.connect.connect could not reach the server
    if isinstance(e, psycopg.InterfaceError):
        return True
    if not isinstance(e, psycopg.OperationalError):
        return False
    code = getattr(e, "sqlstate", None)
    return (
        code is None
        or code[:2] in ("08", "53", "40")
        or code in ("57P01", "57P02", "57P03", "57014")
    )


def describe(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e, ServiceError) and e.__cause__ else e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:300]


class Stopped(Exception):
    """Raised out of an outage wait when the worker is asked to stop; nothing is committed."""


class OutageHandling:
    """The outage steps of :class:`pipeline.kafka_worker.KafkaWorker` (a mixin of it).

    Uses the worker's settings ``s``, ``consumer``, ``producer``, ``health``, ``stats``,
    ``stages``, ``conn`` and ``sink``, and its pause/hold state (``_paused``, ``_held``,
    ``_stop``, ``_in_callback``, ``_lost``, the backoffs).
    """

    # -- pause, wait, retry -------------------------------------------------------------
    def _backoff(self) -> Backoff:
        return Backoff(self.s.retry_backoff_s, self.s.retry_backoff_max_s)

    def _pause(self) -> None:
        """Stop fetching: the assigned partitions are paused, the consumer is still polled."""
        parts = self.consumer.assignment()
        if parts:
            self.consumer.pause(parts)
        self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            parts = self.consumer.assignment()
            if parts:
                self.consumer.resume(parts)

    def _wait(self, seconds: float) -> None:
        """Wait out part of an outage while staying a member of the consumer group.

        The consumer keeps being polled (heartbeats, ``max.poll.interval.ms``, rebalance
        callbacks) with its partitions paused; a rebalance may assign new partitions, which are
        paused on the next turn. Paused partitions deliver nothing, but should a poll return
        records anyway they are held and processed first, in order, once the outage is over.
        Inside a rebalance callback the consumer must not be polled: there it only sleeps.
        """
        deadline = time.monotonic() + seconds
        while True:
            self.health.beat()
            if self._stop.is_set():
                raise Stopped()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._in_callback:
                self._stop.wait(min(left, 0.5))
                continue
            if self._paused:
                self._pause()
            for m in self.consumer.consume(self.s.batch_max_events, min(left, 0.5)):
                if m.error() is None:
                    self._held.append(m)

    def _give_up(self, service: str) -> None:
        limit = self.s.outage_give_up_s
        if limit > 0 and self.health.degraded_for(service) > limit:
            raise ServiceError(
                f"{service} unavailable for more than {limit:.0f} s; giving up "
                "(EVENTOPS_OUTAGE_GIVE_UP_S, 0 = wait for as long as it takes)"
            )

    def _retry_pg(
        self,
        what: str,
        op: Callable[[], object],
        reconnect: Callable[[], None],
        pause: bool = True,
        failed: BaseException | None = None,
    ):
        """Run ``op`` until PostgreSQL accepts it; reconnect (``reconnect``) after each failure.

        The first failure reconnects and retries at once without reporting anything: after a
        server restart every pooled connection fails once. A second failure marks the worker
        degraded and pauses consumption (``pause``), then retries with backoff. ``failed`` is
        the error of an attempt made elsewhere (the sink's writer thread).
        """
        backoff = self._backoff()
        err, attempts = failed, 0 if failed is None else 1
        while True:
            if err is not None:
                if attempts > 1:
                    self.stats.outage_retries["postgres"] += 1
                    self.health.degraded(
                        "postgres",
                        f"{what}: {describe(err)}",
                        "consumption paused, retrying" if pause else "retrying",
                    )
                    self._give_up("postgres")
                    if pause:
                        self._pause()
                    self._wait(backoff.next())
                try:
                    reconnect()
                except Exception as e:
                    if not pg_unavailable(e):
                        raise
                    err, attempts = e, attempts + 1
                    continue
            try:
                out = op()
            except Exception as e:
                if not pg_unavailable(e):
                    raise
                err, attempts = e, attempts + 1
                continue
            if self.health.recovered("postgres", "consumption resumed" if self._paused else ""):
                self._outbox_due = self.sink is not None
            if pause:
                self._resume()
            return out

    def _reconnect_ref(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self.conn = connect(self.s)
        self.stages.conn = self.conn

    def _reconnect_sink(self) -> None:
        try:
            self.sink.conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self.sink = Sink(connect(self.s), self.sink.partitions)  # same policy, known partitions

    def _refresh(self) -> None:
        """Periodic tenants/inventory/rules refresh; a database outage keeps the loaded data.

        A failure reconnects and tries once more at once (the connection may just be a stale
        one from before a server restart) before it counts as an outage.
        """
        try:
            try:
                if self._ref_stale:
                    self._reconnect_ref()
                self.stages.refresh()
            except Exception as e:
                if not pg_unavailable(e) or self._ref_stale:
                    raise
                self._reconnect_ref()
                self.stages.refresh(force=True)
        except Exception as e:
            if not pg_unavailable(e):
                raise
            self._ref_stale = True
            self.stats.outage_retries["postgres"] += 1
            self.health.degraded(
                "postgres",
                f"reference data refresh: {describe(e)}",
                "keeping the tenants and inventory loaded before",
            )
            self.stages.retry_in(self._ref_backoff.next())
            return
        if self._ref_stale:
            self._ref_stale = False
            self._ref_backoff.reset()
            self.health.recovered("postgres", "reference data reloaded")

    def _flush(self) -> None:
        """Deliver everything produced; waits out a Kafka outage (the records stay queued).

        Not the end of the outage yet: the offset commit that follows is (:meth:`_commit`).
        """
        backoff = self._backoff()
        left = self.producer.flush(self.s.retry_backoff_max_s)
        while left:
            if self._kafka_fatal is not None:
                raise KafkaException(self._kafka_fatal)
            self.stats.outage_retries["kafka"] += 1
            self.health.degraded(
                "kafka",
                f"{left} produced records not delivered yet",
                "consumption paused, the records stay queued",
            )
            self._give_up("kafka")
            self._pause()
            self._wait(0.05)
            left = self.producer.flush(backoff.next())
        if self._kafka_fatal is not None:
            raise KafkaException(self._kafka_fatal)
        self.errors.check()
        self._resume()

    def _kafka_recovered(self) -> None:
        if self._lost:  # over only once the group assigns partitions again (_on_assign)
            return
        if self.health.recovered("kafka", "consumption resumed" if self._paused else ""):
            self._kafka_backoff.reset()
        self._resume()

    def _probe_kafka(self) -> None:
        """While Kafka is marked away and the worker idles: is the group coordinator back?"""
        now = time.monotonic()
        if now < self._kafka_probe_at or self._lost:  # (a lost assignment ends with the next one)
            return
        self._kafka_probe_at = now + self._kafka_backoff.next()
        try:
            tps = self.consumer.assignment() or [TopicPartition(self.inputs[0], 0)]
            self.consumer.committed(tps[:1], timeout=1.0)
        except KafkaException as e:
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if not kafka_transient(err):
                raise
            self.stats.outage_retries["kafka"] += 1
            return
        self._kafka_recovered()
