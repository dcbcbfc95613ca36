"""Feedback: operators' true/false-positive labels on alerts; training reads them as labels.

Rows come back as tuples in :data:`FEEDBACK_ROW` order. The API's functions are async and take
the tenant; :func:`load_labels` (training, sync) reads one tenant or, with ``tenant=None``,
every tenant.
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection

#: columns of a feedback row
FEEDBACK_ROW: tuple[str, ...] = (
    "id",
    "tenant_id",
    "alert_id",
    "label",
    "comment",
    "created_at",
    "key_id",
)
_COLS = ", ".join(FEEDBACK_ROW)


async def add_feedback(
    conn: AsyncConnection, tenant: str, alert_id: str, label: str, comment: str, key_id: str | None
) -> tuple | None:
    """Label one alert of the tenant; the stored row, or ``None`` when there is no such alert."""
    cur = await conn.execute(
        "INSERT INTO feedback (tenant_id, alert_id, label, comment, key_id) "
        "SELECT tenant_id, alert_id, %s, %s, %s FROM alerts WHERE tenant_id = %s AND alert_id = %s "
        "RETURNING " + _COLS,
        (label, comment, key_id, tenant, alert_id),
    )
    return await cur.fetchone()


async def alert_feedback(conn: AsyncConnection, tenant: str, alert_id: str) -> list[tuple]:
    """Every label of one alert of the tenant, newest first."""
    cur = await conn.execute(
        "SELECT " + _COLS + " FROM feedback WHERE tenant_id = %s AND alert_id = %s "
        "ORDER BY created_at DESC, id DESC",
        (tenant, alert_id),
    )
    return await cur.fetchall()


async def list_feedback(
    conn: AsyncConnection, tenant: str, label: str | None, limit: int
) -> list[tuple]:
    """The tenant's labels (of one kind, with ``label``), newest first."""
    cur = await conn.execute(
        "SELECT " + _COLS + " FROM feedback WHERE tenant_id = %s "
        "AND (%s::text IS NULL OR label = %s) ORDER BY created_at DESC, id DESC LIMIT %s",
        (tenant, label, label, limit),
    )
    return await cur.fetchall()


# feedback -> alert -> (series, time span); a span runs from the alert's first event/open to its
# resolution (or its open when still open), padded by `pad` seconds on both sides.
_LABELS = """
SELECT a.tenant_id, a.host, a.metric, f.label,
       extract(epoch FROM LEAST(a.ts_event, a.opened_at))::float8 - %(pad)s,
       extract(epoch FROM GREATEST(a.ts_event, COALESCE(a.resolved_at, a.opened_at)))::float8
         + %(pad)s
FROM feedback f JOIN alerts a ON a.alert_id = f.alert_id AND a.tenant_id = f.tenant_id
WHERE (%(tenant)s::text IS NULL OR a.tenant_id = %(tenant)s)
ORDER BY f.created_at
"""


def load_labels(conn: psycopg.Connection, tenant: str | None, pad: float = 0.0) -> list[tuple]:
    """``(tenant, host, metric, label, start, end)`` per feedback row, oldest first: the labelled
    alert's series and span (epoch s, padded by ``pad`` on both sides). Empty before the
    ``feedback`` table exists."""
    if not conn.execute("SELECT to_regclass('feedback') IS NOT NULL").fetchone()[0]:
        return []
    return conn.execute(_LABELS, {"tenant": tenant, "pad": float(pad)}).fetchall()
