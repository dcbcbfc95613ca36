"""Columnar micro-batches handed from stage to stage.

A batch is a handful of numpy columns of equal length; stages never hold per-event Python
objects beyond what decoding produced (strings and the tags dicts).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.reasons import DlqReason
from core.records import AlertEvent


def factorize(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uniques, codes) of an object column by hashing: per-unique work instead of a sort.

    >>> u, c = factorize(np.array(["b", "a", "b"], dtype=object))
    >>> u[c].tolist()
    ['b', 'a', 'b']
    """
    codes, uniques = pd.factorize(col, sort=False)
    return np.asarray(uniques, dtype=object), codes


#: longest ``DeadLetter.detail`` in characters (the Kafka header and the table column hold it)
DETAIL_MAX_CHARS = 500
_UNSAFE_DETAIL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_detail(text: str) -> str:
    """``text`` bounded to :data:`DETAIL_MAX_CHARS` with control characters and lone surrogates
    written as ``\\uXXXX``: valid UTF-8 and storable in PostgreSQL text, whatever the input.

    >>> safe_detail("bad \\x00 and \\ud800")
    'bad \\\\u0000 and \\\\ud800'
    """
    text = _UNSAFE_DETAIL.sub(lambda m: f"\\u{ord(m.group()):04x}", text[: DETAIL_MAX_CHARS + 1])
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


@dataclass(slots=True)
class DeadLetter:
    """An input that could not be processed: its original bytes, why, and where it came from.

    ``topic``/``partition``/``offset`` name the record the bytes were read from (for a worker
    consuming an intermediate topic, that topic's record). ``reason`` must be one of
    :class:`core.reasons.DlqReason` (its value as a string is accepted and converted; anything
    else raises ``ValueError``). ``detail`` is made safe on creation (:func:`safe_detail`), so
    no dead letter can fail to be produced or stored.

    >>> DeadLetter(b"{", "bad_json", "").reason is DlqReason.BAD_JSON
    True
    >>> DeadLetter(b"{", "oops", "")
    Traceback (most recent call last):
    ...
    ValueError: 'oops' is not a valid DlqReason
    """

    raw: bytes
    reason: DlqReason
    detail: str
    topic: str = ""
    partition: int = -1
    offset: int = -1
    stage: str = "normalize"

    def __post_init__(self) -> None:
        self.reason = DlqReason(self.reason)
        self.detail = safe_detail(self.detail)


@dataclass(slots=True)
class MetricBatch:
    """Validated metric events as columns.

    ``ts`` is event time in float64 epoch seconds; ``tags`` holds a dict (or None) per event.
    ``key`` is ``tenant_id|host``, the Kafka partitioning key of a series' events.
    """

    event_id: np.ndarray
    tenant_id: np.ndarray
    host: np.ndarray
    metric: np.ndarray
    value: np.ndarray
    ts: np.ndarray
    unit: np.ndarray
    tags: np.ndarray
    #: input partition of each event (int64), when the runner knows it; detect keeps state
    #: per partition
    partition: np.ndarray | None = None
    #: index (int64) of each row's input record in the micro-batch the runner handed to the first
    #: stage, so a later stage's dead letter carries that record's bytes and offset. Meaningful
    #: only within one micro-batch: :meth:`concat` drops it.
    src: np.ndarray | None = None

    COLUMNS = ("event_id", "tenant_id", "host", "metric", "value", "ts", "unit", "tags")

    def __len__(self) -> int:
        return int(self.value.shape[0])

    @classmethod
    def empty(cls) -> MetricBatch:
        obj = np.empty(0, dtype=object)
        return cls(obj, obj, obj, obj, np.empty(0), np.empty(0), obj, obj)

    def take(self, idx: np.ndarray) -> MetricBatch:
        """Rows selected by an index array or boolean mask."""
        part = None if self.partition is None else self.partition[idx]
        src = None if self.src is None else self.src[idx]
        cols = {c: getattr(self, c)[idx] for c in self.COLUMNS}
        return MetricBatch(**cols, partition=part, src=src)

    @classmethod
    def concat(cls, batches: list[MetricBatch]) -> MetricBatch:
        """Rows of ``batches`` in order (without ``src``: indexes of different micro-batches)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return dataclasses.replace(batches[0], src=None)
        part = None
        if all(b.partition is not None for b in batches):
            part = np.concatenate([b.partition for b in batches])
        cols = {c: np.concatenate([getattr(b, c) for b in batches]) for c in cls.COLUMNS}
        return cls(**cols, partition=part)

    def keys(self) -> list[str]:
        """Partition keys ``tenant_id|host``, one per event."""
        return [f"{t}|{h}" for t, h in zip(self.tenant_id, self.host, strict=True)]

    def sources(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        """Unique ``(tenant_id, host)`` pairs and each event's index into them."""
        return pairs(self.tenant_id, self.host)


def pairs(a: np.ndarray, b: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Unique (a, b) pairs of two object columns and the code of each row, via hashing.

    >>> u, c = pairs(
    ...     np.array(["t", "t", "u"], dtype=object), np.array(["x", "x", "x"], dtype=object)
    ... )
    >>> [u[i] for i in c]
    [('t', 'x'), ('t', 'x'), ('u', 'x')]
    """
    ua, ca = factorize(a)
    ub, cb = factorize(b)
    combined = ca.astype(np.int64) * len(ub) + cb
    uniq, codes = np.unique(combined, return_inverse=True)
    return [(ua[k // len(ub)], ub[k % len(ub)]) for k in uniq.tolist()], codes


@dataclass(slots=True)
class AlertBatch:
    """Alert transitions produced by detect: one :class:`AlertEvent` each (they are rare)."""

    events: list[AlertEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events)
