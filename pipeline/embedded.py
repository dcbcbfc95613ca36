"""The embedded runner: the whole chain in one process, fed in memory (demo, ``POST /ingest``,
backtests, tests).

:meth:`EmbeddedPipeline.feed` runs :data:`pipeline.chain.STAGES` over raw event bytes (record
``i`` of the pipeline's ``source`` gets offset ``n + i``, ``n`` the events fed before), isolated
per record on a stage error like the Kafka runner's, then hands the batch to the sink: rows,
windows, alerts and dead letters (the ``dead_letters`` table: there is no DLQ topic here) are
stored in one transaction of the sink. Alert events go to an in-process :class:`Bus`.

Idle close: :meth:`EmbeddedPipeline.tick` closes the windows of a pipeline that has been fed
nothing for ``EVENTOPS_IDLE_CLOSE_WALL_S`` (processing time; :meth:`DetectStage.tick`) and
stores them like a batch's; :meth:`EmbeddedPipeline.start_idle_close` runs it every second on a
thread of its own (the demo and ``POST /ingest`` do), :meth:`feed` and :meth:`tick` taking turns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.batch import DeadLetter, MetricBatch
from core.records import AlertEvent
from core.settings import Settings
from core.telemetry import count_events, timed
from pipeline.chain import STAGES, Records, StageFailure, StageOutput, parse_chain
from pipeline.health import Stats
from pipeline.isolation import DetectHistory, run_isolated
from pipeline.letters import Origin, sink_letters
from pipeline.stages.detect.score_alerts import ANOMALY_RULE
from pipeline.stages.detect.stage import DetectStage, ModelProvider
from pipeline.stageset import StageSet
from storage.alerts import load_open_alerts
from storage.connect import connect
from storage.partitions import Maintainer, PartitionPolicy, Partitions
from storage.sink import Sink

log = logging.getLogger(__name__)

#: the embedded runner's chain: every stage
CHAIN = parse_chain(STAGES)


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


@dataclass
class _Given:
    """Stage objects given one by one (:class:`pipeline.chain.StageObjects`)."""

    normalize: Callable[..., tuple[MetricBatch, list[DeadLetter]]]
    enricher: Callable[[MetricBatch], MetricBatch]
    detect: DetectStage
    s: Settings | None = None


def raw_chain(
    raws: Sequence[bytes],
    topic: str,
    partition: int,
    first_offset: int,
    normalizer: Callable[..., tuple[MetricBatch, list[DeadLetter]]],
    enricher: Callable[[MetricBatch], MetricBatch],
    detect: DetectStage,
) -> tuple[Callable[[Sequence[int]], StageOutput], Callable[[int, StageFailure], DeadLetter]]:
    """``(run, letter)`` for :func:`run_isolated`: :data:`CHAIN` over the records ``idx`` of
    ``raws`` (record ``i`` at ``topic[partition]@first_offset + i``), the embedded runner's."""
    stages = _Given(normalizer, enricher, detect)

    def origin(i: int) -> Origin:
        return bytes(raws[i]), topic, partition, first_offset + i

    def run(idx: Sequence[int]) -> StageOutput:
        n = len(idx)
        return CHAIN.run(
            stages,
            Records(
                [raws[i] for i in idx],
                [topic] * n,
                [partition] * n,
                [first_offset + i for i in idx],
            ),
        )

    def letter(i: int, failure: StageFailure) -> DeadLetter:
        return failure.letter(origin(i))

    return run, letter


