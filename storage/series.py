"""Reads of series: metric samples, window features and scores (API, SSE, training, the CLI).

A series is one metric of one host of a tenant. Every read takes the tenant and filters by it
(:func:`load_features` reads every tenant when training asks for ``tenant=None``). Rows come
back as tuples in the column order each function states, so the API serializes them without a
per-row model. The sink writes these tables (:mod:`storage.sink`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import psycopg
from psycopg import AsyncConnection, sql

from storage.arrays import FLOAT8_ARRAY_OID, TIMESTAMPTZ_ARRAY_OID, Float8Array, TimestamptzArray
from storage.schema import CROSS_COLUMNS, FEATURE_COLUMNS, SCORE_COLUMNS, WINDOW_FEATURE_COLUMNS

#: columns of a row of :func:`score_rows` / :func:`scores_after`
SCORE_ROW: tuple[str, ...] = ("window_start", "window_end", *SCORE_COLUMNS)
#: columns of a row of :func:`feature_rows`
FEATURE_ROW: tuple[str, ...] = ("window_start", "window_end", *WINDOW_FEATURE_COLUMNS)
#: columns of a metric sample of :func:`cpu_points` / :func:`latest_points`
POINT_ROW: tuple[str, ...] = ("ts_event", "value", "host", "metric", "unit", "tags")

# Distinct (host, metric) of a tenant by a loose index scan over metrics_series_ts_value: one index
# probe per series instead of a scan of every row; then the latest sample, score, open alert.
_SERIES = """
WITH RECURSIVE s AS (
  (SELECT host, metric FROM metrics WHERE tenant_id = %(t)s
    AND (%(host)s::text IS NULL OR host = %(host)s) ORDER BY host, metric LIMIT 1)
  UNION ALL
  SELECT n.host, n.metric FROM s, LATERAL (
    SELECT host, metric FROM metrics WHERE tenant_id = %(t)s
      AND (%(host)s::text IS NULL OR host = %(host)s)
      AND (host, metric) > (s.host, s.metric)
    ORDER BY host, metric LIMIT 1) n
)
SELECT s.host, s.metric, l.unit, l.value, l.ts_event, sc.score, sc.severity, sc.window_end,
       al.severity, coalesce(i.tags, '{}'::jsonb), sc.confidence, sc.warming
FROM s
CROSS JOIN LATERAL (SELECT unit, value, ts_event FROM metrics m WHERE m.tenant_id = %(t)s
    AND m.host = s.host AND m.metric = s.metric ORDER BY ts_event DESC LIMIT 1) l
LEFT JOIN LATERAL (SELECT score, severity, window_end, confidence, warming
    FROM scores c WHERE c.tenant_id = %(t)s
    AND c.host = s.host AND c.metric = s.metric ORDER BY window_start DESC LIMIT 1) sc ON true
LEFT JOIN LATERAL (SELECT severity FROM alerts a WHERE a.tenant_id = %(t)s AND a.host = s.host
    AND a.metric = s.metric AND a.state = 'open'
    ORDER BY (a.severity = 'critical') DESC LIMIT 1) al ON true
LEFT JOIN inventory i ON i.tenant_id = %(t)s AND i.source_id = s.host
WHERE (%(metric)s::text IS NULL OR s.metric = %(metric)s)
  AND (%(q)s::text IS NULL OR s.host ILIKE %(q)s OR s.metric ILIKE %(q)s
       OR i.tags::text ILIKE %(q)s)
