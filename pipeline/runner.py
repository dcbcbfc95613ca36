"""Runners: wire the pure stages to a source and to sinks.

* :class:`KafkaWorker` — a consumer-group member running a contiguous chain of stages
  (``normalize,enrich,detect,sink`` or any sub-chain). Per micro-batch: consume → stages →
  produce outputs and dead letters → flush → database commit (when the chain has ``sink``) →
  publish alert events (outbox) → commit offsets. Offsets are committed only after everything
  of the batch is durable, so a crash at any point replays the batch, and the deterministic
  event ids make the replay write nothing twice.
* :class:`EmbeddedPipeline` — all stages in one process, fed in memory (demo, backtests, tests);
  dead letters go to the ``dead_letters`` table and alerts to an in-process :class:`Bus`.
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
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from models.rules import RuleSet, RulesFile
from pipeline import db
from pipeline import kafka as kq
from pipeline.batch import DeadLetter, MetricBatch
from pipeline.registry import CHALLENGER, CHAMPION
from pipeline.settings import Settings
from pipeline.stages.anomaly import (
    ANOMALY_RULE,
    DetectStage,
    ModelProvider,
    WindowRows,
)
from pipeline.stages.enrich import Enricher
from pipeline.stages.normalize import NormalizeConfig, Normalizer

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


@dataclass
class Stats:
    batches: int = 0
    consumed: int = 0
    stored: int = 0
    dead: int = 0
    alerts: int = 0
    commit_failures: int = 0
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
        if "normalize" in self.chain:
            self.normalizer = Normalizer(normalize_config(self.s, db.load_tenants(self.conn)))
        if "enrich" in self.chain:
            self.enricher.update(db.load_inventory(self.conn))


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
        self.conn = db.connect(s)  # reference data (tenants, inventory, open alerts)
        self.sink = db.Sink(db.connect(s)) if "sink" in self.chain else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sink")
        self._pending: tuple | None = None
        self.stages = _Stages(s, self.chain, self.conn, model=model, shadow=shadow)
        self.errors = kq.DeliveryErrors()
        self.producer = kq.producer(s, on_delivery=self.errors)
        # detect keeps state per input partition and restores it on assignment from its
        # checkpoint (seeking to the checkpoint's offset): that needs eager assignment
        self.stateful = "detect" in self.chain
        self.consumer = kq.consumer(
            s, self.group, **({"partition.assignment.strategy": "range"} if self.stateful else {})
        )
        self._stop = threading.Event()
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
        if not self.stateful:
            return
        cps = db.load_checkpoints(self.conn, self.group, self.inputs[0])
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
                    open_alerts = [a for a in db.load_open_alerts(self.conn) if a["rule"] != ANOMALY_RULE]
                self.stages.detect.partition(tp.partition).rule_alerts.restore(open_alerts)
        # the restored blobs are the base to rewind to (the others are snapshotted)
        mine = {tp.partition for tp in parts}
        self._history.rebase(self.stages.detect, {p: cp[1] for p, cp in cps.items()
                                                  if p in mine and cp[1] is not None})
        consumer.assign(parts)

    def _on_revoke(self, consumer, parts) -> None:
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in parts])
        if self.stateful:
            try:
                self.finish()
            except Exception:  # the next owner replays from the last checkpoint
                log.exception("could not finish the in-flight batch on revoke")
            for tp in parts:
                self.stages.detect.drop(tp.partition)
                self._next.pop(tp.partition, None)
                self._with_cp.discard(tp.partition)
                self._restored.pop(tp.partition, None)
            self._history.rebase(self.stages.detect)

    def run(self, idle_exit_s: float | None = None) -> Stats:
        """Consume until :meth:`stop` (or SIGTERM), or after ``idle_exit_s`` without input."""
        self._await_models()
        self.consumer.subscribe(self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke)
        if self.sink is not None:
            self._publish_outbox()  # alert events a previous run stored but did not publish
        idle_since = time.monotonic()
        log.info("worker %s group=%s inputs=%s", ",".join(self.chain), self.group, self.inputs)
        try:
            while not self._stop.is_set():
                msgs = self.consumer.consume(self.s.batch_max_events, self.s.batch_max_wait_ms / 1000)
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        if err.fatal():
                            raise KafkaException(err)
                        log.warning("consumer error: %s", err)
                if not good:
                    self.finish()
                    if self._restored:
                        self._commit_restored()
                    self.stages.refresh()
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                self.process(good)
        finally:
            self.close()
        return self.stats

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
                self.finish()
            self.producer.flush(10)
            self.consumer.close()
        finally:
            self._writer.shutdown()
            for w in (self.watcher, self.shadow_watcher):
                if w is not None:
                    w.stop()
            self.conn.close()
            if self.sink is not None:
                self.sink.conn.close()

    # -- one micro-batch ---------------------------------------------------------------------
    def process(self, msgs: list[Message]) -> None:
        """Run the stages on one micro-batch; its database write overlaps the next batch.

        The previous batch is finished (written, alerts published, offsets committed) before
        this one is handed to the writer thread, so commits stay in consumption order.
        """
        s, chain = self.s, self.chain
        self.stages.refresh()
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
                           [f"{a['tenant_id']}|{a['host']}" for a in alerts])
        self.finish()
        st = self.stats
        st.batches += 1
        st.consumed += len(msgs)
        st.dead += len(dead)
        st.alerts += len(alerts)
        offsets = kq.next_offsets(msgs)
        cps = self._checkpoints(offsets)
        if self.sink is None:
            kq.flush(self.producer)
            self.errors.check()
            if cps:
                with self.conn.transaction():
                    db.save_checkpoints(self.conn, cps)
            self._commit(offsets)
        else:
            fut = self._writer.submit(self.sink.write, batch, alerts + alerts_in, windows, cps)
            self._pending = (offsets, fut, bool(alerts_in))

    def _run_stages(self, msgs: list[Message]) -> StageOutput:
        """The chain's stages on ``msgs`` (any slice of a micro-batch); raises :class:`StageFailure`."""
        chain = self.chain
        stage = chain[0]
        try:
            alerts_in: list[dict] = []
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

    def _checkpoints(self, offsets) -> list[db.Checkpoint]:
        """Detect state of every owned partition, every ``checkpoint_interval_s``.

        A partition's *first* commit always carries a checkpoint: a partition with committed
        offsets but no checkpoint would resume after the commit with empty windows and
        detector state, and score differently from an uninterrupted run.
        """
        if not self.stateful:
            return []
        topic = self.inputs[0]
        for tp in offsets:
            if tp.topic == topic:
                self._next[tp.partition] = tp.offset
                self._restored.pop(tp.partition, None)
        det = self.stages.detect
        now = time.monotonic()
        first = any(p not in self._with_cp for p in self._next if p in det.parts)
        if not first and now - self._checkpointed < self.s.checkpoint_interval_s:
            return []
        self._checkpointed = now
        cps = [db.Checkpoint(self.group, topic, p, o, det.snapshot(p))
               for p, o in self._next.items() if p in det.parts]
        self._with_cp.update(cp.partition for cp in cps)
        self._history.rebase(det, {cp.partition: cp.state for cp in cps})  # blobs made anyway
        return cps

    def finish(self) -> None:
        """Complete the batch in flight: outputs delivered, rows committed, then offsets."""
        if self._pending is None:
            return
        offsets, fut, from_topic = self._pending
        self._pending = None
        kq.flush(self.producer)
        self.errors.check()
        stored_n, stored_alerts = fut.result()  # a database failure stops the worker here
        self.stats.stored += stored_n
        if from_topic:  # they came from the alert topic: already published
            self.sink.mark_published([a["seq"] for a in stored_alerts])
        elif stored_alerts:
            self._publish(stored_alerts)
        self._commit(offsets)

    def _commit(self, offsets) -> None:
        """Commit input offsets; losing group membership on the way is not an error.

        A worker that was paused past its session timeout (GC, CPU starvation, SIGSTOP) finds
        its membership gone when it commits. Its rows and checkpoints are already in PostgreSQL
        and idempotent, so the batch is not lost: the rebalance that follows revokes the
        partitions and whoever owns them next resumes from the checkpoint or the last
        committed offset, replaying at most what this commit would have covered.
        """
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if err is None or err.fatal() or err.code() not in _MEMBERSHIP_LOST:
                raise
            self.stats.commit_failures += 1
            log.warning("offset commit refused (%s); the partitions' next owner replays from the "
                        "last checkpoint or committed offset", err.str())

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
            log.warning("could not read committed offsets: %s", e)
            return
        self._restored = {}
        ahead = [TopicPartition(topic, tp.partition, restored[tp.partition]) for tp in committed
                 if restored[tp.partition] > tp.offset]
        if ahead:
            log.info("committing restored checkpoint offsets %s",
                     {tp.partition: tp.offset for tp in ahead})
            self._commit(ahead)

    def _decode(self, msgs: list[Message], alerts_in: list[dict]) -> tuple[MetricBatch, list[DeadLetter], WindowRows | None]:
        first, s = self.chain[0], self.s
        if first == "normalize":
            batch, dead = self.stages.normalizer(
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
                        (alerts_in if m.topic() == s.topic_alert else score_recs).append(rec)
                    except orjson.JSONDecodeError as e:
                        dead.append(DeadLetter(m.value() or b"", "bad_record", str(e), m.topic(),
                                               m.partition(), m.offset(), "sink"))
            batch, d2 = kq.decode_metrics(metric_msgs, "sink")
            return batch, dead + d2, WindowRows.from_records(score_recs)
        batch, dead = kq.decode_metrics(msgs, first)
        return batch, dead, None

    def _publish(self, events: list[dict]) -> None:
        kq.produce_all(self.producer, self.s.topic_alert, [kq.encode_alert(a) for a in events],
                       [f"{a['tenant_id']}|{a['host']}" for a in events])
        kq.flush(self.producer)
        self.errors.check()
        self.sink.mark_published([a["seq"] for a in events])

    def _publish_outbox(self) -> None:
        pending = self.sink.unpublished()
        if pending:
            log.info("publishing %d alert events left by a previous run", len(pending))
            self._publish(pending)


def start_watcher(s: Settings, alias: str = CHAMPION):
    """A started watcher of the model ``alias`` for a detect worker; ``None`` when turned off.

    ``champion_poll_s <= 0`` turns off both; ``shadow_scoring=False`` the challenger's.
    """
    if s.champion_poll_s <= 0 or (alias == CHALLENGER and not s.shadow_scoring):
        return None
    from pipeline.registry import ChampionWatcher

    return ChampionWatcher(s, poll_s=s.champion_poll_s, alias=alias,
                           tracking_uri=s.mlflow_tracking_uri_override).start()


# -- stage outputs, late events and per-record isolation of stage failures -----------------

#: the input record of a row: (original bytes, topic, partition, offset)
Origin = tuple[bytes, str, int, int]


@dataclass
class StageOutput:
    """What the stages made of (a slice of) a micro-batch."""

    batch: MetricBatch = field(default_factory=MetricBatch.empty)
    dead: list[DeadLetter] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    alerts_in: list[dict] = field(default_factory=list)  # alert records read by a sink worker
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
            out.append(DeadLetter(raw, "ts_too_old", detail, topic, part, off, "detect"))
        return out
    for i in idx.tolist():
        ev = {"event_id": batch.event_id[i], "tenant_id": batch.tenant_id[i], "host": batch.host[i],
              "metric": batch.metric[i], "value": float(batch.value[i]), "ts": float(batch.ts[i]),
              "unit": batch.unit[i], "tags": batch.tags[i]}
        part = -1 if batch.partition is None else int(batch.partition[i])
        out.append(DeadLetter(orjson.dumps(ev), "ts_too_old", detail, "", part, -1, "detect"))
    return out


def _message_origin(m: Message) -> Origin:
    return m.value() or b"", m.topic(), m.partition(), m.offset()


def _message_letter(m: Message, failure: StageFailure) -> DeadLetter:
    return DeadLetter(m.value() or b"", "stage_error", str(failure), m.topic(), m.partition(),
                      m.offset(), failure.stage)


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
              normalizer: Normalizer, enricher: Enricher, detect: DetectStage,
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
        return DeadLetter(raw, "stage_error", str(failure), t, p, o, failure.stage)

    return run, letter


class Bus:
    """In-process publish/subscribe for the embedded runner's alert events."""

    def __init__(self) -> None:
        self._subs: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[dict], None]) -> Callable[[], None]:
        with self._lock:
            self._subs.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def publish(self, event: dict) -> None:
        with self._lock:
            subs = list(self._subs)
        for fn in subs:
            fn(event)


