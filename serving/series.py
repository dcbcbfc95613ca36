"""Series (one metric of one host): list and search, window features, scores and a score stream."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from core.errors import NotFound
from serving.deps import PoolDep, ReadKey, ServingDep, SettingsDep, StreamKey
from serving.openapi import links
from serving.params import NO_NUL, NamePath, OptNameQ
from serving.sse import SSE_HEADERS, parse_last_id, score_row, score_stream, stream_conf
from serving.timerange import EndQ, StartQ, time_range
from storage import series as series_repo

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
    score_confidence: float | None = Field(
        None, description="confidence of the latest score in [0, 1] (null: unknown)"
    )
    score_warming: bool | None = Field(
        None, description="the latest score is from a series still warming (confidence < 1)"
    )


class Score(BaseModel):
    window_start: datetime
    window_end: datetime
    score: float
    severity: str
    components: dict
    actual: float | None = Field(description="the window mean")
    expected: float | None = Field(description="what the detectors expected of the window mean")
    typical_deviation: float | None = Field(
        None, description="typical deviation of the window mean around `expected`"
    )
    lower: float | None = Field(description="expected band: expected - 3 typical deviations")
    upper: float | None = Field(description="expected band: expected + 3 typical deviations")
    confidence: float | None = Field(
        None,
        description="how much of the series' own history backs the score, in [0, 1] (windows "
        "learnt / the windows a series needs); null for windows stored before it was recorded",
    )
    warming: bool | None = Field(
        None,
        description="confidence below 1: the series is still learning and is scored partly "
        "from similar series",
    )
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


async def list_series(
    conn,
    tenant: str,
    q: str | None = None,
    host: str | None = None,
    metric: str | None = None,
    limit: int = 1000,
) -> list[Series]:
    rows = await series_repo.list_series(conn, tenant, q, host, metric, limit)
    return [
        Series(
            host=r[0],
            metric=r[1],
            unit=r[2],
            last_value=r[3],
            last_ts=r[4],
            score=r[5],
            score_severity=r[6],
            score_ts=r[7],
            alert_severity=r[8],
            tags=r[9],
            score_confidence=r[10],
            score_warming=r[11],
        )
        for r in rows
    ]


_SERIES_LINKS = {
    op: {"host": "$response.body#/0/host", "metric": "$response.body#/0/metric"}
    for op in ("series_get", "series_scores", "series_features", "metric_range")
}
SERIES_LINKS = links(**_SERIES_LINKS, host_detail={"host": "$response.body#/0/host"})


@router.get("", response_model=list[Series], responses={200: SERIES_LINKS})
async def series_list(
    pool: PoolDep,
    key: ReadKey,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=NO_NUL,
            description="Substring of host, metric or inventory tags; no NUL characters",
        ),
    ] = None,
    host: OptNameQ = None,
    metric: OptNameQ = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[Series]:
    """Series of the tenant with their latest value, score and open alert; ``q`` searches."""
    async with pool.connection() as conn:
        return await list_series(conn, key.tenant_id, q, host, metric, limit)


@router.get(
    "/{host}/{metric}",
    response_model=Series,
    responses={
        200: links(
            series_scores={"host": "$response.body#/host", "metric": "$response.body#/metric"},
            series_features={"host": "$response.body#/host", "metric": "$response.body#/metric"},
            metric_range={"host": "$response.body#/host", "metric": "$response.body#/metric"},
            host_detail={"host": "$response.body#/host"},
        )
    },
)
async def series_get(pool: PoolDep, key: ReadKey, host: NamePath, metric: NamePath) -> Series:
    """One series with its latest value, score and open alert."""
    async with pool.connection() as conn:
        found = await list_series(conn, key.tenant_id, host=host, metric=metric, limit=1)
    if not found:
        raise NotFound(f"series {host}/{metric} not found")
    return found[0]


async def _require(conn, tenant: str, host: str, metric: str) -> None:
    if not await series_repo.series_exists(conn, tenant, host, metric):
        raise NotFound(f"series {host}/{metric} not found")


@router.get("/{host}/{metric}/scores", response_model=list[Score])
async def series_scores(
    pool: PoolDep,
    key: ReadKey,
    host: NamePath,
    metric: NamePath,
    start: StartQ = None,
    end: EndQ = None,
    limit: LimitQ = 2000,
) -> list[Score]:
    """Anomaly scores of the series' windows in ``[start, end)`` (default: last 6 h), oldest
    first."""
    rows = await _windows(
        pool, series_repo.score_rows, key.tenant_id, host, metric, start, end, limit
    )
    return [Score(**score_row(r)) for r in rows]


@router.get("/{host}/{metric}/features", response_model=list[Features])
async def series_features(
    pool: PoolDep,
    key: ReadKey,
    host: NamePath,
    metric: NamePath,
    start: StartQ = None,
    end: EndQ = None,
    limit: LimitQ = 2000,
) -> list[Features]:
    """Window features of the series in ``[start, end)`` (default: last 6 h), oldest first."""
    rows = await _windows(
        pool, series_repo.feature_rows, key.tenant_id, host, metric, start, end, limit
    )
    cols = series_repo.FEATURE_ROW
    return [Features(**dict(zip(cols, r, strict=True))) for r in rows]


async def _windows(pool, read, tenant: str, host: str, metric: str, start, end, limit: int) -> list:
    """The newest ``limit`` window rows of a series in ``[start, end)`` (default last 6 h), oldest
    first, read by ``read`` (:func:`storage.series.score_rows` or ``feature_rows``)."""
    start, end = time_range(start, end, timedelta(hours=6))
    async with pool.connection() as conn:
        await _require(conn, tenant, host, metric)
        return await read(conn, tenant, host, metric, start, end, limit)


@router.get(
    "/{host}/{metric}/scores/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def series_score_stream(
    request: Request,
    pool: PoolDep,
    key: StreamKey,
    settings: SettingsDep,
    serving: ServingDep,
    host: str,
    metric: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_id: Annotated[str | None, Query(alias="last_event_id", max_length=20)] = None,
) -> StreamingResponse:
    """Live window scores of one series as Server-Sent Events (``event: score``)."""
    resume = parse_last_id(last_event_id, last_id)
    async with pool.connection() as conn:
        await _require(conn, key.tenant_id, host, metric)
    b = request.app.state.broadcaster
    body = score_stream(
        request,
        pool,
        request.app.state.keys,
        key,
        host,
        metric,
        resume,
        stream_conf(settings, serving),
        closed=lambda: b.closed,
    )
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
