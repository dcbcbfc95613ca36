"""Notification channels, silences, and the delivery of alert transitions (issue 11).

Tables of ``010_notifications.sql``. Every function that serves the API or the CLI takes the
tenant and filters by it; the notify worker's functions (:func:`fan_out_batch`,
:func:`due_channels`, :func:`finish_attempt`, :func:`silenced_open`) read every tenant. The
SQL of an operation lives once, in a module constant; the API calls the ``a*`` coroutines, the
CLI and the worker the plain functions.

Channel rows come back in :data:`CHANNEL_ROW` order (never the secret), silence rows as
:class:`core.silences.Silence`, deliveries in :data:`DELIVERY_ROW` order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from core.silences import Silence, parse_matcher

#: columns of a channel row (the secret is never read back)
CHANNEL_ROW: tuple[str, ...] = (
    "id",
    "tenant_id",
    "name",
    "kind",
    "url",
    "filter",
    "enabled",
    "created_at",
)
_CH = ", ".join(CHANNEL_ROW)
#: columns of a delivery row
DELIVERY_ROW: tuple[str, ...] = (
    "id",
    "channel_id",
    "channel",
    "kind_of_channel",
    "seq",
    "alert_id",
    "kind",
    "state",
    "silenced_by",
    "attempts",
    "next_attempt_at",
    "last_status",
    "last_error",
    "created_at",
    "delivered_at",
)
_DELIVERY_SELECT = (
    "SELECT d.id, d.channel_id, c.name, c.kind, d.seq, d.alert_id, d.kind, d.state,"
    " d.silenced_by, d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.created_at,"
    " d.delivered_at FROM deliveries d JOIN channels c ON c.id = d.channel_id "
)
#: columns of an attempt row
ATTEMPT_ROW: tuple[str, ...] = (
    "delivery_id",
    "attempt",
    "at",
    "status_code",
    "latency_ms",
    "error",
)

_SILENCE_COLS = (
    "id, tenant_id, kind, matchers, extract(epoch FROM starts_at)::float8,"
    " extract(epoch FROM ends_at)::float8, schedule, duration_s, author, comment,"
    " extract(epoch FROM created_at)::float8"
)


def _ts(t: float) -> datetime | str:
    return "infinity" if math.isinf(t) else datetime.fromtimestamp(t, UTC)


def silence_from_row(r: Sequence[Any]) -> Silence:
    sid, tenant, kind, matchers, start, end, schedule, dur, author, comment, created = r
    return Silence(
        id=sid,
        tenant_id=tenant,
        kind=kind,
        matchers=tuple(parse_matcher(m) for m in matchers),
        starts_at=start,
        ends_at=end,
        schedule=schedule,
        duration_s=dur or 0.0,
        author=author,
        comment=comment,
        created_at=created,
    )


# --- channels -------------------------------------------------------------------------------

_ADD_CHANNEL = (
    "INSERT INTO channels (tenant_id, name, kind, url, secret, filter) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, name) DO NOTHING RETURNING " + _CH
)
_LIST_CHANNELS = "SELECT " + _CH + " FROM channels WHERE tenant_id = %s ORDER BY name"
_DELETE_CHANNEL = "DELETE FROM channels WHERE tenant_id = %s AND name = %s RETURNING id"


def _channel_params(tenant, name, kind, url, secret, filter_) -> tuple:
    return (tenant, name, kind, url, secret, Jsonb(filter_))


def add_channel(
    conn: psycopg.Connection,
    tenant: str,
    name: str,
    kind: str,
    url: str,
    secret: str | None,
    filter_: dict,
) -> tuple | None:
    """The new channel's row, or ``None`` when the tenant has one of that name."""
    row = conn.execute(
        _ADD_CHANNEL, _channel_params(tenant, name, kind, url, secret, filter_)
    ).fetchone()
    conn.commit()
    return row


async def aadd_channel(
    conn: AsyncConnection,
    tenant: str,
    name: str,
    kind: str,
    url: str,
    secret: str | None,
    filter_: dict,
) -> tuple | None:
    cur = await conn.execute(
        _ADD_CHANNEL, _channel_params(tenant, name, kind, url, secret, filter_)
    )
    return await cur.fetchone()


