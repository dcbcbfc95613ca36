"""Records of the metric stream topics (``signals.metric.v1``, ``signals.enriched.v1``).

One JSON object per event, with the event id normalize gave it::

    {"event_id", "tenant_id", "host", "metric", "value", "ts", "unit", "tags"}

A chain that starts after normalize decodes them (:func:`decode_metrics`); one that ends before
the sink encodes its batch (:func:`encode_metrics`). Pure: columns in, columns out, no Kafka.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson

from core.batch import DeadLetter, MetricBatch
from core.reasons import DlqReason
from pipeline.stages.normalize import suspects, text_fault


def encode_rows(b: MetricBatch, default=None) -> list[bytes]:
    """One record per row of ``b`` (the metric stream's JSON object); ``default`` as orjson's
    (dead letters re-encoding a hand-built batch pass ``str``)."""
    dumps = orjson.dumps
    return [
        dumps(
            {
                "event_id": e,
                "tenant_id": t,
                "host": h,
                "metric": m,
                "value": v,
                "ts": ts,
                "unit": u,
                "tags": g,
            },
            default=default,
        )
        for e, t, h, m, v, ts, u, g in zip(
            b.event_id,
            b.tenant_id,
            b.host,
            b.metric,
            b.value.tolist(),
            b.ts.tolist(),
            b.unit,
            b.tags,
            strict=True,
        )
    ]


def encode_metrics(b: MetricBatch) -> tuple[list[bytes], list[str]]:
    """signals.metric.v1 / signals.enriched.v1 records and their keys (``tenant_id|host``)."""
    return encode_rows(b), b.keys()


def decode_metrics(
    values: Sequence[bytes],
    topics: Sequence[str],
    partitions: Sequence[int],
    offsets: Sequence[int],
    stage: str,
) -> tuple[MetricBatch, list[DeadLetter]]:
    """Inverse of :func:`encode_metrics` over the columns of a micro-batch's records.

    Records that do not decode to a valid row (wrong types, a non-finite number, text normalize
    would refuse) become ``bad_record`` dead letters of ``stage`` carrying the record's own
    bytes and topic/partition/offset. Rows keep the index of their record (``MetricBatch.src``).

    >>> rec = b'{"event_id":"e","tenant_id":"t","host":"h","metric":"m","value":1.5,"ts":2.0}'
    >>> b, dead = decode_metrics([b"junk", rec], ["x", "x"], [3, 3], [7, 8], "enrich")
    >>> b.host.tolist(), b.partition.tolist(), b.src.tolist()
    (['h'], [3], [1])
    >>> [(str(d.reason), d.topic, d.partition, d.offset, d.stage) for d in dead]
    [('bad_record', 'x', 3, 7, 'enrich')]
    >>> encode_metrics(b) == ([rec[:-1] + b',"unit":"","tags":null}'], ["t|h"])
    True
    """
    cols: list[list] = [[] for _ in range(8)]
    parts: list[int] = []
    src: list[int] = []
    dead: list[DeadLetter] = []
    loads = orjson.loads
    suspect = suspects(values)
    for i, raw in enumerate(values):
        try:
            d = loads(raw)
            row = (
                d["event_id"],
                d["tenant_id"],
                d["host"],
                d["metric"],
                float(d["value"]),
                float(d["ts"]),
                d.get("unit", ""),
                d.get("tags"),
            )
            fault = _row_fault(row)
            if fault is None and suspect is not None and suspect[i]:
                fault = text_fault(*row[:4], row[6], row[7])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            fault = f"{type(e).__name__}: {e}"
        if fault is not None:
            dead.append(
                DeadLetter(
                    raw, DlqReason.BAD_RECORD, fault, topics[i], partitions[i], offsets[i], stage
                )
            )
            continue
        for c, v in zip(cols, row, strict=True):
            c.append(v)
        parts.append(partitions[i])
        src.append(i)
    if not cols[0]:
        return MetricBatch.empty(), dead

    def obj(x: list) -> np.ndarray:
        a = np.empty(len(x), dtype=object)
        a[:] = x
        return a

    return MetricBatch(
        obj(cols[0]),
        obj(cols[1]),
        obj(cols[2]),
        obj(cols[3]),
        np.asarray(cols[4], dtype=np.float64),
        np.asarray(cols[5], dtype=np.float64),
        obj(cols[6]),
        obj(cols[7]),
        np.asarray(parts, dtype=np.int64),
        np.asarray(src, dtype=np.int64),
    ), dead


def _row_fault(row: tuple) -> str | None:
    """Why a decoded intermediate record cannot be a row (types, finiteness), else ``None``."""
    eid, t, h, m, v, ts, u, tags = row
    if not (
        type(eid) is str and type(t) is str and type(h) is str and type(m) is str and type(u) is str
    ):
        return "event_id, tenant_id, host, metric and unit must be strings"
    if tags is not None and type(tags) is not dict:
        return "tags must be an object"
    if not (math.isfinite(v) and math.isfinite(ts)):
        return "value and ts must be finite"
    return None