class EmbeddedPipeline:
    """normalize → enrich → detect → sink in one process, fed with raw event bytes."""

    def __init__(
        self,
        s: Settings,
        bus: Bus | None = None,
        source: str | None = None,
        model: ModelProvider | None = None,
        shadow: ModelProvider | None = None,
        maintain: bool = False,
    ) -> None:
        self.s = s
        self.bus = bus or Bus()
        # events without an agent id get <source>:0:<n>; unique per process start
        self.source = source or f"embedded-{int(time.time() * 1000)}"
        self.conn = connect(s)
        self.sink = Sink(self.conn, Partitions(PartitionPolicy.from_settings(s)))
        # ``maintain``: partitions ahead + retention in a thread of this process (the demo)
        self.maintainer = Maintainer(s).start() if maintain else None
        self.stages = StageSet(s, CHAIN, self.conn, model=model, shadow=shadow)
        # no partitions or checkpoints here: re-arm open threshold alerts from storage
        self.stages.detect.partition(0).rule_alerts.restore(
            [a for a in load_open_alerts(self.conn) if a.rule != ANOMALY_RULE]
        )
        self._history = DetectHistory()
        self._history.rebase(self.stages.detect)
        self.stats = Stats()
        self._seq = 0
        # feed() and tick() take turns (one connection, one stage state)
        self._lock = threading.RLock()
        #: monotonic time of the last feed with records (or of the start): the idle clock
        self.fed_at = time.monotonic()
        self._ticker: threading.Thread | None = None
        self._closing = threading.Event()

    def feed(self, raws: Sequence[bytes]) -> tuple[int, list[DeadLetter], list[AlertEvent]]:
        """Process one micro-batch; returns (rows stored, dead letters, alert events)."""
        with self._lock:
            if raws:
                self.fed_at = time.monotonic()
            return self._feed(raws)

    def _feed(self, raws: Sequence[bytes]) -> tuple[int, list[DeadLetter], list[AlertEvent]]:
        self.stages.refresh()
        first = self._seq
        self._seq += len(raws)
        stg = self.stages
        run, letter = raw_chain(
            raws, self.source, 0, first, stg.normalize, stg.enricher, stg.detect
        )
        # a stage raising costs only the records that make it raise (stage_error)
        out = run_isolated(run, range(len(raws)), letter, stg.detect, self._history)
        batch, dead, alerts = out.batch, out.dead, out.alerts
        self.sink.ensure_partitions(
            batch, out.windows
        )  # DDL, if any, outside the batch's transaction
        with (
            timed("sink"),
            self.sink.conn.transaction(),  # the sink's: rows and dead letters stored together
        ):
            if dead:
                self.sink.write_dead_letters(dead)
            stored, stored_alerts = self.sink.write(batch, alerts, out.windows)
            if self.sink.collided.size or self.sink.refused.size:  # in the rows' transaction
                collided = sink_letters(
                    self.sink,
                    batch,
                    self.source,
                    lambda i: (bytes(raws[i]), self.source, 0, first + i),
                )
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
        count_events("embedded", len(raws), stored, Counter(d.reason for d in dead))
        return stored, dead, stored_alerts

    def tick(self, now: float | None = None) -> tuple[int, list[AlertEvent]]:
        """Idle close: if nothing was fed for ``EVENTOPS_IDLE_CLOSE_WALL_S`` up to ``now``
        (``time.monotonic()`` by default), close the windows due by processing time and store
        them (scores, features, alert transitions) in one transaction; returns (windows stored,
        alert events newly stored). Nothing happens before that, or with the setting at 0."""
        with self._lock:
            now = time.monotonic() if now is None else now
            det = self.stages.detect
            out = det.tick(0, now - self.fed_at)
            if out.windows is None and not out.alerts:
                return 0, []
            empty = MetricBatch.empty()
            try:
                self.sink.ensure_partitions(empty, out.windows)
                _, stored_alerts = self.sink.write(empty, out.alerts, out.windows)
            except Exception:
                self._history.rewind(det)  # not stored: the windows open again, for a next tick
                raise
            self._history.rebase(det)  # a later failed batch rewinds to after the tick
            self.sink.mark_published([a.seq for a in stored_alerts])
            for a in stored_alerts:
                self.bus.publish(a)
            n = 0 if out.windows is None else len(out.windows)
            self.stats.idle_closed += n
            self.stats.alerts += len(stored_alerts)
            log.info(
                "%s: idle for %.0f s: %d windows closed by processing time",
                self.source,
                now - self.fed_at,
                n,
            )
            return n, stored_alerts

    def start_idle_close(self, every_s: float = 1.0) -> EmbeddedPipeline:
        """Call :meth:`tick` every ``every_s`` on a daemon thread until :meth:`close` (a no-op
        with ``EVENTOPS_IDLE_CLOSE_WALL_S=0``)."""
        if self._ticker is not None or not self.s.idle_close_wall_s:
            return self
        self._ticker = threading.Thread(
            target=self._tick_forever, args=(every_s,), name="idle-close", daemon=True
        )
        self._ticker.start()
        return self

    def _tick_forever(self, every_s: float) -> None:
        warned = -float("inf")
        while not self._closing.wait(every_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the database away: tried again next time
                if time.monotonic() - warned > 60:
                    warned = time.monotonic()
                    log.warning("idle close failed; retrying every %.0f s", every_s, exc_info=True)
                try:
                    self.conn.rollback()
                except Exception:  # noqa: BLE001 - a broken connection stays broken
                    pass

    def close(self) -> None:
        self._closing.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
        with self._lock:
            if self.maintainer is not None:
                self.maintainer.stop()
            self.conn.close()
