"""Shadow scores: what a challenger scored beside the champion, per tenant and version.

The sink writes ``shadow_scores``; :func:`stats_row` (training, the CLI; sync) and
:func:`astats_row` (the API; async) run one query over a tenant's shadow-scored windows of one
challenger version and the feedback on the alerts of those series. ``training.status`` shapes
the row (``shadow_summary``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection

# One tenant's shadow scores of one challenger version over windows starting in the last
# ``seconds`` (a range scan of the primary key): count, mean, share >= ``threshold``, and the
# same of the champion's batch score of those windows; the windows only one of the two scores
# high; and, per feedback label (latest label per alert), the labelled alerts opened in that
# time whose episode (``opened_at`` .. resolved or last update) has shadow windows, and how
# many of them each model scores high in at least one window of the episode.
_STATS = """
SELECT count(*), avg(score), avg((score >= %(threshold)s)::int)::float8,
       count(champion_score), avg(champion_score),
       avg((champion_score >= %(threshold)s)::int)::float8,
       array_agg(DISTINCT champion_version) FILTER (WHERE champion_score IS NOT NULL),
       extract(epoch FROM min(window_start))::float8, extract(epoch FROM max(window_end))::float8,
       count(*) FILTER (WHERE score >= %(threshold)s AND \
coalesce(champion_score, 0) < %(threshold)s),
       count(*) FILTER (WHERE champion_score >= %(threshold)s AND score < %(threshold)s),
       (SELECT jsonb_object_agg(label, jsonb_build_object(
                 'alerts', n, 'scored', scored, 'challenger_high', ch, 'champion_high', cp))
        FROM (SELECT a.label, count(*) AS n, count(*) FILTER (WHERE w.windows > 0) AS scored,
                     count(*) FILTER (WHERE w.ch >= %(threshold)s) AS ch,
                     count(*) FILTER (WHERE w.cp >= %(threshold)s) AS cp
              FROM (SELECT DISTINCT ON (f.alert_id) f.label, al.host, al.metric, al.opened_at,
                           coalesce(al.resolved_at, al.updated_at) AS until
                    FROM feedback f JOIN alerts al
                      ON al.alert_id = f.alert_id AND al.tenant_id = f.tenant_id
                    WHERE f.tenant_id = %(tenant)s
                      AND al.opened_at >= now() - make_interval(secs => %(seconds)s)
                    ORDER BY f.alert_id, f.created_at DESC, f.id DESC) a
              CROSS JOIN LATERAL (
                SELECT count(*) AS windows, max(x.score) AS ch, max(x.champion_score) AS cp
                FROM shadow_scores x
                WHERE x.tenant_id = %(tenant)s AND x.model_version = %(version)s
                  AND x.host = a.host AND x.metric = a.metric
                  AND x.window_start <= a.until AND x.window_end >= a.opened_at) w
              GROUP BY a.label) per_label)
FROM shadow_scores
WHERE tenant_id = %(tenant)s AND model_version = %(version)s
  AND window_start >= now() - make_interval(secs => %(seconds)s)
"""


def shadow_params(
    tenant: str, version: str, hours: float = 24.0, threshold: float = 0.5
) -> dict[str, Any]:
    """Parameters of the query: the tenant, the challenger version, the window (``hours``) and
    the score a window counts as high at (``threshold``)."""
    if not hours > 0 or not 0 < threshold <= 1:
        raise ValueError("hours must be > 0 and threshold in (0, 1]")
    return {
        "tenant": tenant,
        "version": str(version),
        "seconds": float(hours) * 3600.0,
        "threshold": float(threshold),
    }


def stats_row(conn: psycopg.Connection, params: dict[str, Any]) -> tuple:
    """The statistics row of :func:`shadow_params` ``params`` (see
    ``training.status.shadow_summary``)."""
    return conn.execute(_STATS, params).fetchone()


async def astats_row(conn: AsyncConnection, params: dict[str, Any]) -> tuple:
    """:func:`stats_row` on an async connection."""
    cur = await conn.execute(_STATS, params)
    return await cur.fetchone()
