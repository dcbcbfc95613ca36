"""Feedback: operators label alerts true or false positive; training reads table ``feedback``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from core.errors import NotFound
from serving.deps import PoolDep, ReadKey
from serving.openapi import links
from serving.params import NamePath, text_field

router = APIRouter(tags=["feedback"])
COLS = ("id", "tenant_id", "alert_id", "label", "comment", "created_at", "key_id")
Label = Literal["true_positive", "false_positive"]


class FeedbackIn(BaseModel):
    label: Label
    comment: str = text_field(2000, "Free text, up to 2000 characters.", default="")


class Feedback(BaseModel):
    id: int
    tenant_id: str
    alert_id: str
    label: Label
    comment: str
    created_at: datetime
    key_id: str | None


@router.post("/alerts/{alert_id}/feedback", response_model=Feedback, status_code=201,
             responses={201: links(alert_feedback={"alert_id": "$response.body#/alert_id"},
                                   get_alert={"alert_id": "$response.body#/alert_id"})})
async def give_feedback(pool: PoolDep, key: ReadKey, alert_id: NamePath, body: FeedbackIn) -> Feedback:
    """Label an alert as a true or false positive (the latest label counts)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO feedback (tenant_id, alert_id, label, comment, key_id) "
            "SELECT tenant_id, alert_id, %s, %s, %s FROM alerts WHERE tenant_id = %s AND alert_id = %s "
            "RETURNING " + ", ".join(COLS),
            (body.label, body.comment, key.key_id, key.tenant_id, alert_id))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"alert {alert_id!r} not found")
    return Feedback(**dict(zip(COLS, row, strict=True)))


@router.get("/alerts/{alert_id}/feedback", response_model=list[Feedback],
            responses={200: links(get_alert={"alert_id": "$response.body#/0/alert_id"})})
async def alert_feedback(pool: PoolDep, key: ReadKey, alert_id: NamePath) -> list[Feedback]:
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


@router.get("/feedback", response_model=list[Feedback],
            responses={200: links(get_alert={"alert_id": "$response.body#/0/alert_id"},
                                  alert_feedback={"alert_id": "$response.body#/0/alert_id"})})
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