ORDER BY s.host, s.metric
LIMIT %(limit)s
"""


def _like(q: str | None) -> str | None:
    r"""An ``ILIKE`` pattern matching ``q`` as a substring (``None`` for no filter).

    >>> _like("a_b%"), _like("")
    ('%a\\_b\\%%', None)
    """
    if not q:
        return None
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_series(
    conn: AsyncConnection,
    tenant: str,
    q: str | None = None,
    host: str | None = None,
    metric: str | None = None,
    limit: int = 1000,
) -> list[tuple]:
    """The tenant's series in (host, metric) order: ``host, metric, unit, last value, last
    ts_event, latest score, its severity, its window_end, open alert severity, inventory tags,
    the latest score's confidence and warming flag`` (NULL in rows stored before migration 009).

    ``q``: substring of host, metric or inventory tags (case-insensitive).
    """
    cur = await conn.execute(
        _SERIES, {"t": tenant, "q": _like(q), "host": host, "metric": metric, "limit": limit}
    )
    return await cur.fetchall()


async def series_exists(conn: AsyncConnection, tenant: str, host: str, metric: str) -> bool:
    """The tenant has samples or scores of the series."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM metrics"
        " WHERE tenant_id = %(t)s AND host = %(h)s AND metric = %(m)s)"
        " OR EXISTS (SELECT 1 FROM scores"
        " WHERE tenant_id = %(t)s AND host = %(h)s AND metric = %(m)s)",
        {"t": tenant, "h": host, "m": metric},
    )
    return (await cur.fetchone())[0]


async def has_samples(conn: AsyncConnection, tenant: str, host: str, metric: str) -> bool:
    """The tenant has metric samples of the series."""
    cur = await conn.execute(
        "SELECT 1 FROM metrics WHERE tenant_id = %s AND host = %s AND metric = %s LIMIT 1",
        (tenant, host, metric),
    )
    return await cur.fetchone() is not None


# --- windows: features and scores -------------------------------------------------------------


def _window_query(table: str, cols: Sequence[str]) -> sql.Composed:
    return sql.SQL(
        "SELECT {} FROM {} WHERE tenant_id = %s AND host = %s AND metric = %s"
        " AND window_start >= %s AND window_start < %s ORDER BY window_start DESC LIMIT %s"
    ).format(sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(table))


_SCORE_WINDOWS = _window_query("scores", SCORE_ROW)
_FEATURE_WINDOWS = _window_query("features", FEATURE_ROW)


