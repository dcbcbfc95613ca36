"""The pipeline object: a contiguous chain of stages, run over the records of a micro-batch.

:func:`parse_chain` turns ``"normalize,enrich"`` into a :class:`Chain`; it is the only place a
stage name is read as a string. Runners ask the chain instead of comparing names: what it
starts and ends with (:attr:`Chain.first`, :attr:`Chain.last`), whether it detects
(:attr:`Chain.has_detect`, which also makes it stateful) or ends in the sink
(:attr:`Chain.ends_in_sink`), the topics it reads (:meth:`Chain.inputs`) and where its metric
stream goes when it stops before the sink (:meth:`Chain.output`).

:meth:`Chain.run` runs the chain's stages over :class:`Records` (the input records of a
micro-batch, or a slice of one, as columns) and returns one :class:`StageOutput`: the batch,
its dead letters, the alert events and the scored windows. Each stage is a :class:`Stage`
that advances that output in place:

* the entry stage reads the records — ``normalize`` validates raw agent bytes; a chain starting
  at ``enrich`` or ``detect`` decodes the metric stream (:mod:`pipeline.codec`); one starting
  at the ``sink`` splits its three input topics into metrics, alert events and windows;
* ``enrich`` adds inventory tags; ``detect`` scores, and its late events leave the batch as
  ``ts_too_old`` dead letters carrying their input record (:func:`pipeline.letters.late_letters`).

A stage that raises is named in :class:`StageFailure`; :func:`pipeline.isolation.run_isolated`
narrows it down to the records that make it raise. The sink itself is not run here: writing is
the runner's (one database transaction with the offsets, retried through outages), so a chain
only says that it ends there. Pure: no Kafka, no SQL.

>>> c = parse_chain("enrich,detect")
>>> str(c), c.first, c.has_detect, c.ends_in_sink
('enrich,detect', <StageName.ENRICH: 'enrich'>, True, False)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
import orjson

from core.batch import DeadLetter, MetricBatch
from core.reasons import DlqReason
from core.records import AlertEvent
from core.settings import Settings
from core.telemetry import STAGE_SECONDS
from pipeline.codec import decode_metrics
from pipeline.letters import Origin, late_letters
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.detect.window_rows import WindowRows


class StageName(StrEnum):
    """The stages, in pipeline order."""

    NORMALIZE = "normalize"
    ENRICH = "enrich"
    DETECT = "detect"
    SINK = "sink"


#: every stage, in order: the embedded runner's chain
STAGES = tuple(StageName)


@dataclass(frozen=True, slots=True)
class Records:
    """The input records of a micro-batch (or of a slice of one), as columns.

    Rows a chain makes of them keep the index of their record (``MetricBatch.src``), so a later
    dead letter carries that record's bytes and source (:meth:`origin`).
    """

    values: Sequence[bytes]
    topics: Sequence[str]
    partitions: Sequence[int]
    offsets: Sequence[int]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def topic(self) -> str:
        """The topic of the records (a chain starting at normalize reads one)."""
        return self.topics[0] if len(self.topics) else ""

    def origin(self, i: int) -> Origin:
        return bytes(self.values[i]), self.topics[i], self.partitions[i], self.offsets[i]

    def take(self, idx: Sequence[int]) -> Records:
        return Records(
            [self.values[i] for i in idx],
            [self.topics[i] for i in idx],
            [self.partitions[i] for i in idx],
            [self.offsets[i] for i in idx],
        )


@dataclass
class StageOutput:
    """What a chain made of (a slice of) a micro-batch."""

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
        self.stage = str(stage)

    def letter(self, origin: Origin) -> DeadLetter:
        """The ``stage_error`` dead letter of the record ``origin`` that alone makes it raise."""
        raw, topic, part, off = origin
        return DeadLetter(raw, DlqReason.STAGE_ERROR, str(self), topic, part, off, self.stage)


class StageObjects(Protocol):
    """The stage objects a chain calls (:class:`pipeline.stageset.StageSet` in the runners)."""

    #: its topic names tell a chain starting at the sink which input record is which
    s: Settings | None
    enricher: Callable[[MetricBatch], MetricBatch]
    detect: DetectStage

    def normalize(
        self, raws: Sequence[bytes], topic: str, partitions: Sequence[int], offsets: Sequence[int]
    ) -> tuple[MetricBatch, list[DeadLetter]]: ...


class Stage(Protocol):
    """One stage as a chain runs it: advances ``out``, what the stages before it made of
    ``records``, in place, with the stage objects of ``stages``; raises when it fails."""

    name: StageName

    def __call__(self, stages: StageObjects, records: Records, out: StageOutput) -> None: ...


class _Normalize:
    name = StageName.NORMALIZE

    def __call__(self, stages: StageObjects, records: Records, out: StageOutput) -> None:
        out.batch, out.dead = stages.normalize(
            records.values, records.topic, records.partitions, records.offsets
        )


class _Decode:
    """Entry of a chain starting after normalize: the metric stream's records."""

    def __init__(self, name: StageName) -> None:
        self.name = name

    def __call__(self, stages: StageObjects, records: Records, out: StageOutput) -> None:
        out.batch, out.dead = decode_metrics(
            records.values, records.topics, records.partitions, records.offsets, self.name.value
        )


