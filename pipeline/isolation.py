"""A stage that raises on a micro-batch costs only the records that make it raise.

:func:`run_isolated` runs a chain over a micro-batch (one call on the happy path); when a stage
raises (:class:`pipeline.chain.StageFailure`) it bisects the records, down to the single ones
that fail, which become ``stage_error`` dead letters with their original bytes and source;
everything else of the batch is processed as usual, in order. Detect is stateful, so a failed
attempt must not leave its half-done state behind: :class:`DetectHistory` rebuilds the state as
it was before the batch, and each failed half is undone from a snapshot. Both runners use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from core.batch import DeadLetter, MetricBatch
from pipeline.chain import StageFailure, StageOutput
from pipeline.stages.detect.stage import DetectStage

log = logging.getLogger(__name__)


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


def run_isolated(
    run: Callable[[Sequence], StageOutput],
    items: Sequence,
    letter: Callable[[object, StageFailure], DeadLetter],
    detect: DetectStage | None = None,
    history: DetectHistory | None = None,
) -> StageOutput:
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
        log.error(
            "stage %s failed on %d records (%s): isolating the records that make it fail",
            e.stage,
            len(items),
            e,
            exc_info=e.__cause__,
        )
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


def _bisect(
    run,
    items: Sequence,
    letter,
    detect: DetectStage | None,
    failure: StageFailure,
    outs: list[StageOutput],
    dead: list[DeadLetter],
) -> None:
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