async def score_rows(
    conn: AsyncConnection,
    tenant: str,
    host: str,
    metric: str,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[tuple]:
    """The newest ``limit`` score rows (:data:`SCORE_ROW`) of a series with ``window_start`` in
    ``[start, end)``, oldest first."""
    cur = await conn.execute(_SCORE_WINDOWS, (tenant, host, metric, start, end, limit))
    return (await cur.fetchall())[::-1]


async def feature_rows(
    conn: AsyncConnection,
    tenant: str,
    host: str,
    metric: str,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[tuple]:
    """The newest ``limit`` feature rows (:data:`FEATURE_ROW`) of a series with ``window_start``
    in ``[start, end)``, oldest first."""
    cur = await conn.execute(_FEATURE_WINDOWS, (tenant, host, metric, start, end, limit))
    return (await cur.fetchall())[::-1]


_SCORES_AFTER = (
    "SELECT " + ", ".join(SCORE_ROW) + " FROM scores WHERE tenant_id = %s AND host = %s "
    "AND metric = %s AND window_start > %s ORDER BY window_start LIMIT %s"
)


async def scores_after(
    conn: AsyncConnection, tenant: str, host: str, metric: str, after: datetime, limit: int
) -> list[tuple]:
    """Score rows (:data:`SCORE_ROW`) of a series with ``window_start > after``, oldest first."""
    cur = await conn.execute(_SCORES_AFTER, (tenant, host, metric, after, limit))
    return await cur.fetchall()


async def newest_window(
    conn: AsyncConnection, tenant: str, host: str, metric: str
) -> datetime | None:
    """The latest ``window_start`` of the series' scores (``None``: none yet)."""
    cur = await conn.execute(
        "SELECT max(window_start) FROM scores WHERE tenant_id = %s AND host = %s AND metric = %s",
        (tenant, host, metric),
    )
    return (await cur.fetchone())[0]


# --- metric samples ---------------------------------------------------------------------------


async def cpu_points(conn: AsyncConnection, tenant: str, host: str, limit: int) -> list[tuple]:
    """The newest ``limit`` ``cpu_load`` samples (:data:`POINT_ROW`) of one host, newest first."""
    cur = await conn.execute(
        "SELECT ts_event, value, host, metric, unit, tags FROM metrics "
        "WHERE tenant_id = %s AND host = %s AND metric = 'cpu_load' "
        "ORDER BY ts_event DESC LIMIT %s",
        (tenant, host, limit),
    )
    return await cur.fetchall()


async def latest_points(conn: AsyncConnection, tenant: str, metric: str) -> list[tuple]:
    """The latest sample (:data:`POINT_ROW`) of ``metric`` of every host of the tenant, by host."""
    cur = await conn.execute(
        # one index probe per host (loose index scan over metrics_series_ts_value)
        "WITH RECURSIVE h AS ("
        " (SELECT host FROM metrics WHERE tenant_id = %(t)s ORDER BY host LIMIT 1)"
        " UNION ALL SELECT n.host FROM h, LATERAL (SELECT host FROM metrics"
        "   WHERE tenant_id = %(t)s AND host > h.host ORDER BY host LIMIT 1) n)"
        "SELECT l.ts_event, l.value, h.host, l.metric, l.unit, l.tags FROM h, LATERAL ("
        " SELECT ts_event, value, metric, unit, tags FROM metrics m"
        " WHERE m.tenant_id = %(t)s AND m.host = h.host AND m.metric = %(m)s"
        " ORDER BY ts_event DESC LIMIT 1) l ORDER BY h.host",
        {"t": tenant, "m": metric},
    )
    return await cur.fetchall()


# the range as two arrays, bucketed in numpy by the caller (serving.downsample)
_RANGE = (
    "SELECT array_agg(ts_event), array_agg(value) FROM metrics"
    " WHERE tenant_id = %s AND host = %s AND metric = %s AND ts_event >= %s AND ts_event < %s"
)


async def range_arrays(
    conn: AsyncConnection, tenant: str, host: str, metric: str, start: datetime, end: datetime
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sample times (int64 µs since the Unix epoch) and values (float64) of one series in
    ``[start, end)``, unordered; ``None`` when the range holds no sample."""
    cur = conn.cursor(binary=True)
    cur.adapters.register_loader(FLOAT8_ARRAY_OID, Float8Array)
    cur.adapters.register_loader(TIMESTAMPTZ_ARRAY_OID, TimestamptzArray)
    await cur.execute(_RANGE, (tenant, host, metric, start, end))
    ts, vals = await cur.fetchone()
    return None if ts is None else (ts, vals)


def latest_event_time(conn: psycopg.Connection, tenant: str, hosts: Sequence[str]) -> float | None:
    """Epoch seconds of the newest stored event of ``tenant``'s ``hosts`` (``None``: none)."""
    row = conn.execute(
        "SELECT extract(epoch FROM max(ts_event))::float8 FROM metrics "
        "WHERE tenant_id = %s AND host = ANY(%s)",
        (tenant, list(hosts)),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def count_since(
    conn: psycopg.Connection, tenant: str, hosts: Sequence[str], since_ts: float, id_prefix: str
) -> int:
    """Stored events of ``tenant``'s ``hosts`` at or after ``since_ts`` whose event id starts
    with ``id_prefix`` (one run of ``eventops send``)."""
    row = conn.execute(
        "SELECT count(*) FROM metrics WHERE tenant_id = %s AND host = ANY(%s) "
        "AND ts_event >= to_timestamp(%s) AND starts_with(event_id, %s)",
        (tenant, list(hosts), since_ts, id_prefix),
    ).fetchone()
    return int(row[0])


# --- training ---------------------------------------------------------------------------------

_FEATURES = """
SELECT tenant_id, host, metric,
       extract(epoch FROM window_start)::float8, extract(epoch FROM window_end)::float8,
       {base}, {cross}
FROM features
WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
  AND (%(since)s::float8 IS NULL OR window_end >= to_timestamp(%(since)s))
  AND (%(until)s::float8 IS NULL OR window_end < to_timestamp(%(until)s))
ORDER BY tenant_id, host, metric, window_start
"""


def load_features(
    conn: psycopg.Connection,
    tenant: str | None,
    since: float | None = None,
    until: float | None = None,
) -> list[tuple]:
    """Window rows of ``features`` for training: ``tenant_id, host, metric, start, end`` (epoch
    s), then :data:`storage.schema.WINDOW_FEATURE_COLUMNS`; ordered by series and start.

    ``tenant=None`` reads every tenant; ``since``/``until`` bound ``window_end`` (epoch s). In
    a database before migration 007 the cross-metric columns are NULL.
    """
    have = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = 'features' AND column_name = ANY(%s)",
            (list(CROSS_COLUMNS),),
        )
    }
    cross = ", ".join(k if k in have else f"NULL::float8 AS {k}" for k in CROSS_COLUMNS)
    q = _FEATURES.format(base=", ".join(FEATURE_COLUMNS), cross=cross)
    return conn.execute(q, {"tenant": tenant, "since": since, "until": until}).fetchall()


_EVENTS = """
SELECT host, metric, extract(epoch FROM ts_event)::float8, value
FROM metrics
WHERE tenant_id = %(tenant)s
  AND (%(since)s::float8 IS NULL OR ts_event >= to_timestamp(%(since)s))
  AND (%(until)s::float8 IS NULL OR ts_event < to_timestamp(%(until)s))
ORDER BY ts_event
"""


def load_events(
    conn: psycopg.Connection,
    tenant: str,
    since: float | None = None,
    until: float | None = None,
    chunk: int = 50_000,
) -> dict[str, np.ndarray]:
    """The stored metric events of ``tenant`` (only), time-ordered, as columns ``host``,
    ``metric`` (object), ``ts`` (epoch s) and ``value`` (float64) -- what a replay feeds
    the detect stage. ``since``/``until`` bound ``ts_event`` (epoch s). Read through a
    server-side cursor in ``chunk``-row pages."""
    hosts, metrics, ts, values = [], [], [], []
    with conn.cursor(name="eventops_load_events") as cur:
        cur.itersize = chunk
        cur.execute(_EVENTS, {"tenant": tenant, "since": since, "until": until})
        while rows := cur.fetchmany(chunk):
            h, m, t, v = zip(*rows, strict=True)
            hosts += h
            metrics += m
            ts += t
            values += v
    return {
        "host": np.array(hosts, dtype=object),
        "metric": np.array(metrics, dtype=object),
        "ts": np.array(ts, dtype=np.float64),
        "value": np.array(values, dtype=np.float64),
    }


# --- the Prometheus exposition of scores ------------------------------------------------------

# the latest window of each series among the windows ending in the last %(w)s seconds (the
# scores_tenant_end index), highest scores first
_LATEST_SCORES = """
SELECT host, metric, score FROM (
  SELECT DISTINCT ON (host, metric) host, metric, score FROM scores
  WHERE tenant_id = %(t)s AND window_end > now() - make_interval(secs => %(w)s)
  ORDER BY host, metric, window_end DESC
) s
ORDER BY score DESC, host, metric
LIMIT %(limit)s
"""


async def latest_scores(
    conn: AsyncConnection, tenant: str, window_s: float, limit: int
) -> list[tuple]:
    """``(host, metric, score)`` of the latest window of each of the tenant's series among the
    windows that ended in the last ``window_s`` seconds, at most ``limit``, highest first."""
    cur = await conn.execute(_LATEST_SCORES, {"t": tenant, "w": window_s, "limit": limit})
    return await cur.fetchall()