class _SinkInputs:
    """Entry of a chain starting at the sink: enriched metrics, alert events, scored windows.

    Metric rows keep the index of their record among all of the micro-batch's (``src``).
    """

    name = StageName.SINK

    def __call__(self, stages: StageObjects, records: Records, out: StageOutput) -> None:
        s = stages.s
        metric_idx: list[int] = []
        score_recs: list[dict] = []
        for i, (raw, topic) in enumerate(zip(records.values, records.topics, strict=True)):
            if topic == s.topic_enriched:
                metric_idx.append(i)
            elif topic in (s.topic_alert, s.topic_score):
                try:
                    rec = orjson.loads(raw)
                    if topic == s.topic_alert:
                        out.alerts_in.append(AlertEvent.from_dict(rec))
                    else:
                        score_recs.append(rec)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    # (not an alert event: a field missing, of the wrong type or value)
                    fault = (
                        str(e)
                        if isinstance(e, orjson.JSONDecodeError)
                        else f"{type(e).__name__}: {e}"
                    )
                    out.dead.append(
                        DeadLetter(
                            raw,
                            DlqReason.BAD_RECORD,
                            fault,
                            topic,
                            records.partitions[i],
                            records.offsets[i],
                            self.name.value,
                        )
                    )
        m = records.take(metric_idx)
        batch, dead = decode_metrics(m.values, m.topics, m.partitions, m.offsets, self.name.value)
        if batch.src is not None:
            batch.src = np.asarray(metric_idx, dtype=np.int64)[batch.src]
        out.batch = batch
        out.dead += dead
        out.windows = WindowRows.from_records(score_recs)


class _Enrich:
    name = StageName.ENRICH

    def __call__(self, stages: StageObjects, records: Records, out: StageOutput) -> None:
        out.batch = stages.enricher(out.batch)


class _Detect:
    """Detect on the batch; its late events leave the batch as ``ts_too_old`` letters."""

    name = StageName.DETECT

    def __call__(self, stages: StageObjects, records: Records, out: StageOutput) -> None:
        out.detect_input = out.batch
        res = stages.detect(out.batch)
        if len(res.late_idx):
            out.dead += late_letters(out.batch, res.late_idx, records.origin)
            keep = np.ones(len(out.batch), bool)
            keep[res.late_idx] = False
            out.batch = out.batch.take(keep)
        out.alerts = res.alerts
        out.windows = res.windows


