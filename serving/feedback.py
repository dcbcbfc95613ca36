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
from storage import alerts as alerts_repo
from storage import feedback as feedback_repo

router = APIRouter(tags=["feedback"])
COLS = feedback_repo.FEEDBACK_ROW
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


@router.post(
    "/alerts/{alert_id}/feedback",
    response_model=Feedback,
    status_code=201,
    responses={
        201: links(
            alert_feedback={"alert_id": "$response.body#/alert_id"},
            get_alert={"alert_id": "$response.body#/alert_id"},
        )
    },
)
async def give_feedback(
    pool: PoolDep, key: ReadKey, alert_id: NamePath, body: FeedbackIn
) -> Feedback:
    """Label an alert as a true or false positive (the latest label counts)."""
    async with pool.connection() as conn:
        row = await feedback_repo.add_feedback(
            conn, key.tenant_id, alert_id, body.label, body.comment, key.key_id
        )
    if row is None:
        raise NotFound(f"alert {alert_id!r} not found")
    return Feedback(**dict(zip(COLS, row, strict=True)))


@router.get(
    "/alerts/{alert_id}/feedback",
    response_model=list[Feedback],
    responses={200: links(get_alert={"alert_id": "$response.body#/0/alert_id"})},
)
async def alert_feedback(pool: PoolDep, key: ReadKey, alert_id: NamePath) -> list[Feedback]:
    """Every label given to one alert, newest first."""
    async with pool.connection() as conn:
        if not await alerts_repo.alert_exists(conn, key.tenant_id, alert_id):
            raise NotFound(f"alert {alert_id!r} not found")
        rows = await feedback_repo.alert_feedback(conn, key.tenant_id, alert_id)
    return [Feedback(**dict(zip(COLS, r, strict=True))) for r in rows]


@router.get(
    "/feedback",
    response_model=list[Feedback],
    responses={
        200: links(
            get_alert={"alert_id": "$response.body#/0/alert_id"},
            alert_feedback={"alert_id": "$response.body#/0/alert_id"},
        )
    },
)
async def list_feedback(
    pool: PoolDep,
    key: ReadKey,
    label: Annotated[Label | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Feedback]:
    """The tenant's labels, newest first."""
    async with pool.connection() as conn:
        rows = await feedback_repo.list_feedback(conn, key.tenant_id, label, limit)
    return [Feedback(**dict(zip(COLS, r, strict=True))) for r in rows]
