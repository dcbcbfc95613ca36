"""Binary PostgreSQL arrays of 8-byte values as numpy arrays, without a Python object per element.

``GET /metrics`` reads a range as ``array_agg(ts_event)`` (``timestamptz[]``) and
``array_agg(value)`` (``float8[]``) (:func:`storage.series.range_arrays`); :class:`TimestamptzArray`
and :class:`Float8Array` turn each binary array into a numpy array, and
:func:`serving.downsample.buckets` aggregates them per bucket.
"""

from __future__ import annotations

import struct

import numpy as np
from psycopg.adapt import Loader
from psycopg.pq import Format

__all__ = [
    "FLOAT8_ARRAY_OID",
    "FLOAT8_OID",
    "TIMESTAMPTZ_ARRAY_OID",
    "TIMESTAMPTZ_OID",
    "Float8Array",
    "TimestamptzArray",
]

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
            raise ValueError(
                f"expected a 1-d array of type {self.elem_oid} without NULLs "
                f"(ndim={ndim}, nulls={has_null}, oid={oid})"
            )
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