@dataclass(frozen=True)
class Chain:
    """A contiguous run of :data:`STAGES`, in order (made by :func:`parse_chain`)."""

    names: tuple[StageName, ...]

    def __post_init__(self) -> None:
        first = self.names[0]
        entry: Stage = (
            _Normalize()
            if first is StageName.NORMALIZE
            else _SinkInputs()
            if first is StageName.SINK
            else _Decode(first)
        )
        steps: list[Stage] = [entry]
        if self.has_enrich:
            steps.append(_Enrich())
        if self.has_detect:
            steps.append(_Detect())
        object.__setattr__(self, "_steps", tuple(steps))
        # the stage-time histogram of each step; none for the entry that only decodes records
        timers = [
            None if isinstance(st, _Decode | _SinkInputs) else STAGE_SECONDS.labels(st.name.value)
            for st in steps
        ]
        object.__setattr__(self, "_timers", tuple(timers))

    def __str__(self) -> str:
        return ",".join(self.names)

    @property
    def slug(self) -> str:
        """``normalize-enrich``: the chain in a consumer group name."""
        return "-".join(self.names)

    @property
    def first(self) -> StageName:
        return self.names[0]

    @property
    def last(self) -> StageName:
        return self.names[-1]

    @property
    def has_normalize(self) -> bool:
        return StageName.NORMALIZE in self.names

    @property
    def has_enrich(self) -> bool:
        return StageName.ENRICH in self.names

    @property
    def has_detect(self) -> bool:
        """Detect keeps state per input partition: the chain is stateful (checkpoints)."""
        return StageName.DETECT in self.names

    @property
    def ends_in_sink(self) -> bool:
        return self.last is StageName.SINK

    @property
    def steps(self) -> tuple[Stage, ...]:
        """What :meth:`run` calls, in order: the entry stage that reads the records, then
        enrich and detect when the chain has them (the sink is the runner's)."""
        return self._steps  # type: ignore[attr-defined]

    def inputs(self, s: Settings) -> list[str]:
        """The topics a Kafka worker of this chain consumes."""
        return {
            StageName.NORMALIZE: [s.topic_raw],
            StageName.ENRICH: [s.topic_metric],
            StageName.DETECT: [s.topic_enriched],
            StageName.SINK: [s.topic_enriched, s.topic_alert, s.topic_score],
        }[self.first]

    def output(self, s: Settings) -> str | None:
        """Where the metric stream goes when the chain ends before the sink (else ``None``)."""
        if self.ends_in_sink:
            return None
        return {
            StageName.NORMALIZE: s.topic_metric,
            StageName.ENRICH: s.topic_enriched,
            StageName.DETECT: s.topic_enriched,
        }[self.last]

    def run(self, stages: StageObjects, records: Records) -> StageOutput:
        """The chain's stages on ``records``; raises :class:`StageFailure` naming the stage.

        Each stage call is timed (``eventops_stage_batch_seconds{stage}``, one observation per
        call: per micro-batch, or per slice while a failing batch is narrowed down).
        """
        out = StageOutput()
        stage = self.steps[0]
        clock = time.perf_counter
        try:
            for stage, timer in zip(self.steps, self._timers, strict=True):  # type: ignore[attr-defined]
                t0 = clock()
                stage(stages, records, out)
                if timer is not None:
                    timer.observe(clock() - t0)
        except Exception as e:
            raise StageFailure(stage.name, e) from e
        return out


def parse_chain(spec: str | Sequence[str] | Chain) -> Chain:
    """Validate a stage list: known names, pipeline order, contiguous.

    >>> parse_chain("normalize,enrich").names
    (<StageName.NORMALIZE: 'normalize'>, <StageName.ENRICH: 'enrich'>)
    >>> parse_chain("sink,detect")
    Traceback (most recent call last):
    ...
    ValueError: stages must be contiguous and in order
    normalize,enrich,detect,sink: ['sink', 'detect']
    """
    if isinstance(spec, Chain):
        return spec
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    known = [n.value for n in STAGES]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown stages {unknown}; choose a chain of {','.join(known)}")
    idx = [known.index(n) for n in names]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise ValueError(f"stages must be contiguous and in order {','.join(known)}: {names}")
    return Chain(tuple(StageName(n) for n in names))