def list_channels(conn: psycopg.Connection, tenant: str) -> list[tuple]:
    rows = conn.execute(_LIST_CHANNELS, (tenant,)).fetchall()
    conn.commit()
    return rows


async def alist_channels(conn: AsyncConnection, tenant: str) -> list[tuple]:
    return await (await conn.execute(_LIST_CHANNELS, (tenant,))).fetchall()


def delete_channel(conn: psycopg.Connection, tenant: str, name: str) -> bool:
    gone = conn.execute(_DELETE_CHANNEL, (tenant, name)).fetchone() is not None
    conn.commit()
    return gone


async def adelete_channel(conn: AsyncConnection, tenant: str, name: str) -> bool:
    return await (await conn.execute(_DELETE_CHANNEL, (tenant, name))).fetchone() is not None


def load_channels(conn: psycopg.Connection) -> list[tuple]:
    """Every tenant's enabled channels, with the secret: ``CHANNEL_ROW + (secret,)``."""
    rows = conn.execute(
        "SELECT " + _CH + ", secret FROM channels WHERE enabled ORDER BY id"
    ).fetchall()
    conn.commit()
    return rows


# --- silences -------------------------------------------------------------------------------

_ADD_SILENCE = (
    "INSERT INTO silences (id, tenant_id, kind, matchers, starts_at, ends_at, schedule,"
    " duration_s, author, comment) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " RETURNING " + _SILENCE_COLS
)
# a silence expired by hand ends now (kept, as Alertmanager keeps expired silences)
_EXPIRE_SILENCE = (
    "UPDATE silences SET ends_at = GREATEST(starts_at + interval '1 microsecond', now())"
    " WHERE tenant_id = %s AND id = %s AND ends_at > now() RETURNING " + _SILENCE_COLS
)
_LIST_SILENCES = (
    "SELECT " + _SILENCE_COLS + " FROM silences WHERE tenant_id = %s"
    " AND (%s OR ends_at > now()) ORDER BY ends_at DESC, id LIMIT %s"
)
_GET_SILENCE = "SELECT " + _SILENCE_COLS + " FROM silences WHERE tenant_id = %s AND id = %s"


def _silence_params(s: Silence) -> tuple:
    return (
        s.id,
        s.tenant_id,
        s.kind,
        Jsonb([m.to_dict() for m in s.matchers]),
        _ts(s.starts_at),
        _ts(s.ends_at),
        s.schedule,
        s.duration_s if s.schedule else None,
        s.author,
        s.comment,
    )


def add_silence(conn: psycopg.Connection, s: Silence) -> Silence:
    row = conn.execute(_ADD_SILENCE, _silence_params(s)).fetchone()
    conn.commit()
    return silence_from_row(row)


async def aadd_silence(conn: AsyncConnection, s: Silence) -> Silence:
    row = await (await conn.execute(_ADD_SILENCE, _silence_params(s))).fetchone()
    return silence_from_row(row)


def expire_silence(conn: psycopg.Connection, tenant: str, sid: str) -> Silence | None:
    row = conn.execute(_EXPIRE_SILENCE, (tenant, sid)).fetchone()
    conn.commit()
    return silence_from_row(row) if row else None


async def aexpire_silence(conn: AsyncConnection, tenant: str, sid: str) -> Silence | None:
    row = await (await conn.execute(_EXPIRE_SILENCE, (tenant, sid))).fetchone()
    return silence_from_row(row) if row else None


def list_silences(
    conn: psycopg.Connection, tenant: str, expired: bool = False, limit: int = 500
) -> list[Silence]:
    rows = conn.execute(_LIST_SILENCES, (tenant, expired, limit)).fetchall()
    conn.commit()
    return [silence_from_row(r) for r in rows]


async def alist_silences(
    conn: AsyncConnection, tenant: str, expired: bool = False, limit: int = 500
) -> list[Silence]:
    rows = await (await conn.execute(_LIST_SILENCES, (tenant, expired, limit))).fetchall()
    return [silence_from_row(r) for r in rows]


