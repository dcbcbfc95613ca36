"""Metric reads (the MVP's endpoints)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from serving.app import PoolDep

router = APIRouter(prefix="/metrics", tags=["metrics"])

TenantQ = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
NameQ = Annotated[str, Query(min_length=1, max_length=255)]


class Point(BaseModel):
    ts_event: datetime
    value: float
    host: str
    metric: str
    unit: str
    tags: dict


@router.get("/cpu", response_model=list[Point])
async def cpu(
    pool: PoolDep, tenant: TenantQ, host: NameQ,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Point]:
    """Most recent ``cpu_load`` samples of one host, newest first."""
    return await _series(pool, tenant, host, "cpu_load", limit)


@router.get("/latest", response_model=list[Point])
async def latest(pool: PoolDep, tenant: TenantQ, metric: NameQ) -> list[Point]:
    """The latest sample of ``metric`` for every host of the tenant."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT DISTINCT ON (host) ts_event, value, host, metric, unit, tags FROM metrics "
            "WHERE tenant_id = %s AND metric = %s ORDER BY host, ts_event DESC LIMIT 10000",
            (tenant, metric),
        )
        rows = await cur.fetchall()
    return [Point(ts_event=r[0], value=r[1], host=r[2], metric=r[3], unit=r[4], tags=r[5]) for r in rows]


async def _series(pool, tenant: str, host: str, metric: str, limit: int) -> list[Point]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT ts_event, value, host, metric, unit, tags FROM metrics "
            "WHERE tenant_id = %s AND host = %s AND metric = %s ORDER BY ts_event DESC LIMIT %s",
            (tenant, host, metric, limit),
        )
        rows = await cur.fetchall()
    return [Point(ts_event=r[0], value=r[1], host=r[2], metric=r[3], unit=r[4], tags=r[5]) for r in rows]
