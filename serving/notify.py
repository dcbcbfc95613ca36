"""Notifications: channels (admin keys), silences and maintenance windows, the delivery log.

Channels are where the tenant's alerts go (``eventops worker notify`` sends them); creating a
webhook answers its signing secret once. Silences mute matching alerts (they are still stored
and listed, with ``silenced_by``); any key that reads may create or expire them, as operators
do from the dashboard. ``GET /alerts/{alert_id}/deliveries`` is one alert's delivery log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from core.errors import NotFound
from core.silences import Silence, alert_labels, new_silence, silencing
from notify.channels import ChannelSpec
from serving.deps import AdminKey, PoolDep, ReadKey
from serving.errors import BadRequest, Conflict, ErrorBody
from serving.openapi import links
from serving.params import NamePath, text_field
from storage import alerts as alerts_repo
from storage import notify as repo

router = APIRouter(tags=["notifications"])


# --- models ---------------------------------------------------------------------------------


class MatcherModel(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        description="label: host, metric, severity, rule, alertname or an inventory tag",
    )
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str = Field(default="", max_length=1000)


Matchers = Annotated[
    list[MatcherModel | Annotated[str, Field(max_length=1100)]],
    Field(
        max_length=50,
        description="Alertmanager-style matchers, as objects or as strings like"
        " `host=~web-.*`; all must match; none: every alert of the tenant",
    ),
]


class FilterModel(BaseModel):
    min_severity: Literal["warning", "critical"] = "warning"
    matchers: Matchers = []


class ChannelIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal["alertmanager", "webhook"]
    url: str = Field(
        min_length=8,
        max_length=2000,
        pattern=r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[!-~]*)?$",
        description="Alertmanager's base URL, or the webhook's URL",
    )
    filter: FilterModel = FilterModel()


class Channel(BaseModel):
    id: int
    tenant_id: str
    name: str
    kind: str
    url: str
    filter: dict
    enabled: bool
    created_at: datetime


class ChannelCreated(Channel):
    secret: str | None = Field(
        description="the webhook's signing secret (Standard Webhooks), shown only in this answer"
    )


class SilenceIn(BaseModel):
    matchers: Matchers = []
    starts_at: datetime | None = Field(default=None, description="default: now")
    ends_at: datetime | None = None
    duration_s: float | None = Field(default=None, gt=0, le=366 * 86400)
    schedule: str | None = Field(
        default=None,
        max_length=100,
        description="cron (UTC): a recurring maintenance window of duration_s each time",
    )
    author: str = text_field(200, "who (default: the key id)", default="")
    comment: str = text_field(2000, "why", default="")


class SilenceOut(BaseModel):
    id: str
    kind: str
    state: str
    matchers: list[MatcherModel]
    starts_at: str
    ends_at: str | None
    schedule: str | None
    duration_s: float | None
    author: str
    comment: str
    created_at: str


class Attempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class Delivery(BaseModel):
    id: int
    channel: str
    channel_kind: str
    seq: int
    kind: str
    state: str
    silenced_by: list[str]
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[Attempt]


def _matcher_input(ms: Sequence) -> list:
    return [m.model_dump() if isinstance(m, BaseModel) else m for m in ms]


def _silence(s: Silence, now: float) -> SilenceOut:
    return SilenceOut(**s.to_dict(now))


# --- channels -------------------------------------------------------------------------------


@router.get(
    "/channels",
    response_model=list[Channel],
    responses={200: links(delete_channel={"name": "$response.body#/0/name"})},
)
async def list_channels(pool: PoolDep, key: ReadKey) -> list[Channel]:
    """The tenant's notification channels (never their secrets)."""
    async with pool.connection() as conn:
        rows = await repo.alist_channels(conn, key.tenant_id)
    return [Channel(**dict(zip(repo.CHANNEL_ROW, r, strict=True))) for r in rows]


@router.post(
    "/channels",
    response_model=ChannelCreated,
    status_code=201,
    responses={409: {"model": ErrorBody, "description": "a channel of that name exists"}},
)
async def add_channel(pool: PoolDep, key: AdminKey, body: ChannelIn) -> ChannelCreated:
    """Add an Alertmanager or webhook channel; a webhook's signing secret is in this answer
    only."""
    try:
        spec = ChannelSpec.check(
            body.name,
            body.kind,
            body.url,
            {
                "min_severity": body.filter.min_severity,
                "matchers": _matcher_input(body.filter.matchers),
            },
        )
    except ValueError as e:
        raise BadRequest(str(e)) from None
    async with pool.connection() as conn:
        row = await repo.aadd_channel(
            conn, key.tenant_id, spec.name, spec.kind, spec.url, spec.secret, spec.filter
        )
    if row is None:
        raise Conflict(
            f"a channel named {body.name!r} exists already; delete it or pick another name"
        )
    return ChannelCreated(**dict(zip(repo.CHANNEL_ROW, row, strict=True)), secret=spec.secret)


@router.delete("/channels/{name}", status_code=204)
async def delete_channel(pool: PoolDep, key: AdminKey, name: NamePath) -> Response:
    """Delete a channel and its delivery log."""
    async with pool.connection() as conn:
        if not await repo.adelete_channel(conn, key.tenant_id, name):
            raise NotFound(f"channel {name!r} not found")
    return Response(status_code=204)


# --- silences -------------------------------------------------------------------------------


