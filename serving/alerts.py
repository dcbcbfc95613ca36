"""Alerts: list and live stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from serving.app import BroadcasterDep, PoolDep, SettingsDep
from serving.broadcast import Broadcaster

router = APIRouter(prefix="/alerts", tags=["alerts"])

TenantQ = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


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
    resolved_at: datetime | None


@router.get("", response_model=list[Alert])
async def list_alerts(
    pool: PoolDep, tenant: TenantQ,
    state: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Alert]:
    """Alerts of a tenant, newest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT alert_id, tenant_id, host, metric, value, severity, state, ts_event, rule,"
            " threshold, message, score, explanation, model_version, opened_at, resolved_at "
            "FROM alerts WHERE tenant_id = %s AND (%s::text IS NULL OR state = %s) "
            "ORDER BY ts_event DESC LIMIT %s",
            (tenant, state, state, limit),
        )
        cols = [d.name for d in cur.description]
        rows = await cur.fetchall()
    return [Alert(**dict(zip(cols, r, strict=True))) for r in rows]


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(
    request: Request, broadcaster: BroadcasterDep, settings: SettingsDep,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
) -> StreamingResponse:
    """Live alert events as Server-Sent Events (``event: alert``), optionally for one tenant."""
    sub = broadcaster.subscribe(tenant)
    return StreamingResponse(
        _events(request, broadcaster, sub, settings.sse_heartbeat_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(request: Request, b: Broadcaster, sub, heartbeat_s: float) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 3000\n: connected\n\n"
        while True:
            try:
                ev = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": heartbeat\n\n"
                continue
            ident = ev.get("seq") or ev.get("event_key", "")
            yield b"id: %s\nevent: alert\ndata: %s\n\n" % (str(ident).encode(), orjson.dumps(ev))
    finally:
        b.unsubscribe(sub)
