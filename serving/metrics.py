"""Metric reads: the MVP's endpoints and time ranges downsampled per bucket."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from core.errors import NotFound
from serving.deps import PoolDep, ReadKey
from serving.downsample import (
    FLOAT8_ARRAY_OID,
    TIMESTAMPTZ_ARRAY_OID,
    Float8Array,
    TimestamptzArray,
    buckets,
)
from serving.openapi import links
from serving.params import NameQ
from serving.render import json_response
from serving.timerange import EndQ, StartQ, time_range

router = APIRouter(prefix="/metrics", tags=["metrics"])

MAX_BUCKETS = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Point(BaseModel):
    ts_event: datetime
    value: float
    host: str
    metric: str
    unit: str
    tags: dict


class Bucket(BaseModel):
    ts: datetime
    avg: float
    min: float
    max: float
    count: int


class Downsampled(BaseModel):
    host: str
    metric: str
    start: datetime
    end: datetime
    step_s: float
    points: list[Bucket]


POINT_COLS = tuple(Point.model_fields)


def _points(rows) -> Response:
    # typed columns in Point's field order: serialized without a per-row model (serving.render).
    # (Rendering these rows as JSON inside PostgreSQL cost less CPU in total but moved it into
    # the database backends, where the OS scheduler rather than the event loop's FIFO orders
    # it: the p99 at 50 clients doubled. benchmarks/bench_api.py)
    return json_response([dict(zip(POINT_COLS, r, strict=True)) for r in rows])


POINT_LINKS = links(series_get={"host": "$response.body#/0/host", "metric": "$response.body#/0/metric"},
                    host_detail={"host": "$response.body#/0/host"})


@router.get("/cpu", response_model=list[Point], responses={200: POINT_LINKS})
async def cpu(
    pool: PoolDep, key: ReadKey, host: NameQ,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    """Most recent ``cpu_load`` samples of one host, newest first (the MVP's endpoint)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT ts_event, value, host, metric, unit, tags FROM metrics "
            "WHERE tenant_id = %s AND host = %s AND metric = 'cpu_load' ORDER BY ts_event DESC LIMIT %s",
            (key.tenant_id, host, limit),
        )
        rows = await cur.fetchall()
    return _points(rows)


@router.get("/latest", response_model=list[Point], responses={200: POINT_LINKS})
async def latest(pool: PoolDep, key: ReadKey, metric: NameQ) -> Response:
    """The latest sample of ``metric`` for every host of the tenant (the MVP's endpoint)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            # one index probe per host (loose index scan over metrics_series_ts_value)
            "WITH RECURSIVE h AS ("
            " (SELECT host FROM metrics WHERE tenant_id = %(t)s ORDER BY host LIMIT 1)"
            " UNION ALL SELECT n.host FROM h, LATERAL (SELECT host FROM metrics"
            "   WHERE tenant_id = %(t)s AND host > h.host ORDER BY host LIMIT 1) n)"
            "SELECT l.ts_event, l.value, h.host, l.metric, l.unit, l.tags FROM h, LATERAL ("
            " SELECT ts_event, value, metric, unit, tags FROM metrics m"
            " WHERE m.tenant_id = %(t)s AND m.host = h.host AND m.metric = %(m)s"
            " ORDER BY ts_event DESC LIMIT 1) l ORDER BY h.host",
            {"t": key.tenant_id, "m": metric},
        )
        rows = await cur.fetchall()
    return _points(rows)


@router.get("", response_model=Downsampled, responses={200: links(
    series_get={"host": "$response.body#/host", "metric": "$response.body#/metric"})})
async def metric_range(
    pool: PoolDep, key: ReadKey, host: NameQ, metric: NameQ, start: StartQ = None, end: EndQ = None,
    step: Annotated[float | None, Query(gt=0, le=366 * 86400, description="Bucket width in seconds (default: span / points)")] = None,
    points: Annotated[int, Query(ge=1, le=MAX_BUCKETS, description="Target number of buckets when no step is given")] = 300,
) -> Response:
    """Values of one series over ``[start, end)``, averaged per time bucket (min/max/count too)."""
    start, end = time_range(start, end)
    span = (end - start).total_seconds()
    step_s = max(step or math.ceil(span / points), span / MAX_BUCKETS, 0.001)
    async with pool.connection() as conn:
        cur = conn.cursor(binary=True)
        cur.adapters.register_loader(FLOAT8_ARRAY_OID, Float8Array)
        cur.adapters.register_loader(TIMESTAMPTZ_ARRAY_OID, TimestamptzArray)
        await cur.execute(_RANGE, (key.tenant_id, host, metric, start, end))
        ts, vals = await cur.fetchone()
        if ts is None:  # rows prove the series exists; only an empty range needs the lookup
            await _require_series(conn, key.tenant_id, host, metric)
            ts, vals = np.empty(0, np.int64), np.empty(0)
    origin_us = (start - _EPOCH) // timedelta(microseconds=1)  # exact, unlike float seconds
    b = buckets(ts, vals, origin_us, max(1, round(step_s * 1e6)))
    stamps = np.datetime_as_string(b["start_us"].astype("datetime64[us]"), unit="us", timezone="UTC")
    return json_response({"host": host, "metric": metric, "start": start, "end": end, "step_s": float(step_s),
                          "points": [{"ts": t, "avg": a, "min": lo, "max": hi, "count": n}
                                     for t, a, lo, hi, n in zip(stamps.tolist(), b["avg"].tolist(),
                                                                 b["min"].tolist(), b["max"].tolist(),
                                                                 b["count"].tolist(), strict=True)]})


# the range as two arrays, bucketed in numpy (serving.downsample)
_RANGE = ("SELECT array_agg(ts_event), array_agg(value) FROM metrics"
          " WHERE tenant_id = %s AND host = %s AND metric = %s AND ts_event >= %s AND ts_event < %s")


async def _require_series(conn, tenant: str, host: str, metric: str) -> None:
    cur = await conn.execute(
        "SELECT 1 FROM metrics WHERE tenant_id = %s AND host = %s AND metric = %s LIMIT 1",
        (tenant, host, metric),
    )
    if await cur.fetchone() is None:
        raise NotFound(f"series {host}/{metric} not found")
