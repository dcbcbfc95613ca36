"""Alerts: filtered, cursor-paginated list; one alert with its history; the live SSE stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from core.errors import NotFound
from serving.deps import BroadcasterDep, PoolDep, ReadKey, ServingDep, SettingsDep, StreamKey
from serving.notify import muting
from serving.openapi import links
from serving.params import NamePath, OptNameQ
from serving.render import json_response
from serving.sse import SSE_HEADERS, alert_stream, parse_last_id, stream_conf
from serving.timerange import Instant
from storage import alerts as alerts_repo
from storage.schema import ALERT_COLUMNS

router = APIRouter(prefix="/alerts", tags=["alerts"])


class Alert(BaseModel):
    alert_id: str
    tenant_id: str
    host: str
    metric: str
    value: float
    severity: str
    state: str
    ts_event: datetime
    rule: str
    threshold: float | None
    message: str
    score: float | None
    explanation: dict
    model_version: str | None
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    feedback: str | None = None  # latest label: true_positive | false_positive
    #: ids of the silences muting this alert now (open), or that held back any of its
    #: notifications (resolved): it is stored and listed, and not notified
    silenced_by: list[str] = []


class AlertTransition(BaseModel):
    """One stored transition of an alert; ``payload`` is :meth:`core.records.AlertEvent.to_dict`."""

    seq: int
    kind: str
    created_at: datetime
    payload: dict


class AlertDetail(Alert):
    events: list[AlertTransition]
    incident_id: str | None = Field(
        None, description="the incident this alert is part of (`GET /incidents/{incident_id}`)"
    )


def alert_row(r) -> dict:
    """An alert row of :mod:`storage.alerts` as a dict of :class:`Alert`'s fields (``id``
    dropped)."""
    return dict(zip((*ALERT_COLUMNS, "feedback"), r[:-1], strict=True))


def to_alert(r) -> Alert:
    return Alert(**alert_row(r))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: ``<ts_event as epoch microseconds>.<alert row id>``: every string of this form is a position
#: (16 digits of microseconds stay within years 1653-2286, 18 digits of id within bigint)
CURSOR_PATTERN = r"^-?[0-9]{1,16}\.[0-9]{1,18}$"


def _cursor(ts: datetime, ident: int) -> str:
    return f"{(ts - _EPOCH) // timedelta(microseconds=1)}.{ident}"


def _uncursor(c: str) -> tuple[datetime, int]:
    us, ident = c.split(".")
    return _EPOCH + timedelta(microseconds=int(us)), int(ident)


ALERT_LINKS = links(
    get_alert={"alert_id": "$response.body#/0/alert_id"},
    give_feedback={"alert_id": "$response.body#/0/alert_id"},
    alert_feedback={"alert_id": "$response.body#/0/alert_id"},
)


@router.get(
    "",
    response_model=list[Alert],
    responses={
        200: {
            "headers": {
                "X-Next-Cursor": {
                    "description": "cursor of the next page",
                    "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                }
            },
            **ALERT_LINKS,
        }
    },
)
async def list_alerts(
    pool: PoolDep,
    key: ReadKey,
    state: Annotated[Literal["open", "resolved"] | None, Query()] = None,
    severity: Annotated[Literal["warning", "critical"] | None, Query()] = None,
    host: OptNameQ = None,
    metric: OptNameQ = None,
    since: Annotated[
        Instant, Query(description="ts_event >= since (RFC 3339 date-time with an offset)")
    ] = None,
    until: Annotated[
        Instant, Query(description="ts_event < until (RFC 3339 date-time with an offset)")
    ] = None,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="X-Next-Cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Alerts of the tenant, newest first; the next page's cursor is in ``X-Next-Cursor``."""
    async with pool.connection() as conn:
        rows = await alerts_repo.list_alerts(
            conn,
            key.tenant_id,
            state=state,
            severity=severity,
            host=host,
            metric=metric,
            since=since,
            until=until,
            before=_uncursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        headers = {}
        if len(rows) > limit:
            rows = rows[:limit]
            nxt = _cursor(rows[-1][ALERT_COLUMNS.index("ts_event")], rows[-1][-1])
            headers["X-Next-Cursor"] = nxt
            headers["Link"] = f'<?cursor={nxt}&limit={limit}>; rel="next"'
        out = [alert_row(r) for r in rows]
        for a, muted in zip(out, await muting(conn, key.tenant_id, out), strict=True):
            a["silenced_by"] = muted
    # typed columns in Alert's field order: serialized without a per-row model (serving.render)
    return json_response(out, headers)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    pool: PoolDep,
    key: StreamKey,
    broadcaster: BroadcasterDep,
    settings: SettingsDep,
    serving: ServingDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_id: Annotated[str | None, Query(alias="last_event_id", max_length=20)] = None,
) -> StreamingResponse:
    """Live alert events of the key's tenant as SSE (``id:`` = sequence; resumes after
    ``Last-Event-ID``)."""
    resume = parse_last_id(last_event_id, last_id)
    body = alert_stream(
        request,
        pool,
        broadcaster,
        request.app.state.keys,
        key,
        resume,
        stream_conf(settings, serving),
    )
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/{alert_id}",
    response_model=AlertDetail,
    responses={
        200: links(
            give_feedback={"alert_id": "$response.body#/alert_id"},
            alert_feedback={"alert_id": "$response.body#/alert_id"},
            host_detail={"host": "$response.body#/host"},
            series_get={"host": "$response.body#/host", "metric": "$response.body#/metric"},
            get_incident={"incident_id": "$response.body#/incident_id"},
        )
    },
)
async def get_alert(
    pool: PoolDep, key: ReadKey, serving: ServingDep, alert_id: NamePath
) -> AlertDetail:
    """One alert with its transitions (open, escalate, …, resolve) and its incident."""
    from serving.incidents import incident_of  # incidents are built of alerts

    async with pool.connection() as conn:
        row = await alerts_repo.get_alert(conn, key.tenant_id, alert_id)
        if row is None:
            raise NotFound(f"alert {alert_id!r} not found")
        events = [
            AlertTransition(seq=s, kind=k, created_at=c, payload=p)
            for s, k, c, p in await alerts_repo.alert_events(conn, key.tenant_id, alert_id)
        ]
        a = alert_row(row)
        (a["silenced_by"],) = await muting(conn, key.tenant_id, [a])
        gap = timedelta(seconds=serving.incident_gap_s)
        incident = await incident_of(conn, key.tenant_id, Alert(**a), gap)
    return AlertDetail(**a, events=events, incident_id=incident)
