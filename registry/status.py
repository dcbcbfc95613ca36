"""What a tenant's registered model holds: the API's ``/models``, ``eventops models``, notebooks.

:func:`model_status` is cheap (a handful of registry reads, no model loading) and never raises
for a store without models: it reports what is there.  :func:`list_versions` lists every version
with its aliases and decision tags.  Tag names: :mod:`registry.tags`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from registry.aliases import alias_log, alias_version, champion_stack
from registry.client import client, is_server_uri, resolve_tracking_uri
from registry.names import tenant_model
from registry.tags import (
    CHALLENGER,
    CHAMPION,
    TAG_COMPARED,
    TAG_DECIDED_AT,
    TAG_DECISION,
    TAG_FAMILY,
    TAG_FEATURES,
    TAG_LAST_DECISION,
    TAG_METRICS,
    TAG_PREVIOUS,
    TAG_REASON,
)

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = ["list_versions", "model_status"]


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
        "family": t.get(TAG_FAMILY),
        "features": _loads(t.get(TAG_FEATURES)),
        "decision": t.get(TAG_DECISION),
        "reason": t.get(TAG_REASON),
        "compared_with": t.get(TAG_COMPARED),
        "previous_champion": t.get(TAG_PREVIOUS),
        "decided_at": t.get(TAG_DECIDED_AT),
        "metrics": _loads(t.get(TAG_METRICS)),
    }


def model_status(
    settings: Settings, tenant: str, tracking_uri: str | None = None
) -> dict[str, Any]:
    """``tenant``'s champion and challenger (version, metrics, decision tags), its last
    decision and its alias history.

    Returns
    -------
    dict
        ``{"name", "tenant", "tracking": "postgresql" | "server", "champion": {...} | None,
        "challenger": {...} | None, "last_decision": {...} | None, "versions": int,
        "history": [alias moves, oldest first], "champion_stack": [versions]}``.
        Each model entry has ``version, run_id, created_at, aliases, family, features,
        decision, reason, compared_with, previous_champion, decided_at, metrics``.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings, tracking_uri)
    name = tenant_model(settings, tenant)
    out: dict[str, Any] = {
        "name": name,
        "tenant": tenant,
        "tracking": "server"
        if is_server_uri(resolve_tracking_uri(settings, tracking_uri))
        else "postgresql",
        "champion": None,
        "challenger": None,
        "last_decision": None,
        "versions": 0,
        "history": [],
        "champion_stack": [],
    }
    try:
        rm = c.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return out
        raise
    out["last_decision"] = _loads(rm.tags.get(TAG_LAST_DECISION))
    out["history"] = alias_log(c, name)
    out["champion_stack"] = champion_stack(c, name)
    out["versions"] = len(c.search_model_versions(f"name = '{name}'", max_results=1000))
    for alias in (CHAMPION, CHALLENGER):
        v = alias_version(c, name, alias)
        if v is not None:
            out[alias] = _version_info(c.get_model_version(name, v))
    return out


def list_versions(
    settings: Settings, tenant: str, tracking_uri: str | None = None
) -> list[dict[str, Any]]:
    """Every registered version of ``tenant``'s model (newest first) with its aliases and
    decision tags."""
    c = client(settings, tracking_uri)
    name = tenant_model(settings, tenant)
    mvs = c.search_model_versions(f"name = '{name}'", max_results=1000)
    champ = alias_version(c, name, CHAMPION) if mvs else None
    chall = alias_version(c, name, CHALLENGER) if mvs else None
    out = []
    for mv in sorted(mvs, key=lambda m: -int(m.version)):
        info = _version_info(mv)
        info["aliases"] = sorted(
            {*info["aliases"]}
            | ({CHAMPION} if info["version"] == champ else set())
            | ({CHALLENGER} if info["version"] == chall else set())
        )
        out.append(info)
    return out
