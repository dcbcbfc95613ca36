"""Runners: wire the pure stages to a source and to sinks.

* :class:`KafkaWorker` — a consumer-group member running a contiguous chain of stages
  (``normalize,enrich,detect,sink`` or any sub-chain). Per micro-batch: consume → stages →
  produce outputs and dead letters → flush → database commit (when the chain has ``sink``) →
  publish alert events (outbox) → commit offsets. Offsets are committed only after everything
  of the batch is durable, so a crash at any point replays the batch, and the deterministic
  event ids make the replay write nothing twice.
* :class:`EmbeddedPipeline` — all stages in one process, fed in memory (demo, backtests, tests);
  dead letters go to the ``dead_letters`` table and alerts to an in-process :class:`Bus`.

Outages (PostgreSQL or Kafka unavailable) never end a :class:`KafkaWorker`. The step that
failed — the sink's write of the batch, ``mark_published``, a checkpoint save, the outbox, the
checkpoint restore of a rebalance, a flush, an offset commit — is retried with exponential
backoff and jitter (:class:`pipeline.health.Backoff`, each wait capped at
``EVENTOPS_RETRY_BACKOFF_MAX_S``) on a fresh connection, with the same batch (its writes are
idempotent), for as long as the service is away (``EVENTOPS_OUTAGE_GIVE_UP_S``, default 0 =
never give up). Meanwhile the assigned partitions are *paused* and the consumer keeps polling,
so the worker stays in its group (heartbeats, ``max.poll.interval.ms``) without fetching more
input; produced records stay queued in the producer (``message.timeout.ms=0``), never dropped.
When the step succeeds consumption resumes where it stopped: nothing is skipped, nothing is
written twice. A failed tenants/inventory refresh keeps the reference data already loaded.
The worker's readiness (``starting`` / ``ok`` / ``degraded`` with the reason) is in
:class:`pipeline.health.Health`, served on ``EVENTOPS_WORKER_HEALTH_PORT``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import orjson
import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from core.batch import DeadLetter, MetricBatch
from core.errors import ServiceError
from core.reasons import DlqReason
from core.records import AlertEvent
from core.settings import Settings
from models.rules import RuleSet, RulesFile
from pipeline import kafka as kq
from pipeline.health import Backoff, Health, HealthServer
from pipeline.stages.detect.score_alerts import ANOMALY_RULE
from pipeline.stages.detect.stage import DetectStage, ModelProvider
from pipeline.stages.detect.window_rows import WindowRows
from pipeline.stages.enrich import Enricher
from pipeline.stages.normalize import NormalizeConfig, Normalizer
from registry.tags import CHALLENGER
from registry.watcher import start_watcher
from storage.alerts import load_open_alerts
from storage.checkpoints import Checkpoint, load_checkpoints, save_checkpoints
from storage.connect import connect
from storage.inventory import load_inventory
from storage.partitions import Maintainer, PartitionPolicy, Partitions
from storage.sink import Sink
from storage.tenants import load_tenants

log = logging.getLogger(__name__)

STAGES = ("normalize", "enrich", "detect", "sink")


def parse_chain(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Validate a stage list: known names, pipeline order, contiguous.

    >>> parse_chain("normalize,enrich")
    ('normalize', 'enrich')
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown stages {unknown}; choose a chain of {','.join(STAGES)}")
    idx = [STAGES.index(n) for n in names]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise ValueError(f"stages must be contiguous and in order {','.join(STAGES)}: {names}")
    return tuple(names)


def normalize_config(s: Settings, tenants: frozenset[str] | None) -> NormalizeConfig:
    known = (tenants or frozenset()) | s.tenant_allowlist()
    return NormalizeConfig(
        max_message_bytes=s.max_message_bytes,
        max_tag_value_bytes=s.max_tag_value_bytes,
        max_tags=s.max_tags,
        max_future_skew_s=s.max_future_skew_s,
        max_past_age_s=s.max_past_age_s,
        known_tenants=known,
    )


# commit errors meaning "this member no longer owns its partitions" (session expired, rebalance)
_MEMBERSHIP_LOST = frozenset({
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID, KafkaError._STATE,
})


# errors that mean "the broker or the group coordinator is away for now": waited out
_KAFKA_TRANSIENT = frozenset({
    KafkaError._WAIT_COORD, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT, KafkaError._RESOLVE, KafkaError._MSG_TIMED_OUT, KafkaError._WAIT_CACHE,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
})


def kafka_transient(err: KafkaError | None) -> bool:
    """A Kafka error worth waiting out (broker or coordinator away), not a bug or a refusal."""
    return err is not None and not err.fatal() and (err.code() in _KAFKA_TRANSIENT or err.retriable())


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
    return (code is None or code[:2] in ("08", "53", "40")
            or code in ("57P01", "57P02", "57P03", "57014"))


def _describe(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e, ServiceError) and e.__cause__ else e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:300]


class _Stopped(Exception):
    """Raised out of an outage wait when the worker is asked to stop; nothing is committed."""


class _ClientLogFilter(logging.Filter):
    """Drops librdkafka's per-attempt connection chatter (``FAIL``/``ERROR`` lines: "Connect
    to … failed", "1/1 brokers are down"); the worker logs one line when Kafka goes away and
    one when it is back. Shown again with ``EVENTOPS_LOG_LEVEL=DEBUG``."""

    def filter(self, record: logging.LogRecord) -> bool:
        fac = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        return fac not in ("FAIL", "ERROR") or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_client_log = logging.getLogger("pipeline.kafka.client")
_client_log.addFilter(_ClientLogFilter())


@dataclass
class Stats:
    batches: int = 0
    consumed: int = 0
    stored: int = 0
    dead: int = 0
    alerts: int = 0
    commit_failures: int = 0
    #: failed attempts waited out, per service ("postgres", "kafka")
    outage_retries: dict = field(default_factory=lambda: {"postgres": 0, "kafka": 0})
    started: float = field(default_factory=time.monotonic)


class _Stages:
    """The stage objects of a chain plus their periodically refreshed reference data."""

    def __init__(self, s: Settings, chain: tuple[str, ...], conn, model: ModelProvider | None = None,
                 shadow: ModelProvider | None = None) -> None:
        self.s, self.chain, self.conn = s, chain, conn
        self.normalizer = Normalizer(normalize_config(s, frozenset()))
        self.enricher = Enricher()
        self.rules_file = RulesFile(s.rules_path) if "detect" in chain else None
        self.detect = DetectStage(
            self.rules_file.rules if self.rules_file else RuleSet([]),
            window_s=s.window_s, lateness_s=s.allowed_lateness_s, model=model, shadow=shadow,
            idle_close_s=s.idle_close_s,
        )
        self._refreshed = 0.0
        self._rules_checked = 0.0
        self._tenants_checked = -self.TENANT_RECHECK_S
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.rules_file and now - self._rules_checked > 2.0:
            self._rules_checked = now
            try:
                if self.rules_file.poll():
                    self.detect.set_rules(self.rules_file.rules)
                    log.info("rules reloaded from %s", self.rules_file.path)
            except Exception as e:  # a broken edit keeps the previous rules in force
                log.error("rules file %s not reloaded: %s", self.rules_file.path, e)
        if not force and now - self._refreshed < self.s.inventory_refresh_s:
            return
        self._refreshed = now
        # a failure below (database away) keeps the reference data loaded before; the worker
        # sets the next attempt with retry_in()
        if "normalize" in self.chain:
            self.normalizer = Normalizer(normalize_config(self.s, load_tenants(self.conn)))
        if "enrich" in self.chain:
            self.enricher.update(load_inventory(self.conn))

    def retry_in(self, seconds: float) -> None:
        """Attempt the next reference-data refresh in ``seconds`` instead of a full period."""
        self._refreshed = time.monotonic() - self.s.inventory_refresh_s + seconds

    #: seconds between two tenant re-reads caused by events of unknown tenants
    TENANT_RECHECK_S = 2.0

    def normalize(self, raws, topic, partitions, offsets):
        """The normalizer on a batch; events of a tenant created since the last refresh are kept.

        Without this, a tenant's first events after ``eventops tenants create`` were dead-lettered
        as ``unknown_tenant`` for up to ``inventory_refresh_s``. When the batch has such dead
        letters the tenants are re-read (at most every :data:`TENANT_RECHECK_S`, so a stream of
        unknown tenants costs one small query every few seconds) and, only if the set grew,
        the batch is normalized again.
        """
        batch, dead = self.normalizer(raws, topic, partitions, offsets)
        if dead and self._tenants_grew(dead):
            batch, dead = self.normalizer(raws, topic, partitions, offsets)
        return batch, dead

    def _tenants_grew(self, dead: list[DeadLetter]) -> bool:
        now = time.monotonic()
        if now - self._tenants_checked < self.TENANT_RECHECK_S:
            return False
        if not any(d.reason == "unknown_tenant" for d in dead):
            return False
        self._tenants_checked = now
        try:
            tenants = load_tenants(self.conn)
        except Exception as e:  # noqa: BLE001 - the periodic refresh reports outages
            log.debug("tenant re-read failed: %s", e)
            try:
                self.conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection is replaced by refresh()
                pass
            return False
        known = self.normalizer.config.known_tenants
        if known is not None and tenants <= known:
            return False
        self.normalizer = Normalizer(normalize_config(self.s, tenants))
        return True


class KafkaWorker:
    """A consumer-group member running ``chain`` over micro-batches.

    A detect worker given no ``model`` provider watches the registry itself (:func:`start_watcher`):
    ``watcher`` follows the champion, ``shadow_watcher`` the challenger (shadow scoring).
    """

    def __init__(self, s: Settings, chain: str | Sequence[str], group: str | None = None,
                 model: ModelProvider | None = None, shadow: ModelProvider | None = None) -> None:
        self.s = s
        self.chain = parse_chain(chain)
        first, last = self.chain[0], self.chain[-1]
        self.group = group or f"{s.consumer_group_prefix}-{'-'.join(self.chain)}"
        self.inputs = {
            "normalize": [s.topic_raw],
            "enrich": [s.topic_metric],
            "detect": [s.topic_enriched],
            "sink": [s.topic_enriched, s.topic_alert, s.topic_score],
        }[first]
        # where the metric stream goes when the chain ends before the sink
        self.metric_out = None if "sink" in self.chain else {
            "normalize": s.topic_metric, "enrich": s.topic_enriched, "detect": s.topic_enriched,
        }[last]
        self.stats = Stats()
        self.watcher = self.shadow_watcher = None
        if model is None and "detect" in self.chain:
            self.watcher = start_watcher(s)
            model = self.watcher.current if self.watcher else None
            if shadow is None and self.watcher is not None:
                self.shadow_watcher = start_watcher(s, CHALLENGER)
                shadow = self.shadow_watcher.current if self.shadow_watcher else None
        self.health = Health()
        self._health_server: HealthServer | None = None
        # a worker that cannot reach PostgreSQL when it starts fails at once (wrong address or
        # credentials are likelier than an outage); once running it waits outages out
        self.conn = connect(s)  # reference data (tenants, inventory, open alerts)
        self.sink = Sink(connect(s), Partitions(PartitionPolicy.from_settings(s))) \
            if "sink" in self.chain else None
        # partitions ahead + retention, in the processes that write (storage.partitions.Maintainer)
        self.maintainer = Maintainer(s).start() if self.sink is not None else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sink")
        self._pending: tuple | None = None
        self._collisions: list[DeadLetter] = []  # duplicate_event_id letters of the batch in flight
        self.stages = _Stages(s, self.chain, self.conn, model=model, shadow=shadow)
        self.errors = kq.DeliveryErrors()
        self._kafka_fatal: KafkaError | None = None
        # records wait in the producer for as long as the broker is away (never dropped)
        self.producer = kq.producer(s, on_delivery=self.errors, error_cb=self._on_producer_error,
                                    logger=_client_log, **{"message.timeout.ms": 0})
        # detect keeps state per input partition and restores it on assignment from its
        # checkpoint (seeking to the checkpoint's offset): that needs eager assignment
        self.stateful = "detect" in self.chain
        self.consumer = kq.consumer(
            s, self.group, error_cb=self._on_consumer_error, logger=_client_log,
            on_commit=self._on_commit,
            **({"partition.assignment.strategy": "range"} if self.stateful else {}),
        )
        self._stop = threading.Event()
        # outage handling: partitions paused while a step is retried, messages a poll returned
        # meanwhile (processed first once resumed), re-entry guards for rebalance callbacks
        self._paused = False
        self._held: list[Message] = []
        self._finishing = False
        self._in_callback = False
        self._ref_backoff = Backoff(s.retry_backoff_s, s.retry_backoff_max_s)
        self._ref_stale = False
        self._kafka_probe_at = 0.0
        self._kafka_backoff = Backoff(s.retry_backoff_s, s.retry_backoff_max_s)
        self._outbox_due = False
        # (topic, partition) -> (newest offset to commit, when it was sent), until committed
        self._commit_want: dict[tuple[str, int], tuple[int, float]] = {}
        self._commit_retry_at = 0.0
        self._commit_error: KafkaError | None = None
        self._membership_warned = False
        self._lost = False
        self._epoch = 0  # revocations so far (a batch staged before one is not written after it)
        self._next: dict[int, int] = {}  # input partition -> next offset processed
        self._checkpointed = time.monotonic()
        # partitions owned here that have a checkpoint in PostgreSQL (restored or written)
        self._with_cp: set[int] = set()
        # restored partition -> its checkpoint's offset, until a batch of it is committed
        self._restored: dict[int, int] = {}
        # what it takes to undo a failed detect call (the failure path pays for it)
        self._history = DetectHistory() if self.stateful else None

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def _on_assign(self, consumer, parts) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in parts])
        self._membership_warned = False
        self._in_callback = True
        try:
            self._assign(consumer, parts)
        finally:
            self._in_callback = False
        self.health.set_ready()
        if self._lost:
            self._lost = False
            self._kafka_recovered()

    def _assign(self, consumer, parts) -> None:
        if not self.stateful:
            return
        # the checkpoints are needed before the first record: during a PostgreSQL outage this
        # waits (inside the callback, so without polling; librdkafka keeps the heartbeats going)
        cps = self._retry_pg("checkpoint restore",
                             lambda: load_checkpoints(self.conn, self.group, self.inputs[0]),
                             self._reconnect_ref, pause=False)
        open_alerts = None
        self._restored = {}
        for tp in parts:
            cp = cps.get(tp.partition)
            self.stages.detect.restore(tp.partition, cp[1] if cp else None)
            if cp:
                tp.offset = cp[0]
                self._with_cp.add(tp.partition)
                self._restored[tp.partition] = cp[0]
                log.info("%s[%d]: detect state restored, resuming at offset %d", tp.topic, tp.partition, cp[0])
            else:
                # no checkpoint yet: re-arm the open threshold alerts so they are not opened twice
                # (alerts of series on other partitions never see an event here and stay inert)
                if open_alerts is None:
                    loaded = self._retry_pg("open alerts", lambda: load_open_alerts(self.conn),
                                            self._reconnect_ref, pause=False)
                    open_alerts = [a for a in loaded if a.rule != ANOMALY_RULE]
                self.stages.detect.partition(tp.partition).rule_alerts.restore(open_alerts)
        # the restored blobs are the base to rewind to (the others are snapshotted)
        mine = {tp.partition for tp in parts}
        self._history.rebase(self.stages.detect, {p: cp[1] for p, cp in cps.items()
                                                  if p in mine and cp[1] is not None})
        consumer.assign(parts)

    def _on_revoke(self, consumer, parts) -> None:
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in parts])
        self._epoch += 1
        gone = {(p.topic, p.partition) for p in parts}
        # records polled while paused that belong to revoked partitions: their next owner reads
        # them; it also decides what is committed there
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]
        if self.stateful:
            self._in_callback = True
            try:
                self.finish()  # (a no-op when it is the outer finish() that is waiting out an outage)
            except _Stopped:
                raise
            except Exception:  # the next owner replays from the last checkpoint
                log.exception("could not finish the in-flight batch on revoke")
            finally:
                self._in_callback = False
        for key in gone:
            self._commit_want.pop(key, None)
        if self.stateful:
            for tp in parts:
                self.stages.detect.drop(tp.partition)
                self._next.pop(tp.partition, None)
                self._with_cp.discard(tp.partition)
                self._restored.pop(tp.partition, None)
            self._history.rebase(self.stages.detect)

    def _on_lost(self, consumer, parts) -> None:
        """The assignment was lost: no answer from the group coordinator for the session
        timeout (the broker is away or restarting, or this worker stalled). Until the group
        assigns partitions again the worker is degraded; then it resumes from the checkpoints."""
        self._lost = True
        self.health.degraded("kafka", "group membership lost (no answer from the coordinator); "
                             "rejoining", "waiting to be assigned partitions again")
        self._on_revoke(consumer, parts)

    def _on_consumer_error(self, err: KafkaError) -> None:
        """librdkafka's error callback of the consumer (served by consume on this thread)."""
        if err.fatal():
            self._kafka_fatal = self._kafka_fatal or err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.degraded("kafka", f"no broker reachable at {self.s.kafka_bootstrap}",
                                 "waiting for it")

    def _on_producer_error(self, err: KafkaError) -> None:
        """The producer's: only fatal errors count (a stalled flush reports the outage)."""
        if err.fatal():
            self._kafka_fatal = self._kafka_fatal or err

    def run(self, idle_exit_s: float | None = None) -> Stats:
        """Consume until :meth:`stop` (or SIGTERM), or after ``idle_exit_s`` without input."""
        try:
            self._start_health_server()
            self._await_models()
            self.consumer.subscribe(self.inputs, on_assign=self._on_assign,
                                    on_revoke=self._on_revoke, on_lost=self._on_lost)
            idle_since = time.monotonic()
            log.info("worker %s group=%s inputs=%s", ",".join(self.chain), self.group, self.inputs)
            if self.sink is not None:
                self._publish_outbox()  # alert events a previous run stored but did not publish
            while not self._stop.is_set():
                self.health.beat()
                if self._kafka_fatal is not None:
                    raise KafkaException(self._kafka_fatal)
                if self._commit_error is not None:
                    raise KafkaException(self._commit_error)
                self._retry_commits()
                if self._paused:  # (no step waits any more: a rebalance may have re-paused)
                    self._resume()
                if self._held:  # polled during an outage wait: first in line
                    msgs, self._held = self._held, []
                else:
                    msgs = self.consumer.consume(self.s.batch_max_events, self.s.batch_max_wait_ms / 1000)
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        if err.fatal():
                            raise KafkaException(err)
                        if kafka_transient(err):
                            self.health.degraded("kafka", err.str(), "waiting for it")
                        else:
                            log.warning("consumer error: %s", err)
                if not good:
                    self.finish()
                    if self.health.is_degraded("kafka"):
                        self._probe_kafka()
                    elif self._restored:
                        self._commit_restored()
                    self._refresh()
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                self.process(good)
        except _Stopped:
            log.warning("stopped while waiting out an outage: the batch in flight was not committed "
                        "and is replayed at the next start")
        finally:
            self.close()
        return self.stats

    def _start_health_server(self) -> None:
        port = self.s.worker_health_port
        if port and self._health_server is None:
            try:
                self._health_server = HealthServer(self.health, self.s.worker_health_host, port).start()
            except OSError as e:
                raise ServiceError(
                    f"worker health port {self.s.worker_health_host}:{port} is not available ({e.strerror}); "
                    "set EVENTOPS_WORKER_HEALTH_PORT to a free port or 0 to turn it off") from e

    def _await_models(self) -> None:
        """Wait (bounded) for the registry's first answer before consuming.

        Otherwise the windows of the first seconds after every start would be scored without the
        champion (its load takes seconds), unlike the same windows in an uninterrupted run, and
        the watcher's imports and load would compete with the first batches for the CPU.
        """
        for w in (self.watcher, self.shadow_watcher):
            if w is None or self._stop.is_set():
                continue
            t0 = time.monotonic()
            while not w.wait_first(0.2):
                self.health.beat()
                if self._stop.is_set():
                    return
                if time.monotonic() - t0 > self.s.champion_startup_wait_s:
                    log.warning("no answer from the model registry after %.0f s: consuming without "
                                "the %s model until it loads", self.s.champion_startup_wait_s, w.alias)
                    break
            version = w.current()[0]
            log.info("batch model %s@%s: %s", w.name, w.alias, version or "none")

    def close(self) -> None:
        try:
            if self._pending is not None and not self._pending[1].exception():
                try:
                    self.finish()
                except _Stopped:  # stopping during an outage: the batch is replayed at next start
                    pass
            self.producer.flush(10)
            self.consumer.close()
        finally:
            self._writer.shutdown()
            if self.maintainer is not None:
                self.maintainer.stop()
            for w in (self.watcher, self.shadow_watcher):
                if w is not None:
                    w.stop()
            for c in (self.conn, self.sink.conn if self.sink is not None else None):
                if c is not None:
                    try:
                        c.close()
                    except Exception:  # noqa: BLE001 - already broken by an outage
                        pass
            if self._health_server is not None:
                self._health_server.stop()
                self._health_server = None

    # -- outages -----------------------------------------------------------------------------
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
                raise _Stopped()
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
            raise ServiceError(f"{service} unavailable for more than {limit:.0f} s; giving up "
                               "(EVENTOPS_OUTAGE_GIVE_UP_S, 0 = wait for as long as it takes)")

    def _retry_pg(self, what: str, op: Callable[[], object], reconnect: Callable[[], None],
                  pause: bool = True, failed: BaseException | None = None):
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
                    self.health.degraded("postgres", f"{what}: {_describe(err)}",
                                         "consumption paused, retrying" if pause else "retrying")
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
            self.health.degraded("postgres", f"reference data refresh: {_describe(e)}",
                                 "keeping the tenants and inventory loaded before")
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
            self.health.degraded("kafka", f"{left} produced records not delivered yet",
                                 "consumption paused, the records stay queued")
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

    # -- one micro-batch ---------------------------------------------------------------------
    def process(self, msgs: list[Message]) -> None:
        """Run the stages on one micro-batch; its database write overlaps the next batch.

        The previous batch is finished (written, alerts published, offsets committed) before
        this one is handed to the writer thread, so commits stay in consumption order.
        """
        s, chain = self.s, self.chain
        self._refresh()
        epoch = self._epoch
        # a stage raising on the batch costs only the records that make it raise (stage_error)
        out = run_isolated(self._run_stages, msgs, _message_letter,
                           self.stages.detect if self.stateful else None, self._history)
        batch, dead, alerts, alerts_in, windows = out.batch, out.dead, out.alerts, out.alerts_in, out.windows
        if dead:
            kq.produce_dead_letters(self.producer, s.topic_dlq, dead)
        if self.metric_out and len(batch):
            vals, keys = kq.encode_metrics(batch)
            kq.produce_all(self.producer, self.metric_out, vals, keys)
        if "detect" in chain and windows is not None:
            recs = windows.records()
            kq.produce_all(self.producer, s.topic_score, [orjson.dumps(r) for r in recs],
                           [f"{r['tenant_id']}|{r['host']}" for r in recs])
        if alerts and self.sink is None:
            kq.produce_all(self.producer, s.topic_alert, [kq.encode_alert(a) for a in alerts],
                           [a.partition_key for a in alerts])
        self.finish()
        if self.stateful and self._epoch != epoch:
            # partitions were revoked (and maybe restored from their checkpoints) while finish()
            # waited out an outage: this batch was detected on the state from before, so it is
            # dropped unwritten and uncommitted; its records are read again from the checkpoints
            log.info("a rebalance while waiting out an outage: %d records are read again from "
                     "the checkpoints", len(msgs))
            return
        st = self.stats
        st.batches += 1
        st.consumed += len(msgs)
        st.dead += len(dead)
        st.alerts += len(alerts)
        offsets = kq.next_offsets(msgs)
        cps = self._checkpoints(offsets)
        if self.sink is None:
            self._flush()
            if cps:
                self._retry_pg("checkpoint save", lambda: self._save_checkpoints(cps),
                               self._reconnect_ref)
            self._commit(offsets)
        else:
            args = (batch, msgs, alerts + alerts_in, windows, cps)
            fut = self._writer.submit(self._write, *args)
            self._pending = (offsets, fut, bool(alerts_in), args)

    def _save_checkpoints(self, cps: list[Checkpoint]) -> None:
        with self.conn.transaction():
            save_checkpoints(self.conn, cps)

    def _run_stages(self, msgs: list[Message]) -> StageOutput:
        """The chain's stages on ``msgs`` (any slice of a micro-batch); raises :class:`StageFailure`."""
        chain = self.chain
        stage = chain[0]
        try:
            alerts_in: list[AlertEvent] = []
            batch, dead, windows = self._decode(msgs, alerts_in)
            out = StageOutput(batch, dead, [], alerts_in, windows)
            if "enrich" in chain:
                stage = "enrich"
                out.batch = self.stages.enricher(out.batch)
            if "detect" in chain:
                stage = "detect"
                _detect(self.stages.detect, out, lambda i: _message_origin(msgs[i]))
        except Exception as e:
            raise StageFailure(stage, e) from e
        return out

    def _write(self, batch: MetricBatch, msgs: list[Message], events: list[AlertEvent], windows,
               cps: list[Checkpoint]) -> tuple[int, list[AlertEvent]]:
        """The sink write (writer thread, or :meth:`finish` retrying it), and the dead letters
        of its event-id collisions, left in :attr:`_collisions`.

        :meth:`finish` produces them after the database commit and before it commits the
        offsets: a crash in between replays the batch, and the replay finds the same collisions
        again (their rows are still not stored), so none is lost.
        """
        out = self.sink.write(batch, events, windows, cps)
        self._collisions = []
        if self.sink.collided.size or self.sink.refused.size:
            # ``src`` indexes the records the batch was decoded from (a sink-first chain decodes
            # only the enriched topic's records of the micro-batch)
            src = msgs if self.chain[0] != "sink" else [m for m in msgs if m.topic() == self.s.topic_enriched]
            self._collisions = sink_letters(self.sink, batch, self.inputs[0],
                                            lambda i: _message_origin(src[i]))
        return out

    def _checkpoints(self, offsets) -> list[Checkpoint]:
        """Detect state of every owned partition, every ``checkpoint_interval_s``.

        A partition's *first* commit always carries a checkpoint: a partition with committed
        offsets but no checkpoint would resume after the commit with empty windows and
        detector state, and score differently from an uninterrupted run.
        """
        if not self.stateful:
            return []
        topic = self.inputs[0]
        det = self.stages.detect
        for tp in offsets:
            # (a partition revoked while finish() waited out an outage has no state here)
            if tp.topic == topic and tp.partition in det.parts:
                self._next[tp.partition] = tp.offset
                self._restored.pop(tp.partition, None)
        now = time.monotonic()
        first = any(p not in self._with_cp for p in self._next if p in det.parts)
        if not first and now - self._checkpointed < self.s.checkpoint_interval_s:
            return []
        self._checkpointed = now
        cps = [Checkpoint(self.group, topic, p, o, det.snapshot(p))
               for p, o in self._next.items() if p in det.parts]
        self._with_cp.update(cp.partition for cp in cps)
        self._history.rebase(det, {cp.partition: cp.state for cp in cps})  # blobs made anyway
        return cps

    def finish(self) -> None:
        """Complete the batch in flight: outputs delivered, rows committed, then offsets.

        Each step waits out an outage of its service (see the module docstring). Re-entered
        from a rebalance callback while that wait polls the consumer, it returns at once: the
        outer call completes the batch.
        """
        if self._pending is None or self._finishing:
            return
        self._finishing = True
        try:
            offsets, fut, from_topic, args = self._pending
            self._pending = None
            self._flush()
            try:
                stored_n, stored_alerts = fut.result()
            except Exception as e:
                if not pg_unavailable(e):
                    raise
                # the writer thread is idle now (its task failed): the same batch is written
                # again from here on a new connection (idempotent)
                stored_n, stored_alerts = self._retry_pg(
                    "sink write", lambda: self._write(*args), self._reconnect_sink, failed=e)
            self.stats.stored += stored_n
            if self._collisions:  # after the DB commit, before the offsets: see _write
                dead, self._collisions = self._collisions, []
                kq.produce_dead_letters(self.producer, self.s.topic_dlq, dead)
                self.stats.dead += len(dead)
                self._flush()
            if from_topic:  # they came from the alert topic: already published
                seqs = [a.seq for a in stored_alerts]
                self._retry_pg("mark published", lambda: self.sink.mark_published(seqs),
                               self._reconnect_sink)
            elif stored_alerts:
                self._publish(stored_alerts)
            if self._outbox_due:
                # after an outage: transitions a lost COMMIT reply hid from the retried write
                # (stored, so not returned again) are still unpublished
                self._publish_outbox()
            self._commit(offsets)
        finally:
            self._finishing = False

    def _commit(self, offsets) -> None:
        """Commit input offsets, asynchronously; the answer comes to :meth:`_on_commit`.

        A synchronous commit has no timeout in librdkafka: one in flight when the broker goes
        away blocks until it is back, and so would the worker (its polls included). Commits are
        cumulative, so an asynchronous one that fails loses nothing as long as the newest offset
        of each partition is eventually committed: :attr:`_commit_want` keeps it until a commit
        of it (or beyond) succeeds, and :meth:`_retry_commits` sends it again after a backoff.
        """
        now = time.monotonic()
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > self._commit_want.get(key, (-1, 0.0))[0]:
                self._commit_want[key] = (tp.offset, now)
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:  # refused locally (no assignment, closing): as if answered
            self._on_commit(e.args[0] if e.args else None, offsets)

    def _on_commit(self, err: KafkaError | None, parts) -> None:
        """Answer to a commit (librdkafka's ``on_commit``, served by consume on this thread).

        Losing group membership on the way is not an error. A worker that was paused past its
        session timeout (GC, CPU starvation, SIGSTOP, a long outage) finds its membership gone
        when it commits. Its rows and checkpoints are already in PostgreSQL and idempotent, so
        the batch is not lost: the rebalance that follows revokes the partitions and whoever
        owns them next resumes from the checkpoint or the last committed offset, replaying at
        most what this commit would have covered. With the coordinator away (``_WAIT_COORD``,
        ``NOT_COORDINATOR`` …) the newest offsets are committed again once it is back.
        """
        now = time.monotonic()
        for tp in parts or []:
            e = err or tp.error
            key = (tp.topic, tp.partition)
            want = self._commit_want.get(key)
            current = want is not None and tp.offset >= want[0]
            if e is not None and not e.fatal() and e.code() in _MEMBERSHIP_LOST:
                if current:
                    del self._commit_want[key]
                self.stats.commit_failures += 1
                if not self._membership_warned:  # once per assignment
                    self._membership_warned = True
                    log.warning("offset commit refused (%s); the partitions' next owner replays "
                                "from the last checkpoint or committed offset", e.str())
                continue
            if not current:
                continue  # revoked meanwhile, or a newer offset of the partition is on its way
            if e is None:
                del self._commit_want[key]
                # proof that Kafka is back only from a commit sent after it went away
                if self.health.is_degraded("kafka") and want[1] > now - self.health.degraded_for("kafka"):
                    self._kafka_recovered()
            elif kafka_transient(e):
                self.stats.outage_retries["kafka"] += 1
                self.health.degraded("kafka", f"offset commit: {e.str()}", "retrying")
                self._commit_retry_at = now + self._kafka_backoff.next()
            else:
                self._commit_error = e
        if not self._commit_want:
            self._commit_retry_at = 0.0

    def _retry_commits(self) -> None:
        """Send the newest offsets again after a commit failed (backoff), or give up."""
        if not self._commit_retry_at or time.monotonic() < self._commit_retry_at:
            return
        self._commit_retry_at = 0.0
        self._give_up("kafka")
        now = time.monotonic()
        offsets = []
        for (topic, part), (off, _) in self._commit_want.items():
            self._commit_want[(topic, part)] = (off, now)
            offsets.append(TopicPartition(topic, part, off))
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as e:
                self._on_commit(e.args[0] if e.args else None, offsets)

    def _commit_restored(self) -> None:
        """Commit the offsets of restored checkpoints that are ahead of the group's commits.

        A worker can write a batch and its checkpoint and then lose the commit (killed in
        between, or its membership expired). Its successor resumes at the checkpoint; when no
        input follows it, no batch would ever commit that position and the group would show
        lag for records that are stored. Runs when the worker is idle, after a batch-less poll.
        """
        topic, restored = self.inputs[0], self._restored
        try:
            committed = self.consumer.committed([TopicPartition(topic, p) for p in restored], timeout=10)
        except KafkaException as e:  # coordinator busy or moving: try again when next idle
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if kafka_transient(err):
                self.health.degraded("kafka", f"committed offsets: {err.str()}", "waiting for it")
            else:
                log.warning("could not read committed offsets: %s", e)
            return
        self._restored = {}
        ahead = [TopicPartition(topic, tp.partition, restored[tp.partition]) for tp in committed
                 if restored[tp.partition] > tp.offset]
        if ahead:
            log.info("committing restored checkpoint offsets %s",
                     {tp.partition: tp.offset for tp in ahead})
            self._commit(ahead)

    def _decode(self, msgs: list[Message], alerts_in: list[AlertEvent],
                ) -> tuple[MetricBatch, list[DeadLetter], WindowRows | None]:
        first, s = self.chain[0], self.s
        if first == "normalize":
            batch, dead = self.stages.normalize(
                [m.value() or b"" for m in msgs], s.topic_raw,
                [m.partition() for m in msgs], [m.offset() for m in msgs],
            )
            return batch, dead, None
        if first == "sink":
            metric_msgs = [m for m in msgs if m.topic() == s.topic_enriched]
            dead: list[DeadLetter] = []
            score_recs: list[dict] = []
            for m in msgs:
                if m.topic() in (s.topic_alert, s.topic_score):
                    try:
                        rec = orjson.loads(m.value())
                        if m.topic() == s.topic_alert:
                            alerts_in.append(AlertEvent.from_dict(rec))
                        else:
                            score_recs.append(rec)
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                        # (not an alert event: a field missing, of the wrong type or value)
                        fault = (str(e) if isinstance(e, orjson.JSONDecodeError)
                                 else f"{type(e).__name__}: {e}")
                        dead.append(DeadLetter(m.value() or b"", DlqReason.BAD_RECORD, fault,
                                               m.topic(), m.partition(), m.offset(), "sink"))
            batch, d2 = kq.decode_metrics(metric_msgs, "sink")
            return batch, dead + d2, WindowRows.from_records(score_recs)
        batch, dead = kq.decode_metrics(msgs, first)
        return batch, dead, None

    def _publish(self, events: list[AlertEvent]) -> None:
        kq.produce_all(self.producer, self.s.topic_alert, [kq.encode_alert(a) for a in events],
                       [a.partition_key for a in events])
        self._flush()
        seqs = [a.seq for a in events]
        self._retry_pg("mark published", lambda: self.sink.mark_published(seqs), self._reconnect_sink)

    def _publish_outbox(self) -> None:
        self._outbox_due = False
        pending = self._retry_pg("outbox", lambda: self.sink.unpublished(), self._reconnect_sink)
        if pending:
            log.info("publishing %d stored alert events not published yet", len(pending))
            self._publish(pending)


