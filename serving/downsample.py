"""Time-bucket downsampling of one series, vectorized, for ``GET /metrics``.

PostgreSQL hands the range over as two arrays, ``array_agg(ts_event)`` (``timestamptz[]``) and
``array_agg(value)`` (``float8[]``), read from the covering index alone;
:class:`storage.arrays.TimestamptzArray` and :class:`storage.arrays.Float8Array` turn each binary
array into a numpy array without a Python object per element, and :func:`buckets` aggregates per
bucket. Measured on 6 h of one 10 s series (2,150 rows), PostgreSQL execution time per request:
``GROUP BY date_bin(…)`` ≈ 0.7 ms, the two arrays ≈ 0.35 ms (≈ 0.85 ms if the times are
converted with ``date_part('epoch', …)``, which goes through ``numeric``); the numpy side is a
few tens of microseconds.

Buckets are ``[origin + k·step, origin + (k+1)·step)`` like ``date_bin(step, ts, origin)``,
computed in integer microseconds so a sample on a boundary lands where PostgreSQL puts it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["buckets"]


def buckets(
    us: np.ndarray, values: np.ndarray, origin_us: int, step_us: int
) -> dict[str, np.ndarray]:
    """Per non-empty bucket, in time order: ``start_us`` and ``avg``, ``min``, ``max``, ``count``.

    ``us``: sample times in microseconds since the Unix epoch.
    """
    if len(us) == 0:
        e = np.empty(0)
        return {
            "start_us": e.astype(np.int64),
            "avg": e,
            "min": e,
            "max": e,
            "count": e.astype(np.int64),
        }
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
