"""Registry status for the API's ``/models`` and ``eventops models list``.

:func:`model_status` is cheap (a handful of registry reads, no model loading) and never raises
for a store without models: it reports what is there.  :func:`shadow_stats` summarises what the
challenger scored in shadow (table ``shadow_scores``) for one tenant, next to the champion's
batch score of the same windows; the API runs the same query (:mod:`storage.shadow`) on its
async pool and shapes the row with :func:`shadow_summary`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from registry.champion import CHALLENGER, CHAMPION, TAG_FEATURES, alias_version
from storage.shadow import shadow_params, stats_row
from training.promotion import (
    TAG_COMPARED,
    TAG_DECIDED_AT,
    TAG_DECISION,
    TAG_LAST_DECISION,
    TAG_METRICS,
    TAG_PREVIOUS,
    TAG_REASON,
)

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = [
    "FEEDBACK_LABELS",
    "list_versions",
    "model_status",
    "shadow_stats",
    "shadow_summary",
]

#: Labels of alert feedback (table ``feedback``), as reported per label by :func:`shadow_summary`.
FEEDBACK_LABELS = ("true_positive", "false_positive")

def _loads(v: str | None) -> Any:
    if not v:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return v


def _version_info(mv: Any) -> dict[str, Any]:
    t = mv.tags or {}
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created_at": mv.creation_timestamp,
        "aliases": sorted(getattr(mv, "aliases", []) or []),
        "family": t.get("eventops.family"),
        "features": _loads(t.get(TAG_FEATURES)),
        "decision": t.get(TAG_DECISION),
        "reason": t.get(TAG_REASON),
        "compared_with": t.get(TAG_COMPARED),
        "previous_champion": t.get(TAG_PREVIOUS),
        "decided_at": t.get(TAG_DECIDED_AT),
        "metrics": _loads(t.get(TAG_METRICS)),
    }


def model_status(settings: Settings, tracking_uri: str | None = None) -> dict[str, Any]:
    """Champion and challenger (version, metrics, decision tags) and the last decision.

    Returns
    -------
    dict
        ``{"name", "tracking": "postgresql" | "server", "champion": {...} | None,
        "challenger": {...} | None, "last_decision": {...} | None, "versions": int}``.
        Each model entry has ``version, run_id, created_at, aliases, family, features,
        decision, reason, compared_with, previous_champion, decided_at, metrics``.
    """
    from mlflow.exceptions import MlflowException

    from registry.tracking import client, is_server_uri, resolve_tracking_uri

    c = client(settings, tracking_uri)
    name = settings.model_name
    out: dict[str, Any] = {
        "name": name,
        "tracking": "server" if is_server_uri(resolve_tracking_uri(settings, tracking_uri))
        else "postgresql",
        "champion": None,
        "challenger": None,
        "last_decision": None,
        "versions": 0,
    }
    try:
        rm = c.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return out
        raise
    out["last_decision"] = _loads(rm.tags.get(TAG_LAST_DECISION))
    out["versions"] = len(c.search_model_versions(f"name = '{name}'", max_results=1000))
    for alias in (CHAMPION, CHALLENGER):
        v = alias_version(c, name, alias)
        if v is not None:
            out[alias] = _version_info(c.get_model_version(name, v))
    return out


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
    return shadow_summary(stats_row(conn, params), params)


def list_versions(settings: Settings, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered version (newest first) with its aliases and decision tags."""
    from registry.tracking import client

    c = client(settings, tracking_uri)
    mvs = c.search_model_versions(f"name = '{settings.model_name}'", max_results=1000)
    champ = alias_version(c, settings.model_name, CHAMPION) if mvs else None
    chall = alias_version(c, settings.model_name, CHALLENGER) if mvs else None
    out = []
    for mv in sorted(mvs, key=lambda m: -int(m.version)):
        info = _version_info(mv)
        info["aliases"] = sorted(
            {*info["aliases"]} | ({CHAMPION} if info["version"] == champ else set())
            | ({CHALLENGER} if info["version"] == chall else set())
        )
        out.append(info)
    return out