async def aget_silence(conn: AsyncConnection, tenant: str, sid: str) -> Silence | None:
    row = await (await conn.execute(_GET_SILENCE, (tenant, sid))).fetchone()
    return silence_from_row(row) if row else None


def load_silences(
    conn: psycopg.Connection, kind: str | None = None, since: float | None = None
) -> list[Silence]:
    """Every tenant's silences (of one ``kind``) that end after ``since`` (default: now)."""
    rows = conn.execute(
        "SELECT " + _SILENCE_COLS + " FROM silences WHERE ends_at > COALESCE(%s, now())"
        " AND (%s::text IS NULL OR kind = %s) ORDER BY tenant_id, id",
        (_ts(since) if since is not None else None, kind, kind),
    ).fetchall()
    conn.commit()
    return [silence_from_row(r) for r in rows]


def load_maintenance(
    conn: psycopg.Connection, tenant: str, since: float, until: float
) -> list[Silence]:
    """The tenant's maintenance windows in force at some time of ``[since, until)`` (training
    leaves their events out)."""
    if not conn.execute("SELECT to_regclass('silences') IS NOT NULL").fetchone()[0]:
        return []
    rows = conn.execute(
        "SELECT " + _SILENCE_COLS + " FROM silences WHERE tenant_id = %s AND kind = 'maintenance'"
        " AND ends_at > %s AND starts_at < %s",
        (tenant, _ts(since), _ts(until)),
    ).fetchall()
    return [silence_from_row(r) for r in rows]


# --- fan-out (the notify worker) ------------------------------------------------------------


def events_after_cursor(conn: psycopg.Connection, limit: int) -> list[tuple]:
    """``(seq, tenant_id, alert_id, kind, payload)`` of the next transitions to fan out, with
    the cursor row locked until the transaction ends (one fan-out at a time)."""
    last = conn.execute(
        "SELECT last_seq FROM notify_cursor WHERE name = 'fanout' FOR UPDATE"
    ).fetchone()[0]
    return conn.execute(
        "SELECT seq, tenant_id, alert_id, kind, payload FROM alert_events WHERE seq > %s"
        " ORDER BY seq LIMIT %s",
        (last, limit),
    ).fetchall()


def alert_tags(conn: psycopg.Connection, keys: Iterable[tuple[str, str]]) -> dict:
    """Inventory tags of ``(tenant, host)`` pairs (the labels silences may match)."""
    keys = list(set(keys))
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT tenant_id, source_id, tags FROM inventory WHERE (tenant_id, source_id) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    return {(t, h): tags for t, h, tags in rows}


def fan_out_batch(conn: psycopg.Connection, rows: Sequence[tuple], last_seq: int) -> int:
    """Insert deliveries ``(tenant, channel_id, seq, alert_id, kind, state, silenced_by)`` (a
    row already there is left alone) and move the cursor to ``last_seq``; the caller's
    transaction makes both one step. Returns the rows inserted."""
    n = 0
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO deliveries (tenant_id, channel_id, seq, alert_id, kind, state,"
                " silenced_by) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (channel_id, seq) DO NOTHING",
                rows,
            )
            n = cur.rowcount
    conn.execute("UPDATE notify_cursor SET last_seq = %s WHERE name = 'fanout'", (last_seq,))
    return n


def told(conn: psycopg.Connection, alert_ids: Iterable[str]) -> set[tuple[int, str]]:
    """``(channel_id, alert_id)`` of the alerts' deliveries that were not muted (the channels
    that were told the alert fires)."""
    ids = list(alert_ids)
    if not ids:
        return set()
    rows = conn.execute(
        "SELECT channel_id, alert_id FROM deliveries WHERE alert_id = ANY(%s)"
        " AND state <> 'silenced'",
        (ids,),
    ).fetchall()
    return {(c, a) for c, a in rows}


