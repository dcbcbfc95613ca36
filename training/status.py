"""The challenger's shadow scores, for the API's ``/models`` and ``eventops models status``.

:func:`shadow_stats` summarises what the challenger scored in shadow (table ``shadow_scores``)
for one tenant, next to the champion's batch score of the same windows; the API runs the same
query (:mod:`storage.shadow`) on its async pool and shapes the row with
:func:`shadow_summary`.  What the registry holds (champion, challenger, versions) is
:mod:`registry.status`.
"""

from __future__ import annotations

from typing import Any

from storage.shadow import shadow_params, stats_row

__all__ = [
    "FEEDBACK_LABELS",
    "shadow_stats",
    "shadow_summary",
]

#: Labels of alert feedback (table ``feedback``), as reported per label by :func:`shadow_summary`.
FEEDBACK_LABELS = ("true_positive", "false_positive")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def shadow_summary(row: tuple, params: dict[str, Any]) -> dict[str, Any]:
    """The row of :func:`storage.shadow.stats_row` as the ``shadow`` entry of ``/models``.

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
        "challenger": {
            "versions": [params["version"]],
            "windows": n,
            "mean_score": _r(mean),
            "high_fraction": _r(high),
        },
        "champion": None
        if not cn
        else {
            "versions": sorted(cversions or [], key=lambda v: (len(v), v)),
            "windows": cn,
            "mean_score": _r(cmean),
            "high_fraction": _r(chigh),
        },
    }


def shadow_stats(
    conn: Any, tenant: str, version: str, hours: float = 24.0, threshold: float = 0.5
) -> dict[str, Any]:
    """Shadow-scoring statistics of challenger ``version`` for ``tenant`` (see
    :func:`shadow_summary`); ``conn`` is a psycopg connection to the EventOps database."""
    params = shadow_params(tenant, version, hours, threshold)
    return shadow_summary(stats_row(conn, params), params)
