"""Dead letters made after normalize: late events (detect) and the rows the sink refused.

Each carries the *input record* of its row — original bytes and topic/partition/offset — found
through the row's ``MetricBatch.src`` index with an ``origin`` function of the micro-batch
(:meth:`pipeline.chain.Records.origin`). Without one (a batch built by hand, or the merged
output of a bisected batch, whose ``src`` indexes different slices) the event is re-encoded and
its offset is -1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from core.batch import DeadLetter, MetricBatch
from core.reasons import DlqReason
from pipeline.codec import encode_rows

#: the input record of a row: (original bytes, topic, partition, offset)
Origin = tuple[bytes, str, int, int]


def late_letters(
    batch: MetricBatch, idx: np.ndarray, origin: Callable[[int], Origin] | None = None
) -> list[DeadLetter]:
    """Events older than their closed window: dead letters with reason ``ts_too_old``.

    Each carries its input record's original bytes and topic/partition/offset, looked up with
    ``origin`` from the row's ``src`` index. Without them (a batch built by hand), the event is
    re-encoded and its offset is -1.
    """
    out = []
    detail = "event time behind a closed window"
    stage = DlqReason.TS_TOO_OLD.stage
    if origin is not None and batch.src is not None:
        for i in batch.src[idx].tolist():
            raw, topic, part, off = origin(i)
            out.append(DeadLetter(raw, DlqReason.TS_TOO_OLD, detail, topic, part, off, stage))
        return out
    for i, raw in zip(idx.tolist(), encode_rows(batch.take(idx), default=str), strict=True):
        part = -1 if batch.partition is None else int(batch.partition[i])
        out.append(DeadLetter(raw, DlqReason.TS_TOO_OLD, detail, "", part, -1, stage))
    return out


def collision_letters(
    batch: MetricBatch,
    idx: np.ndarray,
    topic: str,
    origin: Callable[[int], Origin] | None = None,
    reason: DlqReason = DlqReason.DUPLICATE_EVENT_ID,
) -> list[DeadLetter]:
    """Rows ``idx`` the sink refused, as dead letters of stage ``sink``.

    ``duplicate_event_id``: their tenant stored a different event under their event id;
    ``store_refused``: PostgreSQL refused the row's values (normalize should make that
    impossible; the row costs itself, not its batch). Each letter carries its input record's
    bytes and topic/partition/offset, from ``origin`` by the row's ``src`` index when the batch
    has one (``MetricBatch.src``); without it, the event as the sink received it (JSON) with its
    input ``topic`` and partition and offset -1.
    """
    src = batch.src
    stage = DlqReason(reason).stage
    with_origin = origin is not None and src is not None
    # without the input records: the rows as the sink received them
    encoded = [] if with_origin else encode_rows(batch.take(idx), default=str)
    out = []
    for j, i in enumerate(idx.tolist()):
        if reason == DlqReason.DUPLICATE_EVENT_ID:
            detail = (
                f"tenant {batch.tenant_id[i]} already stored a different event under "
                f"event_id {batch.event_id[i]!r}"
            )
        else:
            detail = "PostgreSQL refused the row's values"
        if with_origin:
            raw, t, part, off = origin(int(src[i]))
        else:
            raw = encoded[j]
            t, off = topic, -1
            part = -1 if batch.partition is None else int(batch.partition[i])
        out.append(DeadLetter(raw, reason, detail[:500], t, part, off, stage))
    return out


class Refusals(Protocol):
    """What the sink's last write refused (:class:`storage.sink.Sink` has both)."""

    collided: np.ndarray  #: row indices refused as ``duplicate_event_id``
    refused: np.ndarray  #: row indices PostgreSQL refused (``store_refused``)


def sink_letters(
    sink: Refusals, batch: MetricBatch, topic: str, origin: Callable[[int], Origin] | None = None
) -> list[DeadLetter]:
    """Dead letters of the rows the sink's last write refused (collisions and refused values)."""
    return collision_letters(batch, sink.collided, topic, origin) + collision_letters(
        batch, sink.refused, topic, origin, reason=DlqReason.STORE_REFUSED
    )
