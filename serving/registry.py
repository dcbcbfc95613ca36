"""Model registry status (MLflow): which batch model version is champion / challenger.

:func:`model_status` is the provider the route calls (``app.state.model_status``, replaceable
by any function of the same shape). It reads :func:`registry.status.model_status` (MLflow is
imported lazily), answers from a short cache, and reports ``champion: None`` with a reason
when MLflow or its store is unavailable — the API never fails because the registry does.

The challenger entry carries ``shadow``: what it scored in shadow over the last day for the
key's tenant, beside the champion's batch score of the same windows (:func:`shadow_stats`,
from PostgreSQL, cached per tenant and version like the registry status).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from core.settings import Settings
from registry.client import installed as mlflow_installed
from registry.tags import CHALLENGER, CHAMPION
from serving.deps import PoolDep, ReadKey, SettingsDep
from storage import shadow as shadow_repo

log = logging.getLogger(__name__)
router = APIRouter(tags=["models"])
_CACHE: dict[str, tuple[float, dict]] = {}
_SHADOW_CACHE: dict[tuple[str, str, str], tuple[float, dict]] = {}
CACHE_S = 30.0
SHADOW_HOURS = 24.0
#: a window "scores high" at the ensemble's warning level
SHADOW_THRESHOLD = 0.5


class ScoreSummary(BaseModel):
    """One model's batch scores over the shadow-scored windows."""

    versions: list[str] = Field(description="model version(s) that scored these windows")
    windows: int
    mean_score: float | None = None
    high_fraction: float | None = Field(None, description="share of windows scoring >= threshold")


class FeedbackHits(BaseModel):
    """Alerts with one feedback label, seen through the shadow-scored windows of their episode."""

    alerts: int = Field(description="labelled alerts opened in the period")
    scored: int = Field(description="of them, alerts with shadow-scored windows in their episode")
    challenger_high: int = Field(
        description="of the scored, alerts the challenger scores >= threshold"
    )
    champion_high: int = Field(
        description="of the scored, alerts the champion's batch score puts >= threshold"
    )


class ShadowStats(BaseModel):
    """The challenger's shadow scores of the key's tenant beside the champion's."""

    hours: float = Field(description="windows that started within this many hours")
    threshold: float
    windows: int = Field(description="windows the challenger scored")
    first_window: float | None = Field(None, description="epoch s of the first window start")
    last_window: float | None = Field(None, description="epoch s of the last window end")
    challenger: ScoreSummary
    champion: ScoreSummary | None = Field(
        None, description="the champion's batch score of the same windows (None: no champion)"
    )
    only_challenger_high: int = Field(
        0, description="windows the challenger scores high and the champion not"
    )
    only_champion_high: int = Field(
        0, description="windows the champion scores high and the challenger not"
    )
    feedback: dict[str, FeedbackHits] = Field(
        default_factory=dict,
        description="per feedback label (true_positive, false_positive): "
        "the labelled alerts of the period "
        "and how many of them each model scores high in their episode",
    )


class ModelVersion(BaseModel):
    version: str
    run_id: str | None = None
    created_at: float | None = None
    aliases: list[str] = []
    family: str | None = None
    decision: str | None = None
    reason: str | None = None
    compared_with: str | None = None
    previous_champion: str | None = None
    decided_at: str | None = None
    metrics: dict[str, Any] | None = None
    shadow: ShadowStats | None = None


class AliasMove(BaseModel):
    alias: str
    to: str
    from_: str | None = Field(None, alias="from")
    action: str = "moved"
    reason: str = ""
    at: str | None = None


class ModelStatus(BaseModel):
    name: str
    tenant: str | None = None
    available: bool
    detail: str = ""
    champion: ModelVersion | None = None
    challenger: ModelVersion | None = None
    last_decision: dict[str, Any] | None = None
    versions: int = 0
    history: list[AliasMove] = []
    champion_stack: list[str] = []


def _query(s: Settings, tenant: str) -> dict[str, Any]:
    """The tenant's champion/challenger with their metrics, the last promotion decision and
    the alias history (registry.status)."""
    from registry.status import model_status as registry_status

    st = registry_status(s, tenant, s.mlflow_tracking_uri_override)
    out: dict[str, Any] = {
        "name": st["name"],
        "tenant": tenant,
        "available": True,
        "detail": "",
        "last_decision": st.get("last_decision"),
        "versions": st.get("versions", 0),
        "history": st.get("history") or [],
        "champion_stack": st.get("champion_stack") or [],
    }
    for alias in (CHAMPION, CHALLENGER):
        mv = st.get(alias)
        if mv is not None:
            mv = {
                **mv,
                "created_at": (mv.get("created_at") or 0) / 1000,
                "metrics": mv.get("metrics") if isinstance(mv.get("metrics"), dict) else None,
            }
        out[alias] = mv
    if out.get("champion") is None:
        out["detail"] = (
            f"no version of {st['name']!r} has the alias 'champion' yet: this tenant's windows"
            " are scored by the default ensemble alone"
        )
    return out


async def model_status(settings: Settings, tenant: str) -> dict:
    """``{"name", "tenant", "available", "detail", "champion", "challenger", …}`` of
    ``tenant``'s registered model; never raises."""
    from registry.names import tenant_model

    name = tenant_model(settings, tenant)
    hit = _CACHE.get(name)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    base = {"name": name, "tenant": tenant, "available": False, "champion": None,
            "challenger": None}  # fmt: skip
    if not mlflow_installed():
        out = {**base, "detail": "mlflow is not installed"}
    else:
        try:
            out = await asyncio.wait_for(asyncio.to_thread(_query, settings, tenant), timeout=20)
        except Exception as e:  # noqa: BLE001 - reported in the answer, not raised
            log.warning("model registry unavailable: %s", e)
            out = {**base, "detail": f"registry unavailable: {type(e).__name__}"}
    if len(_CACHE) > 1000:
        _CACHE.clear()
    _CACHE[name] = (time.monotonic() + CACHE_S, out)
    return out


async def shadow_stats(
    pool: AsyncConnectionPool, settings: Settings, tenant: str, version: str
) -> dict:
    """Shadow-scoring statistics of challenger ``version`` for ``tenant`` (short cache)."""
    from training.status import shadow_summary

    key = (settings.model_name, tenant, str(version))
    now = time.monotonic()
    hit = _SHADOW_CACHE.get(key)
    if hit and hit[0] > now:
        return hit[1]
    params = shadow_repo.shadow_params(tenant, str(version), SHADOW_HOURS, SHADOW_THRESHOLD)
    async with pool.connection() as conn:
        row = await shadow_repo.astats_row(conn, params)
    out = shadow_summary(row, params)
    if len(_SHADOW_CACHE) > 1000:
        for k in [k for k, (until, _) in _SHADOW_CACHE.items() if until <= now]:
            del _SHADOW_CACHE[k]
    _SHADOW_CACHE[key] = (now + CACHE_S, out)
    return out


@router.get("/models", response_model=ModelStatus)
async def models(
    request: Request, key: ReadKey, settings: SettingsDep, pool: PoolDep
) -> ModelStatus:
    """The key's tenant's champion and challenger, last decision and alias history; the
    challenger's last day of shadow scores."""
    st = await request.app.state.model_status(settings, key.tenant_id)
    challenger = st.get("challenger")
    if challenger and challenger.get("version"):
        shadow = await shadow_stats(pool, settings, key.tenant_id, challenger["version"])
        st = {**st, "challenger": {**challenger, "shadow": shadow}}
    return ModelStatus(**st)
