"""The Kafka runner: a consumer-group member running a contiguous chain of stages.

Any sub-chain of ``normalize,enrich,detect,sink`` (:func:`pipeline.chain.parse_chain`). Per
micro-batch: consume → the chain (:meth:`pipeline.chain.Chain.run`, isolated per record on a
stage error) → produce outputs and dead letters → flush → database commit (when the chain ends
in the sink) → publish alert events (outbox) → commit offsets. Offsets are committed only after
everything of the batch is durable, so a crash at any point replays the batch, and the
deterministic event ids make the replay write nothing twice.

This module keeps consuming, producing, rebalancing and the detect checkpoints; outages
(PostgreSQL or Kafka away) are ridden out by :mod:`pipeline.outages`, offsets committed by
:mod:`pipeline.offsets`. The worker's readiness is served on ``EVENTOPS_WORKER_HEALTH_PORT``.

Idle close (detect workers, ``EVENTOPS_IDLE_CLOSE_WALL_S``): a partition that is read to its
end (the consumer reported end-of-partition at the offset processed) and has received nothing
for that long is ticked (:meth:`pipeline.stages.detect.stage.DetectStage.tick` with the idle
time); the windows it closes are scored and written like a batch's, with a checkpoint of the
partition at its unchanged offset in the same transaction, so a restart after that commit
keeps them closed. The idle time counts from the partition's last record, its assignment or
the end of a pause (an outage), whichever is latest, and not while a service is degraded: a
backlog being caught up after a restart or an outage is never mistaken for silence.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import orjson
from confluent_kafka import KafkaError, KafkaException, Message

from core.batch import DeadLetter, MetricBatch
from core.errors import ServiceError
from core.records import AlertEvent
from core.settings import Settings
from core.telemetry import count_events, observe_stage, timed
from pipeline import kafka as kq
from pipeline.chain import Chain, Records, StageFailure, StageOutput, parse_chain
from pipeline.codec import encode_metrics
from pipeline.health import Backoff, Health, HealthServer, Stats
from pipeline.isolation import DetectHistory, run_isolated
from pipeline.letters import Origin, sink_letters
from pipeline.offsets import OffsetCommits
from pipeline.outages import OutageHandling, Stopped, kafka_transient, pg_unavailable
from pipeline.stages.detect.score_alerts import ANOMALY_RULE
from pipeline.stages.detect.stage import ModelProvider
from pipeline.stageset import StageSet
from pipeline.worker_gauges import PartitionGauges
from registry.tags import CHALLENGER
from registry.watcher import start_watcher
from storage.alerts import load_open_alerts
from storage.checkpoints import Checkpoint, load_checkpoints, save_checkpoints
from storage.connect import connect
from storage.partitions import Maintainer, PartitionPolicy, Partitions
from storage.sink import Sink

log = logging.getLogger(__name__)

#: seconds between two looks for partitions due an idle close
IDLE_CHECK_S = 1.0


class _ClientLogFilter(logging.Filter):
    """Drops librdkafka's per-attempt connection chatter (``FAIL``/``ERROR`` lines: "Connect
    to … failed", "1/1 brokers are down"); the worker logs one line when Kafka goes away and
    one when it is back. Shown again with ``EVENTOPS_LOG_LEVEL=DEBUG``."""

    def filter(self, record: logging.LogRecord) -> bool:
        fac = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        return fac not in ("FAIL", "ERROR") or logging.getLogger(record.name).isEnabledFor(
            logging.DEBUG
        )


_client_log = logging.getLogger("pipeline.kafka.client")
_client_log.addFilter(_ClientLogFilter())


class KafkaWorker(OutageHandling, OffsetCommits):
    """A consumer-group member running ``chain`` over micro-batches.

    A detect worker given no ``model`` provider watches the registry itself (:func:`start_watcher`):
    ``watcher`` follows every tenant's champion, ``shadow_watcher`` every tenant's challenger
    (shadow scoring); each tenant's windows are scored by its own (none: the ensemble alone).
    """

    def __init__(
        self,
        s: Settings,
        chain: str | Sequence[str] | Chain,
        group: str | None = None,
        model: ModelProvider | None = None,
        shadow: ModelProvider | None = None,
    ) -> None:
        self.s = s
        self.chain = parse_chain(chain)
        self.group = group or f"{s.consumer_group_prefix}-{self.chain.slug}"
        self.inputs = self.chain.inputs(s)
        # where the metric stream goes when the chain ends before the sink
        self.metric_out = self.chain.output(s)
        self.stats = Stats()
        self.watcher = self.shadow_watcher = None
        if model is None and self.chain.has_detect:
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
        self.sink = (
            Sink(connect(s), Partitions(PartitionPolicy.from_settings(s)))
            if self.chain.ends_in_sink
            else None
        )
        # partitions ahead + retention, in the processes that write (Maintainer)
        self.maintainer = Maintainer(s).start() if self.sink is not None else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sink")
        self._pending: tuple | None = None
        self._collisions: list[DeadLetter] = []  # duplicate_event_id letters of the batch in flight
        self.stages = StageSet(s, self.chain, self.conn, model=model, shadow=shadow)
        self.errors = kq.DeliveryErrors()
        self._kafka_fatal: KafkaError | None = None
        # records wait in the producer for as long as the broker is away (never dropped)
        self.producer = kq.producer(
            s,
            on_delivery=self.errors,
            error_cb=self._on_producer_error,
            logger=_client_log,
            **{"message.timeout.ms": 0},
        )
        # detect keeps state per input partition and restores it on assignment from its
        # checkpoint (seeking to the checkpoint's offset): that needs eager assignment
        self.stateful = self.chain.has_detect
        # idle close: the consumer says when a partition is read to its end
        self.idle_close = self.stateful and s.idle_close_wall_s > 0
        self.gauges = PartitionGauges()
        self.consumer = kq.consumer(
            s,
            self.group,
            error_cb=self._on_consumer_error,
            logger=_client_log,
            on_commit=self._on_commit,
            stats_cb=self.gauges.on_stats,
            **PartitionGauges.consumer_config(),
            **({"partition.assignment.strategy": "range"} if self.stateful else {}),
            **({"enable.partition.eof": True} if self.idle_close else {}),
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
        # idle close, per input partition: when it last received a record (or was assigned or
        # resumed), the next offset processed, the end offset the consumer reported
        self._rx_at: dict[int, float] = {}
        self._pos: dict[int, int] = {}
        self._eof: dict[int, int] = {}
        self._idle_checked = 0.0
        # telemetry: produce + flush time of the batch in flight (the consumer's statistics
        # callback sets the consumer lag and checkpoint age: self.gauges)
        self._produce_s = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def _on_assign(self, consumer, parts) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in parts])
        self._membership_warned = False
        self.gauges.assigned((p.topic, p.partition) for p in parts)
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
        cps = self._retry_pg(
            "checkpoint restore",
            lambda: load_checkpoints(self.conn, self.group, self.inputs[0]),
            self._reconnect_ref,
            pause=False,
        )
        open_alerts = None
        self._restored = {}
        now = time.monotonic()
        for tp in parts:
            cp = cps.get(tp.partition)
            self.stages.detect.restore(tp.partition, cp[1] if cp else None)
            self._rx_at[tp.partition] = now  # idle only after a silence of its own
            self._eof.pop(tp.partition, None)
            self._pos[tp.partition] = cp[0] if cp else -1
            if cp:
                tp.offset = cp[0]
                self._with_cp.add(tp.partition)
                self.gauges.checkpoint_stored([tp.partition], age_s=cp[2])
                self._restored[tp.partition] = cp[0]
                log.info(
                    "%s[%d]: detect state restored, resuming at offset %d",
                    tp.topic,
                    tp.partition,
                    cp[0],
                )
            else:
                # no checkpoint yet: re-arm the open threshold alerts so they are not opened twice
                # (alerts of series on other partitions never see an event here and stay inert)
                if open_alerts is None:
                    loaded = self._retry_pg(
                        "open alerts",
                        lambda: load_open_alerts(self.conn),
                        self._reconnect_ref,
                        pause=False,
                    )
                    open_alerts = [a for a in loaded if a.rule != ANOMALY_RULE]
                self.stages.detect.partition(tp.partition).rule_alerts.restore(open_alerts)
        # the restored blobs are the base to rewind to (the others are snapshotted)
        mine = {tp.partition for tp in parts}
        self._history.rebase(
            self.stages.detect,
            {p: cp[1] for p, cp in cps.items() if p in mine and cp[1] is not None},
        )
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
                # (a no-op when it is the outer finish() that is waiting out an outage)
                self.finish()
            except Stopped:
                raise
            except Exception:  # the next owner replays from the last checkpoint
                log.exception("could not finish the in-flight batch on revoke")
            finally:
                self._in_callback = False
        for key in gone:
            self._commit_want.pop(key, None)
        self.gauges.revoked(gone)
        if self.stateful:
            for tp in parts:
                self.stages.detect.drop(tp.partition)
                for d in (self._rx_at, self._pos, self._eof):
                    d.pop(tp.partition, None)
                self._next.pop(tp.partition, None)
                self._with_cp.discard(tp.partition)
                self._restored.pop(tp.partition, None)
            self._history.rebase(self.stages.detect)

    def _on_lost(self, consumer, parts) -> None:
        """The assignment was lost: no answer from the group coordinator for the session
        timeout (the broker is away or restarting, or this worker stalled). Until the group
        assigns partitions again the worker is degraded; then it resumes from the checkpoints."""
        self._lost = True
        self.health.degraded(
            "kafka",
            "group membership lost (no answer from the coordinator); rejoining",
            "waiting to be assigned partitions again",
        )
        self._on_revoke(consumer, parts)

    def _on_consumer_error(self, err: KafkaError) -> None:
        """librdkafka's error callback of the consumer (served by consume on this thread)."""
        if err.fatal():
            self._kafka_fatal = self._kafka_fatal or err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.degraded(
                "kafka", f"no broker reachable at {self.s.kafka_bootstrap}", "waiting for it"
            )

    def _on_producer_error(self, err: KafkaError) -> None:
        """The producer's: only fatal errors count (a stalled flush reports the outage)."""
        if err.fatal():
            self._kafka_fatal = self._kafka_fatal or err

    def run(self, idle_exit_s: float | None = None) -> Stats:
        """Consume until :meth:`stop` (or SIGTERM), or after ``idle_exit_s`` without input."""
        try:
            self._start_health_server()
            self._await_models()
            self.consumer.subscribe(
                self.inputs,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            idle_since = time.monotonic()
            log.info("worker %s group=%s inputs=%s", self.chain, self.group, self.inputs)
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
                    msgs = self.consumer.consume(
                        self.s.batch_max_events, self.s.batch_max_wait_ms / 1000
                    )
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        self._eof[m.partition()] = m.offset()  # read to its end, up to here
                    else:
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
                    self._idle_close()
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                self.process(good)
                self._idle_close()  # a quiet partition beside busy ones
        except Stopped:
            log.warning(
                "stopped while waiting out an outage: the batch in flight was not committed "
                "and is replayed at the next start"
            )
        finally:
            self.close()
        return self.stats

    def _start_health_server(self) -> None:
        port = self.s.worker_health_port
        if port and self._health_server is None:
            try:
                self._health_server = HealthServer(
                    self.health, self.s.worker_health_host, port
                ).start()
            except OSError as e:
                raise ServiceError(
                    f"worker health port {self.s.worker_health_host}:{port} is not available"
                    f" ({e.strerror}); "
                    "set EVENTOPS_WORKER_HEALTH_PORT to a free port or 0 to turn it off"
                ) from e

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
                    log.warning(
                        "no answer from the model registry after %.0f s: consuming without "
                        "the %s model until it loads",
                        self.s.champion_startup_wait_s,
                        w.alias,
                    )
                    break
            cur = w.current()
            log.info(
                "batch models @%s: %s",
                w.alias,
                ", ".join(f"{t} v{vm[0]}" for t, vm in sorted(cur.items()))
                or "none (every tenant scored by the ensemble alone)",
            )

    def close(self) -> None:
        try:
            if self._pending is not None and not self._pending[1].exception():
                try:
                    self.finish()
                except Stopped:  # stopping during an outage: the batch is replayed at next start
                    pass
            self.producer.flush(10)
            self.consumer.close()
        finally:
            self._writer.shutdown()
            self.gauges.clear()
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

    # -- one micro-batch ---------------------------------------------------------------------
    def process(self, msgs: list[Message]) -> None:
        """Run the stages on one micro-batch; its database write overlaps the next batch.

        The previous batch is finished (written, alerts published, offsets committed) before
        this one is handed to the writer thread, so commits stay in consumption order.
        """
        s = self.s
        self._refresh()
        epoch = self._epoch
        # a stage raising on the batch costs only the records that make it raise (stage_error)
        out = run_isolated(
            self._run_chain,
            msgs,
            _message_letter,
            self.stages.detect if self.stateful else None,
            self._history,
        )
        batch, dead, alerts, alerts_in, windows = (
            out.batch,
            out.dead,
            out.alerts,
            out.alerts_in,
            out.windows,
        )
        t_produce = time.perf_counter()
        if dead:
            kq.produce_dead_letters(self.producer, s.topic_dlq, dead)
        if self.metric_out and len(batch):
            vals, keys = encode_metrics(batch)
            kq.produce_all(self.producer, self.metric_out, vals, keys)
        if self.chain.has_detect and windows is not None:
            recs = windows.records()
            kq.produce_all(
                self.producer,
                s.topic_score,
                [orjson.dumps(r) for r in recs],
                [f"{r['tenant_id']}|{r['host']}" for r in recs],
            )
        if alerts and self.sink is None:
            kq.produce_all(
                self.producer,
                s.topic_alert,
                [kq.encode_alert(a) for a in alerts],
                [a.partition_key for a in alerts],
            )
        produce_s = time.perf_counter() - t_produce
        self.finish()
        self._produce_s += produce_s  # observed with the flush that makes it durable
        if self.stateful and self._epoch != epoch:
            # partitions were revoked (and maybe restored from their checkpoints) while finish()
            # waited out an outage: this batch was detected on the state from before, so it is
            # dropped unwritten and uncommitted; its records are read again from the checkpoints
            log.info(
                "a rebalance while waiting out an outage: %d records are read again from "
                "the checkpoints",
                len(msgs),
            )
            return
        st = self.stats
        st.batches += 1
        st.consumed += len(msgs)
        st.dead += len(dead)
        st.alerts += len(alerts)
        count_events("kafka", len(msgs), 0, Counter(d.reason for d in dead))
        offsets = kq.next_offsets(msgs)
        if self.idle_close:
            now = time.monotonic()
            for tp in offsets:
                self._rx_at[tp.partition] = now
                self._pos[tp.partition] = tp.offset
        cps = self._checkpoints(offsets)
        if self.sink is None:
            self._timed_flush()
            if cps:
                self._retry_pg(
                    "checkpoint save", lambda: self._save_checkpoints(cps), self._reconnect_ref
                )
            with timed("commit"):
                self._commit(offsets)
        else:
            args = (batch, msgs, alerts + alerts_in, windows, cps)
            fut = self._writer.submit(self._write, *args)
            self._pending = (offsets, fut, bool(alerts_in), args)

    # -- idle close ----------------------------------------------------------------------------
    def _resume(self) -> None:
        """Resume after an outage: the pause is no silence of the partitions (their records
        were not fetched), so their idle time starts again."""
        paused = self._paused
        super()._resume()
        if paused:
            self._idle_restart()

    def _idle_restart(self) -> None:
        now = time.monotonic()
        for p in self._rx_at:
            self._rx_at[p] = now

    def _idle_close(self) -> None:
        """Tick the partitions idle for ``EVENTOPS_IDLE_CLOSE_WALL_S`` and write what closes.

        Idle: read to its end (the end offset the consumer reported is at or past the next
        offset processed) and no record since :attr:`_rx_at`. Looked at every
        :data:`IDLE_CHECK_S`; while a service is degraded the idle time starts again (no write
        could be made, and what was produced meanwhile may not be fetched yet). The tick runs on
        the main thread, before the batch in flight is finished (detect's state is this
        thread's; the batch's checkpoint blobs are made already); its rows are written after
        that batch's commit, so commits stay in order.
        """
        if not self.idle_close:
            return
        now = time.monotonic()
        if now - self._idle_checked < IDLE_CHECK_S:
            return
        self._idle_checked = now
        if self._paused or self.health.is_degraded():
            self._idle_restart()
            return
        wall, det = self.s.idle_close_wall_s, self.stages.detect
        epoch = self._epoch
        outs = []
        for p, at in self._rx_at.items():
            if p not in det.parts or self._eof.get(p, -2) < self._pos.get(p, -1):
                continue
            if now - at >= wall:
                out = det.tick(p, now - at)
                if out.windows is not None or out.alerts:
                    outs.append((p, out))
        if not outs:
            return
        self.finish()
        if self._epoch != epoch:  # a rebalance while finish() waited out an outage
            return  # (the partitions' new owner restores them from their checkpoints)
        for p, out in outs:
            self._write_idle(p, out)

    def _write_idle(self, p: int, out) -> None:
        """The windows and alert transitions of partition ``p``'s idle close, with its
        checkpoint at its unchanged offset: produced (scores, and alerts when no sink follows)
        and written like a batch's, offsets untouched."""
        det, s = self.stages.detect, self.s
        windows, alerts = out.windows, out.alerts
        blob = det.snapshot(p)
        cps = [Checkpoint(self.group, self.inputs[0], p, self._pos[p], blob)]
        self._with_cp.add(p)
        self._history.rebase(det, {p: blob})
        n = len(windows) if windows is not None else 0
        self.stats.idle_closed += n
        self.stats.alerts += len(alerts)
        log.info(
            "%s[%d]: idle for %.0f s: %d windows closed by processing time, %d alert transitions",
            self.inputs[0],
            p,
            time.monotonic() - self._rx_at[p],
            n,
            len(alerts),
        )
        if windows is not None:
            recs = windows.records()
            kq.produce_all(
                self.producer,
                s.topic_score,
                [orjson.dumps(r) for r in recs],
                [f"{r['tenant_id']}|{r['host']}" for r in recs],
            )
        if self.sink is None:
            if alerts:
                kq.produce_all(
                    self.producer,
                    s.topic_alert,
                    [kq.encode_alert(a) for a in alerts],
                    [a.partition_key for a in alerts],
                )
            self._flush()
            self._retry_pg(
                "checkpoint save", lambda: self._save_checkpoints(cps), self._reconnect_ref
            )
            return
        args = (MetricBatch.empty(), [], alerts, windows, cps)
        self._pending = ([], self._writer.submit(self._write, *args), False, args)
        self.finish()

    def _save_checkpoints(self, cps: list[Checkpoint]) -> None:
        with self.conn.transaction():
            save_checkpoints(self.conn, cps)
        self._checkpoints_stored(cps)

    def _checkpoints_stored(self, cps: list[Checkpoint]) -> None:
        self.gauges.checkpoint_stored(cp.partition for cp in cps)

    # -- telemetry -----------------------------------------------------------------------------
    def _timed_flush(self) -> None:
        """:meth:`_flush`, observed as ``produce`` with the batch's produce calls."""
        t0 = time.perf_counter()
        self._flush()
        observe_stage("produce", self._produce_s + time.perf_counter() - t0)
        self._produce_s = 0.0

    def _run_chain(self, msgs: list[Message]) -> StageOutput:
        """The chain on ``msgs`` (any slice of a micro-batch); raises :class:`StageFailure`."""
        inputs = self.inputs
        # one input topic: every record is of it (no per-record lookup)
        topics = [inputs[0]] * len(msgs) if len(inputs) == 1 else [m.topic() for m in msgs]
        records = Records(
            [m.value() or b"" for m in msgs],
            topics,
            [m.partition() for m in msgs],
            [m.offset() for m in msgs],
        )
        return self.chain.run(self.stages, records)

    def _write(
        self,
        batch: MetricBatch,
        msgs: list[Message],
        events: list[AlertEvent],
        windows,
        cps: list[Checkpoint],
    ) -> tuple[int, list[AlertEvent]]:
        """The sink write (writer thread, or :meth:`finish` retrying it), and the dead letters
        of its event-id collisions, left in :attr:`_collisions`.

        :meth:`finish` produces them after the database commit and before it commits the
        offsets: a crash in between replays the batch, and the replay finds the same collisions
        again (their rows are still not stored), so none is lost.
        """
        with timed("sink"):
            out = self.sink.write(batch, events, windows, cps)
        self._collisions = []
        if self.sink.collided.size or self.sink.refused.size:
            # (``src`` indexes the records of the micro-batch, whatever the chain's first stage)
            self._collisions = sink_letters(
                self.sink, batch, self.inputs[0], lambda i: _message_origin(msgs[i])
            )
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
        cps = [
            Checkpoint(self.group, topic, p, o, det.snapshot(p))
            for p, o in self._next.items()
            if p in det.parts
        ]
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
            self._timed_flush()
            try:
                stored_n, stored_alerts = fut.result()
            except Exception as e:
                if not pg_unavailable(e):
                    raise
                # the writer thread is idle now (its task failed): the same batch is written
                # again from here on a new connection (idempotent)
                stored_n, stored_alerts = self._retry_pg(
                    "sink write", lambda: self._write(*args), self._reconnect_sink, failed=e
                )
            self.stats.stored += stored_n
            count_events("kafka", stored=stored_n)
            self._checkpoints_stored(args[4])
            if self._collisions:  # after the DB commit, before the offsets: see _write
                dead, self._collisions = self._collisions, []
                kq.produce_dead_letters(self.producer, self.s.topic_dlq, dead)
                self.stats.dead += len(dead)
                count_events("kafka", dead=Counter(d.reason for d in dead))
                self._flush()
            if from_topic:  # they came from the alert topic: already published
                seqs = [a.seq for a in stored_alerts]
                self._retry_pg(
                    "mark published", lambda: self.sink.mark_published(seqs), self._reconnect_sink
                )
            elif stored_alerts:
                self._publish(stored_alerts)
            if self._outbox_due:
                # after an outage: transitions a lost COMMIT reply hid from the retried write
                # (stored, so not returned again) are still unpublished
                self._publish_outbox()
            with timed("commit"):
                self._commit(offsets)
        finally:
            self._finishing = False

    def _publish(self, events: list[AlertEvent]) -> None:
        kq.produce_all(
            self.producer,
            self.s.topic_alert,
            [kq.encode_alert(a) for a in events],
            [a.partition_key for a in events],
        )
        self._flush()
        seqs = [a.seq for a in events]
        self._retry_pg(
            "mark published", lambda: self.sink.mark_published(seqs), self._reconnect_sink
        )

    def _publish_outbox(self) -> None:
        self._outbox_due = False
        pending = self._retry_pg("outbox", lambda: self.sink.unpublished(), self._reconnect_sink)
        if pending:
            log.info("publishing %d stored alert events not published yet", len(pending))
            self._publish(pending)


def _message_origin(m: Message) -> Origin:
    return m.value() or b"", m.topic(), m.partition(), m.offset()


def _message_letter(m: Message, failure: StageFailure) -> DeadLetter:
    return failure.letter(_message_origin(m))