# -- stage outputs, late events and per-record isolation of stage failures -----------------

#: the input record of a row: (original bytes, topic, partition, offset)
Origin = tuple[bytes, str, int, int]


@dataclass
class StageOutput:
    """What the stages made of (a slice of) a micro-batch."""

    batch: MetricBatch = field(default_factory=MetricBatch.empty)
    dead: list[DeadLetter] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    alerts_in: list[AlertEvent] = field(default_factory=list)  # alert records read by a sink worker
    windows: WindowRows | None = None
    #: the batch detect consumed (the worker keeps it to rebuild detect's state on failure)
    detect_input: MetricBatch | None = None

    @classmethod
    def merge(cls, parts: list[StageOutput]) -> StageOutput:
        """Outputs of consecutive slices as one, in order."""
        return cls(
            MetricBatch.concat([p.batch for p in parts]),
            [d for p in parts for d in p.dead],
            [a for p in parts for a in p.alerts],
            [a for p in parts for a in p.alerts_in],
            WindowRows.concat([p.windows for p in parts if p.windows is not None]),
        )


class StageFailure(Exception):
    """A stage raised; ``stage`` names it, ``__cause__`` is what it raised."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage


def _detect(det: DetectStage, out: StageOutput, origin: Callable[[int], Origin]) -> None:
    """Run detect on ``out.batch``; its late events leave the batch as ``ts_too_old`` letters."""
    out.detect_input = out.batch
    res = det(out.batch)
    if len(res.late_idx):
        out.dead += late_letters(out.batch, res.late_idx, origin)
        keep = np.ones(len(out.batch), bool)
        keep[res.late_idx] = False
        out.batch = out.batch.take(keep)
    out.alerts = res.alerts
    out.windows = res.windows


def late_letters(batch: MetricBatch, idx: np.ndarray,
                 origin: Callable[[int], Origin] | None = None) -> list[DeadLetter]:
    """Events older than their closed window: dead letters with reason ``ts_too_old``.

    Each carries its input record's original bytes and topic/partition/offset, looked up with
    ``origin`` from the row's ``src`` index. Without them (a batch built by hand), the event is
    re-encoded and its offset is -1.
    """
    out = []
    detail = "event time behind a closed window"
    if origin is not None and batch.src is not None:
        for i in batch.src[idx].tolist():
            raw, topic, part, off = origin(i)
            out.append(DeadLetter(raw, DlqReason.TS_TOO_OLD, detail, topic, part, off, "detect"))
        return out
    for i in idx.tolist():
        ev = {"event_id": batch.event_id[i], "tenant_id": batch.tenant_id[i], "host": batch.host[i],
              "metric": batch.metric[i], "value": float(batch.value[i]), "ts": float(batch.ts[i]),
              "unit": batch.unit[i], "tags": batch.tags[i]}
        part = -1 if batch.partition is None else int(batch.partition[i])
        out.append(DeadLetter(orjson.dumps(ev), DlqReason.TS_TOO_OLD, detail, "", part, -1,
                              "detect"))
    return out


def _message_origin(m: Message) -> Origin:
    return m.value() or b"", m.topic(), m.partition(), m.offset()


def _message_letter(m: Message, failure: StageFailure) -> DeadLetter:
    return DeadLetter(m.value() or b"", DlqReason.STAGE_ERROR, str(failure), m.topic(),
                      m.partition(), m.offset(), failure.stage)


class DetectHistory:
    """Rebuilds detect's state as it was before a failed call, at no cost to a call that works.

    Holds a base (per-partition state blobs: the worker's checkpoints, which it makes anyway,
    or snapshots taken every ``max_events`` events) and the batches detect consumed since —
    references to batches that exist anyway. :meth:`rewind` restores the base and replays them.
    Replaying gives the state the calls gave (detect is deterministic in its input), unless the
    champion model or the rules changed in between: then the rebuilt state is what the current
    ones would have made.
    """

    def __init__(self, max_events: int = 100_000) -> None:
        self.max_events = max_events
        self.base: dict[int, bytes] = {}
        self.held: list[MetricBatch] = []
        self.events = 0

    def rebase(self, det: DetectStage, blobs: dict[int, bytes] | None = None) -> None:
        """The current state becomes the base (``blobs``: snapshots already made of it)."""
        blobs = blobs or {}
        self.base = {p: blobs[p] if p in blobs else det.snapshot(p) for p in list(det.parts)}
        self.held, self.events = [], 0

    def record(self, det: DetectStage, batch: MetricBatch) -> None:
        """``batch`` went through detect without error."""
        self.held.append(batch)
        self.events += len(batch)
        if self.events > self.max_events:
            self.rebase(det)

    def rewind(self, det: DetectStage) -> None:
        """Restore the state detect had after the last batch recorded."""
        _restore(det, self.base)
        for b in self.held:
            det(b)


def _snapshot(det: DetectStage | None) -> dict[int, bytes] | None:
    return None if det is None else {p: det.snapshot(p) for p in list(det.parts)}


def _restore(det: DetectStage | None, snap: dict[int, bytes] | None) -> None:
    if det is None or snap is None:
        return
    for p in [p for p in det.parts if p not in snap]:
        det.drop(p)
    for p, blob in snap.items():
        det.restore(p, blob)


def run_isolated(run: Callable[[Sequence], StageOutput], items: Sequence,
                 letter: Callable[[object, StageFailure], DeadLetter],
                 detect: DetectStage | None = None,
                 history: DetectHistory | None = None) -> StageOutput:
    """``run(items)``; if a stage fails, only the records that make it fail are dead-lettered.

    The happy path is one call (plus a list append for ``history``). When it raises
    :class:`StageFailure`, detect's state is rewound to before the call (``history``) and the
    records are bisected: each half runs on its own, a failed half is undone (a snapshot of
    detect taken before it) and split again, down to single records, which ``letter`` turns
    into ``stage_error`` dead letters (original bytes and source). Everything else of the batch
    is processed as usual, in order.
    """
    try:
        out = run(items)
    except StageFailure as e:
        log.error("stage %s failed on %d records (%s): isolating the records that make it fail",
                  e.stage, len(items), e, exc_info=e.__cause__)
        if detect is not None and history is not None:
            history.rewind(detect)
        outs: list[StageOutput] = []
        dead: list[DeadLetter] = []
        _bisect(run, items, letter, detect, e, outs, dead)
        if detect is not None and history is not None:
            history.rebase(detect)
        out = StageOutput.merge(outs)
        out.dead += dead
        log.warning("%d of %d records dead-lettered as stage_error", len(dead), len(items))
        return out
    if history is not None and out.detect_input is not None:
        history.record(detect, out.detect_input)
    return out


def _bisect(run, items: Sequence, letter, detect: DetectStage | None, failure: StageFailure,
            outs: list[StageOutput], dead: list[DeadLetter]) -> None:
    """``items`` failed as a whole (with ``failure``): run its halves in order, recursively."""
    if len(items) == 1:
        dead.append(letter(items[0], failure))
        return
    mid = len(items) // 2
    for half in (items[:mid], items[mid:]):
        snap = _snapshot(detect)
        try:
            outs.append(run(half))
        except StageFailure as e:
            _restore(detect, snap)
            _bisect(run, half, letter, detect, e, outs, dead)


def raw_chain(raws: Sequence[bytes], topic: str, partition: int, first_offset: int,
              normalizer: Callable[..., tuple[MetricBatch, list[DeadLetter]]], enricher: Enricher,
              detect: DetectStage,
              ) -> tuple[Callable[[Sequence[int]], StageOutput], Callable[[int, StageFailure], DeadLetter]]:
    """``(run, letter)`` for :func:`run_isolated` over normalize → enrich → detect of ``raws``
    (record ``i`` at ``topic[partition]@first_offset + i``): the embedded runner's chain."""

    def origin(i: int) -> Origin:
        return bytes(raws[i]), topic, partition, first_offset + i

    def run(idx: Sequence[int]) -> StageOutput:
        stage = "normalize"
        try:
            batch, dead = normalizer([raws[i] for i in idx], topic, [partition] * len(idx),
                                     [first_offset + i for i in idx])
            out = StageOutput(batch, dead)
            stage = "enrich"
            out.batch = enricher(out.batch)
            stage = "detect"
            _detect(detect, out, lambda j: origin(idx[j]))
        except Exception as e:
            raise StageFailure(stage, e) from e
        return out

    def letter(i: int, failure: StageFailure) -> DeadLetter:
        raw, t, p, o = origin(i)
        return DeadLetter(raw, DlqReason.STAGE_ERROR, str(failure), t, p, o, failure.stage)

    return run, letter


