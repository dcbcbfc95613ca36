"""The challenger's shadow scores, for the API's ``/models`` and ``eventops models status``.

:func:`shadow_stats` summarises what the challenger scored in shadow (table ``shadow_scores``)
for one tenant, next to the champion's batch score of the same windows; the API runs the same
query (:data:`SHADOW_STATS_SQL`) on its async pool and shapes the row with
:func:`shadow_summary`.  What the registry holds (champion, challenger, versions) is
:mod:`registry.status`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FEEDBACK_LABELS",
    "SHADOW_STATS_SQL",
    "shadow_params",
    "shadow_stats",
    "shadow_summary",
]

#: Labels of alert feedback (table ``feedback``), as reported per label by :func:`shadow_summary`.
FEEDBACK_LABELS = ("true_positive", "false_positive")

#: One tenant's shadow scores of one challenger version over windows starting in the last
#: ``seconds`` (a range scan of the primary key): count, mean, share >= ``threshold``, and the
#: same of the champion's batch score of those windows; the windows only one of the two scores
#: high; and, per feedback label (latest label per alert), the labelled alerts opened in that
#: time whose episode (``opened_at`` .. resolved or last update) has shadow windows, and how
#: many of them each model scores high in at least one window of the episode.
SHADOW_STATS_SQL = """
SELECT count(*), avg(score), avg((score >= %(threshold)s)::int)::float8,
       count(champion_score), avg(champion_score),
       avg((champion_score >= %(threshold)s)::int)::float8,
       array_agg(DISTINCT champion_version) FILTER (WHERE champion_score IS NOT NULL),
       extract(epoch FROM min(window_start))::float8, extract(epoch FROM max(window_end))::float8,
       count(*) FILTER (WHERE score >= %(threshold)s AND coalesce(champion_score, 0) < %(threshold)s),
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


def shadow_params(tenant: str, version: str, hours: float = 24.0,
                  threshold: float = 0.5) -> dict[str, Any]:
    """Parameters of :data:`SHADOW_STATS_SQL`."""
    if not hours > 0 or not 0 < threshold <= 1:
        raise ValueError("hours must be > 0 and threshold in (0, 1]")
    return {"tenant": tenant, "version": str(version), "seconds": float(hours) * 3600.0,
            "threshold": float(threshold)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def shadow_summary(row: tuple, params: dict[str, Any]) -> dict[str, Any]:
    """The row of :data:`SHADOW_STATS_SQL` as the ``shadow`` entry of ``/models``.

    Returns
    -------
    dict
        ``{"hours", "threshold", "windows", "first_window", "last_window", "challenger",
        "champion", "only_challenger_high", "only_champion_high", "feedback"}``;
        ``challenger``/``champion`` are ``{"versions", "windows", "mean_score",
        "high_fraction"}`` (``high_fraction``: share of windows scoring ``>= threshold``);
        ``champion`` is ``None`` when no window had a champion batch score.
        ``only_*_high``: windows that model scores high and the other does not.
        ``feedback``: per label (``true_positive``, ``false_positive``), the labelled alerts
        opened in the period (``alerts``), those with shadow-scored windows in their episode
        (``scored``), and how many of these each model scores high (``challenger_high``,
        ``champion_high``): a challenger that catches the confirmed alerts and stays quiet on
        the false alarms is the one to promote.
    """
    n, mean, high, cn, cmean, chigh, cversions, first, last, only_ch, only_cp, labelled = row
    n, cn = int(n or 0), int(cn or 0)
    empty = {"alerts": 0, "scored": 0, "challenger_high": 0, "champion_high": 0}
    labelled = labelled or {}
    return {
        "only_challenger_high": int(only_ch or 0),
        "only_champion_high": int(only_cp or 0),
        "feedback": {k: {**empty, **labelled.get(k, {})} for k in FEEDBACK_LABELS},
        "hours": params["seconds"] / 3600.0,
        "threshold": params["threshold"],
        "windows": n,
        "first_window": first,
        "last_window": last,
        "challenger": {"versions": [params["version"]], "windows": n, "mean_score": _r(mean),
                       "high_fraction": _r(high)},
        "champion": None if not cn else {
            "versions": sorted(cversions or [], key=lambda v: (len(v), v)), "windows": cn,
            "mean_score": _r(cmean), "high_fraction": _r(chigh)},
    }


def shadow_stats(conn: Any, tenant: str, version: str, hours: float = 24.0,
                 threshold: float = 0.5) -> dict[str, Any]:
    """Shadow-scoring statistics of challenger ``version`` for ``tenant`` (see
    :func:`shadow_summary`); ``conn`` is a psycopg connection to the EventOps database."""
    params = shadow_params(tenant, version, hours, threshold)
    row = conn.execute(SHADOW_STATS_SQL, params).fetchone()
    return shadow_summary(row, params)