def next_delivery(conn: psycopg.Connection, channel_id: int) -> tuple | None:
    """The channel's oldest pending delivery: ``(id, seq, alert_id, kind, attempts,
    next_attempt_at epoch, payload)``."""
    row = conn.execute(
        "SELECT d.id, d.seq, d.alert_id, d.kind, d.attempts,"
        " extract(epoch FROM d.next_attempt_at)::float8, e.payload"
        " FROM deliveries d JOIN alert_events e ON e.seq = d.seq"
        " WHERE d.channel_id = %s AND d.state = 'pending' ORDER BY d.seq LIMIT 1",
        (channel_id,),
    ).fetchone()
    conn.commit()
    return row


def try_lock(conn: psycopg.Connection, key: int) -> bool:
    """A session advisory lock (held until ``conn`` closes), if no other session holds it."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])


def due_channels(conn: psycopg.Connection) -> list[tuple[int, float]]:
    """``(channel_id, next_attempt_at epoch)`` of each channel's oldest pending delivery (per
    endpoint order: a channel's next delivery waits for its head)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (channel_id) channel_id,"
        " extract(epoch FROM next_attempt_at)::float8"
        " FROM deliveries WHERE state = 'pending' ORDER BY channel_id, seq"
    ).fetchall()
    conn.commit()
    return rows


def finish_attempt(
    conn: psycopg.Connection,
    delivery_id: int,
    attempt: int,
    status: int | None,
    latency_ms: float,
    error: str | None,
    state: str,
    next_attempt_at: float,
) -> None:
    """Record one attempt and the delivery's new state (``delivered``, ``pending`` with its next
    attempt, or ``failed``) in one transaction."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, status_code, latency_ms, error)"
            " VALUES (%s, %s, %s, %s, %s)",
            (delivery_id, attempt, status, latency_ms, error),
        )
        conn.execute(
            "UPDATE deliveries SET attempts = %s, state = %s, last_status = %s, last_error = %s,"
            " next_attempt_at = %s, delivered_at = CASE WHEN %s = 'delivered' THEN now() END"
            " WHERE id = %s",
            (attempt, state, status, error, _ts(next_attempt_at), state, delivery_id),
        )


def silenced_open(conn: psycopg.Connection) -> list[tuple]:
    """Muted deliveries whose alert still fires: ``(id, tenant, alert_id, host, metric,
    severity, rule)`` (sent when their silence ends)."""
    rows = conn.execute(
        "SELECT d.id, d.tenant_id, d.alert_id, a.host, a.metric, a.severity, a.rule"
        " FROM deliveries d JOIN alerts a ON a.alert_id = d.alert_id"
        " WHERE d.state = 'silenced' AND a.state = 'open' ORDER BY d.seq"
    ).fetchall()
    conn.commit()
    return rows


def release(conn: psycopg.Connection, ids: Sequence[int]) -> int:
    """Muted deliveries become pending, due now."""
    if not ids:
        return 0
    n = conn.execute(
        "UPDATE deliveries SET state = 'pending', next_attempt_at = now()"
        " WHERE id = ANY(%s) AND state = 'silenced'",
        (list(ids),),
    ).rowcount
    conn.commit()
    return n


def open_alerts_for(conn: psycopg.Connection, tenant: str) -> list[tuple]:
    """The tenant's open alerts with their opening transition's payload (Alertmanager is sent
    every firing alert again at its re-send interval): ``(alert_id, payload)``."""
    rows = conn.execute(
        "SELECT a.alert_id, (SELECT e.payload FROM alert_events e WHERE e.alert_id = a.alert_id"
        " ORDER BY e.seq DESC LIMIT 1) FROM alerts a WHERE a.tenant_id = %s AND a.state = 'open'",
        (tenant,),
    ).fetchall()
    conn.commit()
    return rows


def delivered_alerts(conn: psycopg.Connection, channel_id: int) -> set[str]:
    """Alerts with a delivered transition on the channel (only those are re-sent)."""
    rows = conn.execute(
        "SELECT DISTINCT alert_id FROM deliveries WHERE channel_id = %s AND state = 'delivered'"
        " AND alert_id IN (SELECT alert_id FROM alerts WHERE state = 'open')",
        (channel_id,),
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


# --- the delivery log and replays -----------------------------------------------------------

_REPLAY = (
    "UPDATE deliveries d SET state = 'pending', attempts = 0, next_attempt_at = now(),"
    " last_error = NULL FROM channels c WHERE c.id = d.channel_id AND d.tenant_id = %(t)s"
    " AND d.state = ANY(%(states)s) AND (%(alert)s::text IS NULL OR d.alert_id = %(alert)s)"
    " AND (%(channel)s::text IS NULL OR c.name = %(channel)s)"
    " AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s)"
)


def replay(
    conn: psycopg.Connection,
    tenant: str,
    *,
    states: Sequence[str] = ("failed",),
    alert_id: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
) -> int:
    """Send the tenant's deliveries again (by default the failed ones); the count."""
    n = conn.execute(
        _REPLAY,
        {
            "t": tenant,
            "states": list(states),
            "alert": alert_id,
            "channel": channel,
            "since": since,
        },
    ).rowcount
    conn.commit()
    return n


