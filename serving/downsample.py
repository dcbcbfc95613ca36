"""Time-bucket downsampling of one series, vectorized, for ``GET /metrics``.

PostgreSQL hands the range over as two arrays, ``array_agg(ts_event)`` (``timestamptz[]``) and
``array_agg(value)`` (``float8[]``), read from the covering index alone; :class:`TimestamptzArray`
and :class:`Float8Array` turn each binary array into a numpy array without a Python object per
element, and :func:`buckets` aggregates per bucket. Measured on 6 h of one 10 s series (2,150
rows), PostgreSQL execution time per request: ``GROUP BY date_bin(…)`` ≈ 0.7 ms, the two arrays
≈ 0.35 ms (≈ 0.85 ms if the times are converted with ``date_part('epoch', …)``, which goes
through ``numeric``); the numpy side is a few tens of microseconds.

Buckets are ``[origin + k·step, origin + (k+1)·step)`` like ``date_bin(step, ts, origin)``,
computed in integer microseconds so a sample on a boundary lands where PostgreSQL puts it.
"""

from __future__ import annotations

import struct

import numpy as np
from psycopg.adapt import Loader
from psycopg.pq import Format

__all__ = ["FLOAT8_ARRAY_OID", "TIMESTAMPTZ_ARRAY_OID", "Float8Array", "TimestamptzArray", "buckets"]

FLOAT8_ARRAY_OID, FLOAT8_OID = 1022, 701
TIMESTAMPTZ_ARRAY_OID, TIMESTAMPTZ_OID = 1185, 1184
#: timestamptz counts microseconds from 2000-01-01 00:00 UTC
PG_EPOCH_US = 946_684_800_000_000
_HEAD = struct.Struct("!iiI")


class _FixedArray(Loader):
    """Binary 1-d array of an 8-byte type without NULLs → numpy.

    PostgreSQL's binary array: ``ndim, has_null, elem_oid``, then ``(size, lower_bound)`` per
    dimension, then ``(int32 length, 8 bytes)`` per element — a fixed stride numpy reads as a
    structured array.
    """

    format = Format.BINARY
    elem_oid: int
    element: np.dtype

    def load(self, data) -> np.ndarray:
        ndim, has_null, oid = _HEAD.unpack_from(data)
        if ndim == 0:
            return np.empty(0, self.element["v"].newbyteorder("="))
        if ndim != 1 or has_null or oid != self.elem_oid:
            raise ValueError(f"expected a 1-d array of type {self.elem_oid} without NULLs "
                             f"(ndim={ndim}, nulls={has_null}, oid={oid})")
        (n,) = struct.unpack_from("!i", data, 12)
        return self.convert(np.frombuffer(data, self.element, n, 20)["v"])

    def convert(self, v: np.ndarray) -> np.ndarray:
        return v.astype(v.dtype.newbyteorder("="))


class Float8Array(_FixedArray):
    """``float8[]`` → ``np.ndarray[float64]``."""

    elem_oid, element = FLOAT8_OID, np.dtype([("len", ">i4"), ("v", ">f8")])


class TimestamptzArray(_FixedArray):
    """``timestamptz[]`` → ``np.ndarray[int64]`` of microseconds since the Unix epoch."""

    elem_oid, element = TIMESTAMPTZ_OID, np.dtype([("len", ">i4"), ("v", ">i8")])

    def convert(self, v: np.ndarray) -> np.ndarray:
        return v.astype(np.int64) + PG_EPOCH_US


def buckets(us: np.ndarray, values: np.ndarray, origin_us: int, step_us: int) -> dict[str, np.ndarray]:
    """Per non-empty bucket, in time order: ``start_us`` and ``avg``, ``min``, ``max``, ``count``.

    ``us``: sample times in microseconds since the Unix epoch.
    """
    if len(us) == 0:
        e = np.empty(0)
        return {"start_us": e.astype(np.int64), "avg": e, "min": e, "max": e, "count": e.astype(np.int64)}
    k = (us - origin_us) // step_us  # floor division: samples before the origin get k < 0
    order = np.argsort(k, kind="stable")
    k, v = k[order], values[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    count = np.diff(np.r_[first, len(k)])
    return {
        "start_us": origin_us + k[first] * step_us,
        "avg": np.add.reduceat(v, first) / count,
        "min": np.minimum.reduceat(v, first),
        "max": np.maximum.reduceat(v, first),
        "count": count,
    }
