"""Alerts, their transitions (``alert_events``) and the reads incidents are grouped from.

The sink writes both tables (:meth:`storage.sink.Sink.write`); this module reads them. Every
read of the API takes the tenant and filters by it; :func:`load_open_alerts` is the detect
worker's snapshot of every tenant's open alerts. Alert rows come back as tuples in
:data:`ALERT_ROW` order (:data:`storage.schema.ALERT_COLUMNS`, the latest feedback label, the
row id the cursor pages by), so the API serializes them without a per-row model.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import AsyncConnection

from core.records import OpenAlert
from storage.schema import ALERT_COLUMNS

#: columns of an alert row of the reads below
ALERT_ROW: tuple[str, ...] = (*ALERT_COLUMNS, "feedback", "id")

_SELECT = (
    "SELECT "
    + ", ".join(f"a.{c}" for c in ALERT_COLUMNS)
    + ", (SELECT f.label FROM feedback f WHERE f.tenant_id = a.tenant_id"
    " AND f.alert_id = a.alert_id"
    " ORDER BY f.created_at DESC LIMIT 1) AS feedback, a.id FROM alerts a "
)

#: filters of :func:`list_alerts` compared for equality
_EQUAL = ("state", "severity", "host", "metric")


def load_open_alerts(conn: psycopg.Connection) -> list[OpenAlert]:
    """Every tenant's open alerts (a detect worker re-arms its rule alerts from them)."""
    rows = conn.execute(
        "SELECT alert_id, tenant_id, host, metric, severity, "
        " extract(epoch FROM opened_at)::float8, extract(epoch FROM updated_at)::float8, rule "
        "FROM alerts WHERE state = 'open'"
    ).fetchall()
    conn.commit()
    return [
        OpenAlert(
            alert_id=a, tenant_id=t, host=h, metric=m, severity=s, opened_at=o, last_ts=u, rule=r
        )
        for a, t, h, m, s, o, u, r in rows
    ]


async def list_alerts(
    conn: AsyncConnection,
    tenant: str,
    *,
    state: str | None = None,
    severity: str | None = None,
    host: str | None = None,
    metric: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, int] | None = None,
    limit: int = 100,
) -> list[tuple]:
    """The tenant's alerts, newest ``ts_event`` first (then highest id), at most ``limit``.

    ``since <= ts_event < until``; ``before`` = (ts_event, id) of the last row of the previous
    page (keyset pagination).
    """
    where = ["a.tenant_id = %(t)s"]
    p: dict = {"t": tenant, "limit": limit}
    for name, val in zip(_EQUAL, (state, severity, host, metric), strict=True):
        if val is not None:
            where.append(f"a.{name} = %({name})s")
            p[name] = val
    if since is not None:
        where.append("a.ts_event >= %(since)s")
        p["since"] = since
    if until is not None:
        where.append("a.ts_event < %(until)s")
        p["until"] = until
    if before is not None:
        p["cts"], p["cid"] = before
        where.append("(a.ts_event, a.id) < (%(cts)s, %(cid)s)")
    cur = await conn.execute(
        _SELECT
        + "WHERE "
        + " AND ".join(where)
        + " ORDER BY a.ts_event DESC, a.id DESC LIMIT %(limit)s",
        p,
    )
    return await cur.fetchall()


async def get_alert(conn: AsyncConnection, tenant: str, alert_id: str) -> tuple | None:
    """One alert of the tenant (an :data:`ALERT_ROW`), or ``None``."""
    cur = await conn.execute(
        _SELECT + "WHERE a.tenant_id = %s AND a.alert_id = %s", (tenant, alert_id)
    )
    return await cur.fetchone()


async def alert_exists(conn: AsyncConnection, tenant: str, alert_id: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM alerts WHERE tenant_id = %s AND alert_id = %s", (tenant, alert_id)
    )
    return await cur.fetchone() is not None