async def adeliveries(conn: AsyncConnection, tenant: str, alert_id: str) -> list[tuple]:
    """One alert's deliveries (:data:`DELIVERY_ROW`), oldest first."""
    cur = await conn.execute(
        _DELIVERY_SELECT + "WHERE d.tenant_id = %s AND d.alert_id = %s ORDER BY d.seq, c.name",
        (tenant, alert_id),
    )
    return await cur.fetchall()


async def aattempts(conn: AsyncConnection, tenant: str, delivery_ids: Sequence[int]) -> list:
    """Attempts (:data:`ATTEMPT_ROW`) of the tenant's deliveries, oldest first."""
    cur = await conn.execute(
        "SELECT t.delivery_id, t.attempt, t.at, t.status_code, t.latency_ms, t.error"
        " FROM delivery_attempts t JOIN deliveries d ON d.id = t.delivery_id"
        " WHERE d.tenant_id = %s AND t.delivery_id = ANY(%s) ORDER BY t.delivery_id, t.attempt",
        (tenant, list(delivery_ids)),
    )
    return await cur.fetchall()


def deliveries(
    conn: psycopg.Connection, tenant: str, alert_id: str | None = None, limit: int = 100
) -> list[tuple]:
    """The tenant's deliveries (:data:`DELIVERY_ROW`), newest first (the CLI's log)."""
    rows = conn.execute(
        _DELIVERY_SELECT + "WHERE d.tenant_id = %s AND (%s::text IS NULL OR d.alert_id = %s)"
        " ORDER BY d.seq DESC, c.name LIMIT %s",
        (tenant, alert_id, alert_id, limit),
    ).fetchall()
    conn.commit()
    return rows


async def atags(conn: AsyncConnection, tenant: str, hosts: Iterable[str]) -> dict[str, dict]:
    """Inventory tags of the tenant's ``hosts``: host -> tags."""
    hosts = list(hosts)
    if not hosts:
        return {}
    cur = await conn.execute(
        "SELECT source_id, tags FROM inventory WHERE tenant_id = %s AND source_id = ANY(%s)",
        (tenant, hosts),
    )
    return dict(await cur.fetchall())


def tenant_tags(conn: psycopg.Connection, tenant: str) -> dict[str, dict]:
    """Inventory tags of every host of one tenant: host -> tags."""
    return dict(
        conn.execute(
            "SELECT source_id, tags FROM inventory WHERE tenant_id = %s", (tenant,)
        ).fetchall()
    )


async def amuted_by(conn: AsyncConnection, tenant: str, alert_ids: Sequence[str]) -> dict:
    """alert id -> ids of the silences that held back any of its deliveries."""
    cur = await conn.execute(
        "SELECT d.alert_id, array_agg(DISTINCT s ORDER BY s) FROM deliveries d,"
        " unnest(d.silenced_by) s WHERE d.tenant_id = %s AND d.alert_id = ANY(%s)"
        " GROUP BY d.alert_id",
        (tenant, list(alert_ids)),
    )
    return dict(await cur.fetchall())
