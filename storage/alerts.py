"""Alerts: the open alerts a detect worker resumes from."""

from __future__ import annotations

import psycopg

from core.records import OpenAlert


def load_open_alerts(conn: psycopg.Connection) -> list[OpenAlert]:
    rows = conn.execute(
        "SELECT alert_id, tenant_id, host, metric, severity, "
        " extract(epoch FROM opened_at)::float8, extract(epoch FROM updated_at)::float8, rule "
        "FROM alerts WHERE state = 'open'"
    ).fetchall()
    conn.commit()
    return [
        OpenAlert(alert_id=a, tenant_id=t, host=h, metric=m, severity=s, opened_at=o, last_ts=u,
                  rule=r)
        for a, t, h, m, s, o, u, r in rows
    ]
