"""Feedback: operators label alerts true or false positive; training reads table ``feedback``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pipeline.errors import NotFound
from serving.deps import PoolDep, ReadKey

router = APIRouter(tags=["feedback"])
COLS = ("id", "tenant_id", "alert_id", "label", "comment", "created_at", "key_id")
Label = Literal["true_positive", "false_positive"]


class FeedbackIn(BaseModel):
    label: Label
    comment: str = Field(default="", max_length=2000)


class Feedback(BaseModel):
    id: int
    tenant_id: str
    alert_id: str
    label: Label
    comment: str
    created_at: datetime
    key_id: str | None


@router.post("/alerts/{alert_id}/feedback", response_model=Feedback, status_code=201)
async def give_feedback(pool: PoolDep, key: ReadKey, alert_id: str, body: FeedbackIn) -> Feedback:
    """Label an alert as a true or false positive (the latest label counts)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO feedback (tenant_id, alert_id, label, comment, key_id) "
            "SELECT tenant_id, alert_id, %s, %s, %s FROM alerts WHERE tenant_id = %s AND alert_id = %s "
            "RETURNING " + ", ".join(COLS),
            (body.label, body.comment.replace("\x00", ""), key.key_id, key.tenant_id, alert_id))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"alert {alert_id!r} not found")
    return Feedback(**dict(zip(COLS, row, strict=True)))


@router.get("/alerts/{alert_id}/feedback", response_model=list[Feedback])
async def alert_feedback(pool: PoolDep, key: ReadKey, alert_id: str) -> list[Feedback]:
    """Every label given to one alert, newest first."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM alerts WHERE tenant_id = %s AND alert_id = %s",
                                 (key.tenant_id, alert_id))
        if await cur.fetchone() is None:
            raise NotFound(f"alert {alert_id!r} not found")
        cur = await conn.execute(
            "SELECT " + ", ".join(COLS) + " FROM feedback WHERE tenant_id = %s AND alert_id = %s "
            "ORDER BY created_at DESC, id DESC", (key.tenant_id, alert_id))
        rows = await cur.fetchall()
    return [Feedback(**dict(zip(COLS, r, strict=True))) for r in rows]


@router.get("/feedback", response_model=list[Feedback])
async def list_feedback(
    pool: PoolDep, key: ReadKey,
    label: Annotated[Label | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Feedback]:
    """The tenant's labels, newest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT " + ", ".join(COLS) + " FROM feedback WHERE tenant_id = %s "
            "AND (%s::text IS NULL OR label = %s) ORDER BY created_at DESC, id DESC LIMIT %s",
            (key.tenant_id, label, label, limit))
        rows = await cur.fetchall()
    return [Feedback(**dict(zip(COLS, r, strict=True))) for r in rows]