class EmbeddedPipeline:
    """normalize → enrich → detect → sink in one process, fed with raw event bytes."""

    def __init__(self, s: Settings, bus: Bus | None = None, source: str | None = None,
                 model: ModelProvider | None = None, shadow: ModelProvider | None = None) -> None:
        self.s = s
        self.bus = bus or Bus()
        # events without an agent id get <source>:0:<n>; unique per process start
        self.source = source or f"embedded-{int(time.time() * 1000)}"
        self.conn = db.connect(s)
        self.sink = db.Sink(self.conn)
        self.stages = _Stages(s, STAGES, self.conn, model=model, shadow=shadow)
        # no partitions or checkpoints here: re-arm open threshold alerts from storage
        self.stages.detect.partition(0).rule_alerts.restore(
            [a for a in db.load_open_alerts(self.conn) if a["rule"] != ANOMALY_RULE])
        self._history = DetectHistory()
        self._history.rebase(self.stages.detect)
        self.stats = Stats()
        self._seq = 0

    def feed(self, raws: Sequence[bytes]) -> tuple[int, list[DeadLetter], list[dict]]:
        """Process one micro-batch; returns (rows stored, dead letters, alert events)."""
        self.stages.refresh()
        first = self._seq
        self._seq += len(raws)
        stg = self.stages
        run, letter = raw_chain(raws, self.source, 0, first, stg.normalizer, stg.enricher, stg.detect)
        # a stage raising costs only the records that make it raise (stage_error)
        out = run_isolated(run, range(len(raws)), letter, stg.detect, self._history)
        batch, dead, alerts = out.batch, out.dead, out.alerts
        with self.conn.transaction():
            if dead:
                with self.conn.cursor().copy(
                    "COPY dead_letters (reason, detail, stage, source, raw) FROM STDIN"
                ) as cp:
                    for d in dead:
                        cp.write_row((d.reason, d.detail, d.stage,
                                      f"{d.topic}:{d.partition}:{d.offset}", d.raw))
            stored, stored_alerts = self.sink.write(batch, alerts, out.windows)
        self.sink.mark_published([a["seq"] for a in stored_alerts])
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
        self.conn.close()
