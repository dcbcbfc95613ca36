"""Series (one metric of one host): list and search, window features, scores and a score stream."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from psycopg import sql
from pydantic import BaseModel

from core.errors import NotFound
from serving.deps import PoolDep, ReadKey, ServingDep, SettingsDep, StreamKey
from serving.openapi import links
from serving.params import NO_NUL, NamePath, OptNameQ
from serving.sse import SCORE_COLS, SSE_HEADERS, parse_last_id, score_row, score_stream, stream_conf
from serving.timerange import EndQ, StartQ, time_range

router = APIRouter(prefix="/series", tags=["series"])

LimitQ = Annotated[int, Query(ge=1, le=10_000)]


class Series(BaseModel):
    host: str
    metric: str
    unit: str
    last_value: float
    last_ts: datetime
    score: float | None = None
    score_severity: str | None = None
    score_ts: datetime | None = None
    alert_severity: str | None = None
    tags: dict = {}


class Score(BaseModel):
    window_start: datetime
    window_end: datetime
    score: float
    severity: str
    components: dict
    actual: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    explanation: dict
    model_version: str | None


class Features(BaseModel):
    window_start: datetime
    window_end: datetime
    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    last: float | None
    slope: float | None
    change: float | None
    gap: float | None
    # per-host cross-metric features (features/cross.py); null for windows stored before them
    host_metrics: int | None = None
    host_deviating: int | None = None
    host_max_z: float | None = None
    host_mean_z: float | None = None


# Distinct (host, metric) of a tenant by a loose index scan over metrics_series_ts_value: one index
# probe per series instead of a scan of every row; then the latest sample, score, open alert.
SERIES_SQL = """
WITH RECURSIVE s AS (
  (SELECT host, metric FROM metrics WHERE tenant_id = %(t)s
    AND (%(host)s::text IS NULL OR host = %(host)s) ORDER BY host, metric LIMIT 1)
  UNION ALL
  SELECT n.host, n.metric FROM s, LATERAL (
    SELECT host, metric FROM metrics WHERE tenant_id = %(t)s
      AND (%(host)s::text IS NULL OR host = %(host)s)
      AND (host, metric) > (s.host, s.metric)
    ORDER BY host, metric LIMIT 1) n
)
SELECT s.host, s.metric, l.unit, l.value, l.ts_event, sc.score, sc.severity, sc.window_end,
       al.severity, coalesce(i.tags, '{}'::jsonb)
FROM s
CROSS JOIN LATERAL (SELECT unit, value, ts_event FROM metrics m WHERE m.tenant_id = %(t)s
    AND m.host = s.host AND m.metric = s.metric ORDER BY ts_event DESC LIMIT 1) l
LEFT JOIN LATERAL (SELECT score, severity, window_end FROM scores c WHERE c.tenant_id = %(t)s
    AND c.host = s.host AND c.metric = s.metric ORDER BY window_start DESC LIMIT 1) sc ON true
LEFT JOIN LATERAL (SELECT severity FROM alerts a WHERE a.tenant_id = %(t)s AND a.host = s.host
    AND a.metric = s.metric AND a.state = 'open'
    ORDER BY (a.severity = 'critical') DESC LIMIT 1) al ON true
LEFT JOIN inventory i ON i.tenant_id = %(t)s AND i.source_id = s.host
WHERE (%(metric)s::text IS NULL OR s.metric = %(metric)s)
  AND (%(q)s::text IS NULL OR s.host ILIKE %(q)s OR s.metric ILIKE %(q)s
       OR i.tags::text ILIKE %(q)s)