def collision_letters(batch: MetricBatch, idx: np.ndarray, topic: str,
                      origin: Callable[[int], Origin] | None = None,
                      reason: DlqReason = DlqReason.DUPLICATE_EVENT_ID) -> list[DeadLetter]:
    """Rows ``idx`` the sink refused, as dead letters of stage ``sink``.

    ``duplicate_event_id``: their tenant stored a different event under their event id;
    ``store_refused``: PostgreSQL refused the row's values (normalize should make that
    impossible; the row costs itself, not its batch). Each letter carries its input record's
    bytes and topic/partition/offset, from ``origin`` by the row's ``src`` index when the batch
    has one (``MetricBatch.src``); without it, the event as the sink received it (JSON) with its
    input ``topic`` and partition and offset -1.
    """
    src = batch.src
    out = []
    for i in idx.tolist():
        if reason == DlqReason.DUPLICATE_EVENT_ID:
            detail = (f"tenant {batch.tenant_id[i]} already stored a different event under "
                      f"event_id {batch.event_id[i]!r}")
        else:
            detail = "PostgreSQL refused the row's values"
        if origin is not None and src is not None:
            raw, t, part, off = origin(int(src[i]))
        else:
            raw = orjson.dumps({"event_id": batch.event_id[i], "tenant_id": batch.tenant_id[i],
                                "host": batch.host[i], "metric": batch.metric[i],
                                "value": float(batch.value[i]), "ts": float(batch.ts[i]),
                                "unit": batch.unit[i], "tags": batch.tags[i]},
                               default=str)
            t, off = topic, -1
            part = -1 if batch.partition is None else int(batch.partition[i])
        out.append(DeadLetter(raw, reason, detail[:500], t, part, off, "sink"))
    return out


