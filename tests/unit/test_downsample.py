"""Bucketing of ``GET /metrics`` (serving.downsample) against a per-sample reference, and the
binary array loaders it reads (storage.arrays)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from serving.downsample import buckets
from storage.arrays import FLOAT8_OID, TIMESTAMPTZ_OID, Float8Array, TimestamptzArray


def reference(us, values, origin_us, step_us):
    out: dict[int, list[float]] = {}
    for t, v in zip(us, values, strict=True):
        k = math.floor((t - origin_us) / step_us)
        out.setdefault(k, []).append(v)
    return [
        (origin_us + k * step_us, sum(vs) / len(vs), min(vs), max(vs), len(vs))
        for k, vs in sorted(out.items())
    ]


@pytest.mark.parametrize("seed", range(5))
def test_buckets_equal_a_per_sample_reference(seed):
    rnd = np.random.default_rng(seed)
    n = int(rnd.integers(1, 3000))
    origin_us = 1_790_000_000_000_000 + int(rnd.integers(0, 10**6))
    step_us = int(rnd.choice([1_000, 72_000_000, 60_000_000, 3_600_000_000]))
    # unordered times, some before the origin, some exactly on bucket boundaries
    us = origin_us + rnd.integers(-3 * step_us, 50 * step_us, n)
    us[: n // 4] = origin_us + rnd.integers(-2, 40, n // 4) * step_us
    vals = rnd.normal(50, 20, n)
    got = buckets(us, vals, origin_us, step_us)
    want = reference(us.tolist(), vals.tolist(), origin_us, step_us)
    assert got["start_us"].tolist() == [w[0] for w in want]
    assert got["count"].tolist() == [w[4] for w in want]
    assert np.allclose(got["avg"], [w[1] for w in want], rtol=1e-12)
    assert got["min"].tolist() == [w[2] for w in want] and got["max"].tolist() == [
        w[3] for w in want
    ]


def test_empty_range_has_no_bucket():
    got = buckets(np.empty(0, np.int64), np.empty(0), 0, 10)
    assert all(len(v) == 0 for v in got.values())


def _pg_array(oid, fmt, xs, null_at=None) -> bytes:
    head = struct.pack("!iiIii", 1, int(null_at is not None), oid, len(xs), 1)
    body = b"".join(
        struct.pack("!i", -1) if i == null_at else struct.pack("!i" + fmt, 8, x)
        for i, x in enumerate(xs)
    )
    return head + body


def test_binary_float8_array_loads_as_numpy():
    loader = Float8Array(0)
    xs = [1.5, -2.25, 1e300, 0.0]
    got = loader.load(_pg_array(FLOAT8_OID, "d", xs))
    assert got.dtype == np.float64 and got.tolist() == xs
    assert loader.load(struct.pack("!iiI", 0, 0, FLOAT8_OID)).tolist() == []
    with pytest.raises(ValueError, match="without NULLs"):
        loader.load(_pg_array(FLOAT8_OID, "d", xs, null_at=2))
    with pytest.raises(ValueError, match="type 701"):
        loader.load(_pg_array(TIMESTAMPTZ_OID, "q", [1]))


def test_binary_timestamptz_array_loads_as_unix_microseconds():
    loader = TimestamptzArray(0)
    # PostgreSQL counts from 2000-01-01: 0 is 946684800 s after the Unix epoch
    got = loader.load(
        _pg_array(TIMESTAMPTZ_OID, "q", [0, 1, -946_684_800_000_000, 843_000_000_123_456])
    )
    assert got.dtype == np.int64
    assert got.tolist() == [946_684_800_000_000, 946_684_800_000_001, 0, 1_789_684_800_123_456]
    assert loader.load(struct.pack("!iiI", 0, 0, TIMESTAMPTZ_OID)).dtype == np.int64