@router.get("/silences", response_model=list[SilenceOut])
async def list_silences(
    pool: PoolDep,
    key: ReadKey,
    expired: Annotated[bool, Query(description="include expired ones")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[SilenceOut]:
    """The tenant's silences and maintenance windows, latest end first."""
    async with pool.connection() as conn:
        got = await repo.alist_silences(conn, key.tenant_id, expired, limit)
    now = time.time()
    return [_silence(s, now) for s in got]


@router.post(
    "/silences",
    response_model=SilenceOut,
    status_code=201,
    responses={
        201: links(
            get_silence={"silence_id": "$response.body#/id"},
            expire_silence={"silence_id": "$response.body#/id"},
        )
    },
)
async def add_silence(pool: PoolDep, key: ReadKey, body: SilenceIn) -> SilenceOut:
    """Mute matching alerts from ``starts_at`` to ``ends_at`` (or for ``duration_s``), or, with
    ``schedule``, for ``duration_s`` every time the schedule fires (a maintenance window: its
    windows are also left out of baseline learning and training)."""
    now = time.time()
    try:
        s = new_silence(
            key.tenant_id,
            _matcher_input(body.matchers),
            now=now,
            starts_at=body.starts_at.timestamp() if body.starts_at else None,
            ends_at=body.ends_at.timestamp() if body.ends_at else None,
            duration_s=body.duration_s,
            schedule=body.schedule,
            author=body.author or f"key {key.key_id}",
            comment=body.comment,
        )
    except ValueError as e:
        raise BadRequest(str(e)) from None
    async with pool.connection() as conn:
        s = await repo.aadd_silence(conn, s)
    return _silence(s, time.time())


@router.get("/silences/{silence_id}", response_model=SilenceOut)
async def get_silence(pool: PoolDep, key: ReadKey, silence_id: NamePath) -> SilenceOut:
    async with pool.connection() as conn:
        s = await repo.aget_silence(conn, key.tenant_id, silence_id)
    if s is None:
        raise NotFound(f"silence {silence_id!r} not found")
    return _silence(s, time.time())


@router.post("/silences/{silence_id}/expire", response_model=SilenceOut)
async def expire_silence(pool: PoolDep, key: ReadKey, silence_id: NamePath) -> SilenceOut:
    """End a silence now. It is kept, expired (as Alertmanager keeps them: the history of who
    muted what); alerts it muted that still fire are then notified."""
    async with pool.connection() as conn:
        s = await repo.aexpire_silence(conn, key.tenant_id, silence_id)
    if s is None:
        raise NotFound(f"no active silence {silence_id!r}")
    return _silence(s, time.time())


# --- which alerts are muted -----------------------------------------------------------------


async def muting(conn, tenant: str, alerts: Sequence[dict]) -> list[list[str]]:
    """Per alert dict: the ids of the silences muting it now (an open alert), or that held back
    any of its notifications (a resolved one, from its deliveries)."""
    if not alerts:
        return []
    out: list[list[str]] = [[] for _ in alerts]
    shut = [a["alert_id"] for a in alerts if a["state"] != "open"]
    if shut:
        held = await repo.amuted_by(conn, tenant, shut)
        for i, a in enumerate(alerts):
            if a["state"] != "open":
                out[i] = held.get(a["alert_id"], [])
    if len(shut) == len(alerts):
        return out
    silences = await repo.alist_silences(conn, tenant)
    if not silences:
        return out
    tags = await repo.atags(conn, tenant, {a["host"] for a in alerts if a["state"] == "open"})
    now = time.time()
    for i, a in enumerate(alerts):
        if a["state"] == "open":
            labels = alert_labels(
                a["host"], a["metric"], a["severity"], a["rule"], tags.get(a["host"])
            )
            out[i] = silencing(silences, labels, now)
    return out


# --- deliveries -----------------------------------------------------------------------------


@router.get("/alerts/{alert_id}/deliveries", response_model=list[Delivery])
async def alert_deliveries(pool: PoolDep, key: ReadKey, alert_id: NamePath) -> list[Delivery]:
    """One alert's deliveries to the tenant's channels, with every attempt (status, latency)."""
    async with pool.connection() as conn:
        if not await alerts_repo.alert_exists(conn, key.tenant_id, alert_id):
            raise NotFound(f"alert {alert_id!r} not found")
        rows = await repo.adeliveries(conn, key.tenant_id, alert_id)
        attempts = await repo.aattempts(conn, key.tenant_id, [r[0] for r in rows])
    log: dict[int, list[Attempt]] = {}
    for did, n, at, code, ms, err in attempts:
        log.setdefault(did, []).append(
            Attempt(attempt=n, at=at, status_code=code, latency_ms=ms, error=err)
        )
    out = []
    for r in rows:
        d = dict(zip(repo.DELIVERY_ROW, r, strict=True))
        out.append(
            Delivery(
                id=d["id"],
                channel=d["channel"],
                channel_kind=d["kind_of_channel"],
                seq=d["seq"],
                kind=d["kind"],
                state=d["state"],
                silenced_by=d["silenced_by"],
                attempts=d["attempts"],
                next_attempt_at=d["next_attempt_at"],
                last_status=d["last_status"],
                last_error=d["last_error"],
                created_at=d["created_at"],
                delivered_at=d["delivered_at"],
                log=log.get(d["id"], []),
            )
        )
    return out
