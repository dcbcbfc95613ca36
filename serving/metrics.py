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
from serving.downsample import buckets
from serving.openapi import links
from serving.params import NameQ
from serving.render import json_response
from serving.timerange import EndQ, StartQ, time_range
from storage import series as series_repo

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


POINT_COLS = series_repo.POINT_ROW


def _points(rows) -> Response:
    # typed columns in Point's field order: serialized without a per-row model (serving.render).
    # (Rendering these rows as JSON inside PostgreSQL cost less CPU in total but moved it into
    # the database backends, where the OS scheduler rather than the event loop's FIFO orders
    # it: the p99 at 50 clients doubled. benchmarks/bench_api.py)
    return json_response([dict(zip(POINT_COLS, r, strict=True)) for r in rows])


POINT_LINKS = links(
    series_get={"host": "$response.body#/0/host", "metric": "$response.body#/0/metric"},
    host_detail={"host": "$response.body#/0/host"},
)


@router.get("/cpu", response_model=list[Point], responses={200: POINT_LINKS})
async def cpu(
    pool: PoolDep,
    key: ReadKey,
    host: NameQ,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    """Most recent ``cpu_load`` samples of one host, newest first (the MVP's endpoint)."""
    async with pool.connection() as conn:
        rows = await series_repo.cpu_points(conn, key.tenant_id, host, limit)
    return _points(rows)


@router.get("/latest", response_model=list[Point], responses={200: POINT_LINKS})
async def latest(pool: PoolDep, key: ReadKey, metric: NameQ) -> Response:
    """The latest sample of ``metric`` for every host of the tenant (the MVP's endpoint)."""
    async with pool.connection() as conn:
        rows = await series_repo.latest_points(conn, key.tenant_id, metric)
    return _points(rows)


@router.get(
    "",
    response_model=Downsampled,
    responses={
        200: links(series_get={"host": "$response.body#/host", "metric": "$response.body#/metric"})
    },
)
async def metric_range(
    pool: PoolDep,
    key: ReadKey,
    host: NameQ,
    metric: NameQ,
    start: StartQ = None,
    end: EndQ = None,
    step: Annotated[
        float | None,
        Query(gt=0, le=366 * 86400, description="Bucket width in seconds (default: span / points)"),
    ] = None,
    points: Annotated[
        int,
        Query(ge=1, le=MAX_BUCKETS, description="Target number of buckets when no step is given"),
    ] = 300,
) -> Response:
    """Values of one series over ``[start, end)``, averaged per time bucket (min/max/count too)."""
    start, end = time_range(start, end)
    span = (end - start).total_seconds()
    step_s = max(step or math.ceil(span / points), span / MAX_BUCKETS, 0.001)
    async with pool.connection() as conn:
        got = await series_repo.range_arrays(conn, key.tenant_id, host, metric, start, end)
        if got is None:  # rows prove the series exists; only an empty range needs the lookup
            if not await series_repo.has_samples(conn, key.tenant_id, host, metric):
                raise NotFound(f"series {host}/{metric} not found")
            got = np.empty(0, np.int64), np.empty(0)
    ts, vals = got
    origin_us = (start - _EPOCH) // timedelta(microseconds=1)  # exact, unlike float seconds
    b = buckets(ts, vals, origin_us, max(1, round(step_s * 1e6)))
    stamps = np.datetime_as_string(
        b["start_us"].astype("datetime64[us]"), unit="us", timezone="UTC"
    )
    return json_response(
        {
            "host": host,
            "metric": metric,
            "start": start,
            "end": end,
            "step_s": float(step_s),
            "points": [
                {"ts": t, "avg": a, "min": lo, "max": hi, "count": n}
                for t, a, lo, hi, n in zip(
                    stamps.tolist(),
                    b["avg"].tolist(),
                    b["min"].tolist(),
                    b["max"].tolist(),
                    b["count"].tolist(),
                    strict=True,
                )
            ],
        }
    )
