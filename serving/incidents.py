"""Incidents: a tenant's alerts grouped by host and time, the likely root series first.

Alerts of one host whose opening falls within ``incident_gap_s`` of the end of the group so
far (or while it is still open) form one incident. Ranking inside an incident: the series
that went wrong first, then the more severe, then the higher score — the earliest symptom is
the best guess for the cause. ``incident_id`` is ``inc-`` + the first alert's id, stable as
long as no earlier alert of the host joins the group.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from core.errors import NotFound
from serving.alerts import Alert, to_alert
from serving.deps import PoolDep, ReadKey, ServingDep
from serving.openapi import links
from serving.params import NO_NUL
from serving.timerange import EndQ, StartQ, time_range
from storage import alerts as alerts_repo

router = APIRouter(prefix="/incidents", tags=["incidents"])
SEV = {"warning": 1, "critical": 2}
MAX_ALERTS = 5000


class RootSeries(BaseModel):
    host: str
    metric: str
    alert_id: str


class Incident(BaseModel):
    incident_id: str
    host: str
    state: str  # open while any of its alerts is open
    severity: str
    started_at: datetime
    ended_at: datetime | None
    alert_count: int
    root: RootSeries
    series: list[str]  # metrics in rank order, root first


class IncidentDetail(Incident):
    alerts: list[Alert]  # in rank order, root first


def group(alerts: list[Alert], gap: timedelta) -> list[IncidentDetail]:
    """Group alerts (any order) into incidents per host."""
    out: list[IncidentDetail] = []
    by_host: dict[str, list[Alert]] = {}
    for a in sorted(alerts, key=lambda a: (a.host, a.opened_at, a.alert_id)):
        by_host.setdefault(a.host, []).append(a)
    for host, xs in by_host.items():
        cur: list[Alert] = []
        end: datetime | None = None
        is_open = False
        for a in xs:
            if cur and not is_open and a.opened_at > end + gap:
                out.append(_incident(host, cur))
                cur, end, is_open = [], None, False
            cur.append(a)
            a_end = a.resolved_at or a.updated_at
            end = a_end if end is None else max(end, a_end)
            is_open = is_open or a.state == "open"
        if cur:
            out.append(_incident(host, cur))
    return out


def _incident(host: str, xs: list[Alert]) -> IncidentDetail:
    ranked = sorted(xs, key=lambda a: (a.opened_at, -SEV.get(a.severity, 0), -(a.score or 0.0)))
    first = min(xs, key=lambda a: (a.opened_at, a.alert_id))
    metrics: list[str] = []
    for a in ranked:
        if a.metric not in metrics:
            metrics.append(a.metric)
    is_open = any(a.state == "open" for a in xs)
    return IncidentDetail(
        incident_id=f"inc-{first.alert_id}",
        host=host,
        state="open" if is_open else "resolved",
        severity=max((a.severity for a in xs), key=lambda s: SEV.get(s, 0)),
        started_at=first.opened_at,
        ended_at=None if is_open else max(a.resolved_at or a.updated_at for a in xs),
        alert_count=len(xs),
        root=RootSeries(host=host, metric=ranked[0].metric, alert_id=ranked[0].alert_id),
        series=metrics,
        alerts=ranked,
    )


async def incident_of(conn, tenant: str, alert: Alert, gap: timedelta) -> str:
    """The id of the incident an alert belongs to. Whether it joins the group before it
    depends only on the host's earlier alerts, so those are read (further back while the
    group reaches the start of what was read)."""
    span = 7 * gap
    for _ in range(6):
        since = alert.opened_at - span
        rows = await alerts_repo.host_opened_since(
            conn, tenant, alert.host, since, MAX_ALERTS, until=alert.opened_at
        )
        alerts = [to_alert(r) for r in rows]
        if alert.alert_id not in {a.alert_id for a in alerts}:
            alerts.append(alert)  # more than MAX_ALERTS before it: it starts its own group
        (inc,) = [
            i for i in group(alerts, gap) if any(a.alert_id == alert.alert_id for a in i.alerts)
        ]
        if inc.started_at > since + gap or len(rows) >= MAX_ALERTS:
            break  # the group starts inside what was read
        span *= 4
    return inc.incident_id


@router.get(
    "",
    response_model=list[Incident],
    responses={
        200: links(
            get_incident={"incident_id": "$response.body#/0/incident_id"},
            host_detail={"host": "$response.body#/0/host"},
        )
    },
)
async def list_incidents(
    pool: PoolDep,
    key: ReadKey,
    serving: ServingDep,
    start: StartQ = None,
    end: EndQ = None,
    state: Annotated[Literal["open", "resolved"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Incident]:
    """Incidents whose alerts opened in ``[start, end)`` (default: last 24 h), newest first."""
    start, end = time_range(start, end, timedelta(hours=24))
    async with pool.connection() as conn:
        rows = await alerts_repo.opened_between(conn, key.tenant_id, start, end, MAX_ALERTS)
    alerts = [to_alert(r) for r in rows]
    incs = group(alerts, timedelta(seconds=serving.incident_gap_s))
    if state:
        incs = [i for i in incs if i.state == state]
    incs.sort(key=lambda i: i.started_at, reverse=True)
    return [Incident(**i.model_dump(exclude={"alerts"})) for i in incs[:limit]]


@router.get(
    "/{incident_id}",
    response_model=IncidentDetail,
    responses={
        200: links(
            get_alert={"alert_id": "$response.body#/root/alert_id"},
            host_detail={"host": "$response.body#/host"},
        )
    },
)
async def get_incident(
    pool: PoolDep,
    key: ReadKey,
    serving: ServingDep,
    incident_id: Annotated[str, Path(max_length=200, pattern=NO_NUL)],
) -> IncidentDetail:
    """One incident with its alerts, the likely root series first."""
    if not incident_id.startswith("inc-"):
        raise NotFound(f"incident {incident_id!r} not found")
    gap = timedelta(seconds=serving.incident_gap_s)
    async with pool.connection() as conn:
        row = await alerts_repo.host_and_opening(conn, key.tenant_id, incident_id[4:])
        if row is None:
            raise NotFound(f"incident {incident_id!r} not found")
        host, opened = row
        rows = await alerts_repo.host_opened_since(
            conn, key.tenant_id, host, opened - 7 * gap, MAX_ALERTS
        )
    alerts = [to_alert(r) for r in rows]
    for inc in group(alerts, gap):
        if inc.incident_id == incident_id:
            return inc
    raise NotFound(f"incident {incident_id!r} not found")