async def alert_events(
    conn: AsyncConnection, tenant: str, alert_id: str, limit: int = 1000
) -> list[tuple]:
    """(seq, kind, created_at, payload) of one alert's transitions, oldest first."""
    cur = await conn.execute(
        "SELECT seq, kind, created_at, payload FROM alert_events WHERE tenant_id = %s "
        "AND alert_id = %s ORDER BY seq LIMIT %s",
        (tenant, alert_id, limit),
    )
    return await cur.fetchall()


# --- incidents ------------------------------------------------------------------------------


async def opened_between(
    conn: AsyncConnection, tenant: str, start: datetime, end: datetime, limit: int
) -> list[tuple]:
    """The tenant's alerts opened in ``[start, end)``, newest first (:data:`ALERT_ROW`)."""
    cur = await conn.execute(
        _SELECT + "WHERE a.tenant_id = %s AND a.opened_at >= %s AND a.opened_at < %s "
        "ORDER BY a.opened_at DESC LIMIT %s",
        (tenant, start, end, limit),
    )
    return await cur.fetchall()


async def host_and_opening(
    conn: AsyncConnection, tenant: str, alert_id: str
) -> tuple[str, datetime] | None:
    """(host, opened_at) of one alert of the tenant, or ``None``."""
    cur = await conn.execute(
        "SELECT host, opened_at FROM alerts WHERE tenant_id = %s AND alert_id = %s",
        (tenant, alert_id),
    )
    return await cur.fetchone()


async def host_opened_since(
    conn: AsyncConnection,
    tenant: str,
    host: str,
    since: datetime,
    limit: int,
    until: datetime | None = None,
) -> list[tuple]:
    """The alerts of one host of the tenant opened at or after ``since`` (and at or before
    ``until``), oldest first."""
    cur = await conn.execute(
        _SELECT + "WHERE a.tenant_id = %s AND a.host = %s AND a.opened_at >= %s "
        "AND (%s::timestamptz IS NULL OR a.opened_at <= %s) ORDER BY a.opened_at LIMIT %s",
        (tenant, host, since, until, until, limit),
    )
    return await cur.fetchall()


# --- the SSE feeds (serving.broadcast, serving.sse) --------------------------------------------

_PAGE = (
    "SELECT seq, event_key, (payload || jsonb_build_object('seq', seq))::text FROM alert_events "
    "WHERE tenant_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)


async def events_after(conn: AsyncConnection, tenant: str, after: int, limit: int) -> list[tuple]:
    """(seq, event_key, payload with its ``seq`` as JSON text) of the tenant's transitions with
    ``seq > after``, oldest first, at most ``limit``."""
    cur = await conn.execute(_PAGE, (tenant, after, limit))
    return await cur.fetchall()


async def head_seq(conn: AsyncConnection, tenant: str) -> int:
    """The tenant's newest ``seq`` (0 when it has none)."""
    cur = await conn.execute(
        "SELECT coalesce(max(seq), 0) FROM alert_events WHERE tenant_id = %s", (tenant,)
    )
    return (await cur.fetchone())[0]


async def open_alert_labels(conn: AsyncConnection, tenant: str, limit: int) -> list[tuple]:
    """``(host, metric, severity, rule)`` of the tenant's open alerts, each once, at most
    ``limit`` (critical first), for the Prometheus exposition."""
    cur = await conn.execute(
        "SELECT host, metric, severity, rule FROM alerts "
        "WHERE tenant_id = %s AND state = 'open' GROUP BY host, metric, severity, rule "
        "ORDER BY severity = 'critical' DESC, host, metric, severity, rule LIMIT %s",
        (tenant, limit),
    )
    return await cur.fetchall()


async def open_alert_counts(conn: AsyncConnection, tenant: str) -> dict[str, int]:
    """The number of the tenant's open alerts per severity."""
    cur = await conn.execute(
        "SELECT severity, count(*) FROM alerts WHERE tenant_id = %s AND state = 'open' "
        "GROUP BY severity",
        (tenant,),
    )
    return {sev: n for sev, n in await cur.fetchall()}