ORDER BY s.host, s.metric
LIMIT %(limit)s
"""


def _like(q: str | None) -> str | None:
    if not q:
        return None
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_series(conn, tenant: str, q: str | None = None, host: str | None = None,
                      metric: str | None = None, limit: int = 1000) -> list[Series]:
    cur = await conn.execute(SERIES_SQL, {"t": tenant, "q": _like(q), "host": host,
                                          "metric": metric, "limit": limit})
    return [Series(host=r[0], metric=r[1], unit=r[2], last_value=r[3], last_ts=r[4], score=r[5],
                   score_severity=r[6], score_ts=r[7], alert_severity=r[8], tags=r[9])
            for r in await cur.fetchall()]


_SERIES_LINKS = {op: {"host": "$response.body#/0/host", "metric": "$response.body#/0/metric"}
                 for op in ("series_get", "series_scores", "series_features", "metric_range")}
SERIES_LINKS = links(**_SERIES_LINKS, host_detail={"host": "$response.body#/0/host"})


@router.get("", response_model=list[Series], responses={200: SERIES_LINKS})
async def series_list(
    pool: PoolDep, key: ReadKey,
    q: Annotated[str | None, Query(max_length=200, pattern=NO_NUL,
                                   description="Substring of host, metric or inventory tags; no NUL characters")] = None,
    host: OptNameQ = None,
    metric: OptNameQ = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[Series]:
    """Series of the tenant with their latest value, score and open alert; ``q`` searches."""
    async with pool.connection() as conn:
        return await list_series(conn, key.tenant_id, q, host, metric, limit)


@router.get("/{host}/{metric}", response_model=Series, responses={200: links(
    series_scores={"host": "$response.body#/host", "metric": "$response.body#/metric"},
    series_features={"host": "$response.body#/host", "metric": "$response.body#/metric"},
    metric_range={"host": "$response.body#/host", "metric": "$response.body#/metric"},
    host_detail={"host": "$response.body#/host"},
)})
async def series_get(pool: PoolDep, key: ReadKey, host: NamePath, metric: NamePath) -> Series:
    """One series with its latest value, score and open alert."""
    async with pool.connection() as conn:
        found = await list_series(conn, key.tenant_id, host=host, metric=metric, limit=1)
    if not found:
        raise NotFound(f"series {host}/{metric} not found")
    return found[0]


async def _require(conn, tenant: str, host: str, metric: str) -> None:
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM metrics WHERE tenant_id = %(t)s AND host = %(h)s AND metric = %(m)s)"
        " OR EXISTS (SELECT 1 FROM scores WHERE tenant_id = %(t)s AND host = %(h)s AND metric = %(m)s)",
        {"t": tenant, "h": host, "m": metric},
    )
    if not (await cur.fetchone())[0]:
        raise NotFound(f"series {host}/{metric} not found")


@router.get("/{host}/{metric}/scores", response_model=list[Score])
async def series_scores(
    pool: PoolDep, key: ReadKey, host: NamePath, metric: NamePath,
    start: StartQ = None, end: EndQ = None, limit: LimitQ = 2000,
) -> list[Score]:
    """Anomaly scores of the series' windows in ``[start, end)`` (default: last 6 h), oldest first."""
    rows = await _windows(pool, "scores", SCORE_COLS, key.tenant_id, host, metric, start, end, limit)
    return [Score(**score_row(r)) for r in rows]


@router.get("/{host}/{metric}/features", response_model=list[Features])
async def series_features(
    pool: PoolDep, key: ReadKey, host: NamePath, metric: NamePath,
    start: StartQ = None, end: EndQ = None, limit: LimitQ = 2000,
) -> list[Features]:
    """Window features of the series in ``[start, end)`` (default: last 6 h), oldest first."""
    cols = tuple(Features.model_fields)
    rows = await _windows(pool, "features", cols, key.tenant_id, host, metric, start, end, limit)
    return [Features(**dict(zip(cols, r, strict=True))) for r in rows]


async def _windows(pool, table: str, cols, tenant: str, host: str, metric: str, start, end, limit: int) -> list:
    """The newest ``limit`` window rows of a series in ``[start, end)`` (default last 6 h), oldest first."""
    start, end = time_range(start, end, timedelta(hours=6))
    async with pool.connection() as conn:
        await _require(conn, tenant, host, metric)
        q = sql.SQL(
            "SELECT {} FROM {} WHERE tenant_id = %s AND host = %s AND metric = %s"
            " AND window_start >= %s AND window_start < %s ORDER BY window_start DESC LIMIT %s"
        ).format(sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(table))
        cur = await conn.execute(q, (tenant, host, metric, start, end, limit))
        rows = await cur.fetchall()
    return rows[::-1]


@router.get("/{host}/{metric}/scores/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def series_score_stream(
    request: Request, pool: PoolDep, key: StreamKey, settings: SettingsDep, serving: ServingDep,
    host: str, metric: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_id: Annotated[str | None, Query(alias="last_event_id", max_length=20)] = None,
) -> StreamingResponse:
    """Live window scores of one series as Server-Sent Events (``event: score``)."""
    resume = parse_last_id(last_event_id, last_id)
    async with pool.connection() as conn:
        await _require(conn, key.tenant_id, host, metric)
    b = request.app.state.broadcaster
    body = score_stream(request, pool, request.app.state.keys, key, host, metric, resume,
                        stream_conf(settings, serving), closed=lambda: b.closed)
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
