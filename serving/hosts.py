"""Hosts: the overview of a tenant's sources with their current anomaly level."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from core.errors import NotFound
from serving.deps import PoolDep, ReadKey
from serving.openapi import links
from serving.params import NamePath
from serving.series import Series, list_series

router = APIRouter(prefix="/hosts", tags=["hosts"])
RANK = {None: 0, "ok": 0, "warning": 1, "critical": 2}
LEVELS = ("ok", "warning", "critical")


class Host(BaseModel):
    host: str
    level: str  # ok | warning | critical: worst of open alerts and latest window scores
    max_score: float | None
    open_alerts: int
    series: int
    warming: int = Field(0, description="series whose latest score is warming (confidence below 1)")
    confidence: float | None = Field(
        None, description="lowest confidence among the latest scores of the host's series"
    )
    last_seen: datetime
    tags: dict


class HostDetail(Host):
    metrics: list[Series]


def _level(s: Series) -> int:
    return max(RANK.get(s.alert_severity, 0), RANK.get(s.score_severity, 0))


def summarize(series: list[Series]) -> list[HostDetail]:
    by: dict[str, list[Series]] = {}
    for s in series:
        by.setdefault(s.host, []).append(s)
    out = []
    for host, ss in by.items():
        scores = [s.score for s in ss if s.score is not None]
        conf = [s.score_confidence for s in ss if s.score_confidence is not None]
        out.append(
            HostDetail(
                host=host,
                level=LEVELS[max(_level(s) for s in ss)],
                max_score=max(scores) if scores else None,
                open_alerts=sum(1 for s in ss if s.alert_severity),
                series=len(ss),
                warming=sum(1 for s in ss if s.score_warming),
                confidence=min(conf) if conf else None,
                last_seen=max(s.last_ts for s in ss),
                tags=ss[0].tags,
                metrics=ss,
            )
        )
    return out


@router.get(
    "",
    response_model=list[Host],
    responses={200: links(host_detail={"host": "$response.body#/0/host"})},
)
async def hosts(pool: PoolDep, key: ReadKey) -> list[Host]:
    """Every host of the tenant with its anomaly level, worst first."""
    async with pool.connection() as conn:
        ss = await list_series(conn, key.tenant_id, limit=100_000)
    hs = summarize(ss)
    hs.sort(key=lambda h: (-LEVELS.index(h.level), -(h.max_score or 0.0), h.host))
    return [Host(**h.model_dump(exclude={"metrics"})) for h in hs]


@router.get(
    "/{host}",
    response_model=HostDetail,
    responses={
        200: links(
            series_get={
                "host": "$response.body#/host",
                "metric": "$response.body#/metrics/0/metric",
            },
            get_item={"source_id": "$response.body#/host"},
        )
    },
)
async def host_detail(pool: PoolDep, key: ReadKey, host: NamePath) -> HostDetail:
    """One host with each of its series."""
    async with pool.connection() as conn:
        ss = await list_series(conn, key.tenant_id, host=host, limit=10_000)
    if not ss:
        raise NotFound(f"host {host!r} not found")
    return summarize(ss)[0]