def sink_letters(sink: Sink, batch: MetricBatch, topic: str,
                 origin: Callable[[int], Origin] | None = None) -> list[DeadLetter]:
    """Dead letters of the rows the sink's last write refused (collisions and refused values)."""
    return (collision_letters(batch, sink.collided, topic, origin)
            + collision_letters(batch, sink.refused, topic, origin, reason=DlqReason.STORE_REFUSED))


class Bus:
    """In-process publish/subscribe for the embedded runner's alert events."""

    def __init__(self) -> None:
        self._subs: list[Callable[[AlertEvent], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[AlertEvent], None]) -> Callable[[], None]:
        with self._lock:
            self._subs.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def publish(self, event: AlertEvent) -> None:
        with self._lock:
            subs = list(self._subs)
        for fn in subs:
            fn(event)


class EmbeddedPipeline:
    """normalize → enrich → detect → sink in one process, fed with raw event bytes."""

    def __init__(self, s: Settings, bus: Bus | None = None, source: str | None = None,
                 model: ModelProvider | None = None, shadow: ModelProvider | None = None,
                 maintain: bool = False) -> None:
        self.s = s
        self.bus = bus or Bus()
        # events without an agent id get <source>:0:<n>; unique per process start
        self.source = source or f"embedded-{int(time.time() * 1000)}"
        self.conn = connect(s)
        self.sink = Sink(self.conn, Partitions(PartitionPolicy.from_settings(s)))
        # ``maintain``: partitions ahead + retention in a thread of this process (the demo)
        self.maintainer = Maintainer(s).start() if maintain else None
        self.stages = _Stages(s, STAGES, self.conn, model=model, shadow=shadow)
        # no partitions or checkpoints here: re-arm open threshold alerts from storage
        self.stages.detect.partition(0).rule_alerts.restore(
            [a for a in load_open_alerts(self.conn) if a.rule != ANOMALY_RULE])
        self._history = DetectHistory()
        self._history.rebase(self.stages.detect)
        self.stats = Stats()
        self._seq = 0

    def feed(self, raws: Sequence[bytes]) -> tuple[int, list[DeadLetter], list[AlertEvent]]:
        """Process one micro-batch; returns (rows stored, dead letters, alert events)."""
        self.stages.refresh()
        first = self._seq
        self._seq += len(raws)
        stg = self.stages
        run, letter = raw_chain(raws, self.source, 0, first, stg.normalize, stg.enricher, stg.detect)
        # a stage raising costs only the records that make it raise (stage_error)
        out = run_isolated(run, range(len(raws)), letter, stg.detect, self._history)
        batch, dead, alerts = out.batch, out.dead, out.alerts
        self.sink.ensure_partitions(batch, out.windows)  # DDL, if any, outside the batch's transaction
        with self.conn.transaction():
            if dead:
                with self.conn.cursor().copy(
                    "COPY dead_letters (reason, detail, stage, source, raw) FROM STDIN"
                ) as cp:
                    for d in dead:
                        cp.write_row((d.reason, d.detail, d.stage,
                                      f"{d.topic}:{d.partition}:{d.offset}", d.raw))
            stored, stored_alerts = self.sink.write(batch, alerts, out.windows)
            if self.sink.collided.size or self.sink.refused.size:  # in the rows' transaction
                collided = sink_letters(self.sink, batch, self.source,
                                        lambda i: (bytes(raws[i]), self.source, 0, first + i))
                self.sink.write_dead_letters(collided)
                dead = dead + collided
        self.sink.mark_published([a.seq for a in stored_alerts])
        for a in stored_alerts:
            self.bus.publish(a)
        st = self.stats
        st.batches += 1
        st.consumed += len(raws)
        st.stored += stored
        st.dead += len(dead)
        st.alerts += len(stored_alerts)
        return stored, dead, stored_alerts

    def close(self) -> None:
        if self.maintainer is not None:
            self.maintainer.stop()
        self.conn.close()
