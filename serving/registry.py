"""Model registry status (MLflow): which batch model version is champion / challenger.

:func:`model_status` is the provider the route calls (``app.state.model_status``, replaceable
by the registry code of ``training/`` / ``pipeline.registry``). It imports MLflow lazily,
answers from a short cache, and reports ``champion: None`` with a reason when MLflow or its
store is unavailable — the API never fails because the registry does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from pipeline.settings import Settings
from serving.deps import ReadKey, SettingsDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["models"])
_CACHE: dict[str, tuple[float, dict]] = {}
CACHE_S = 30.0


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


class ModelStatus(BaseModel):
    name: str
    available: bool
    detail: str = ""
    champion: ModelVersion | None = None
    challenger: ModelVersion | None = None
    last_decision: dict[str, Any] | None = None
    versions: int = 0


def _query(s: Settings) -> dict[str, Any]:
    """Champion/challenger with their metrics and the last promotion decision (training.status)."""
    from training.status import model_status as registry_status

    st = registry_status(s, s.mlflow_tracking_uri_override)
    out: dict[str, Any] = {"name": st["name"], "available": True, "detail": "",
                           "last_decision": st.get("last_decision"), "versions": st.get("versions", 0)}
    for alias in ("champion", "challenger"):
        mv = st.get(alias)
        if mv is not None:
            mv = {**mv, "created_at": (mv.get("created_at") or 0) / 1000,
                  "metrics": mv.get("metrics") if isinstance(mv.get("metrics"), dict) else None}
        out[alias] = mv
    if out.get("champion") is None:
        out["detail"] = f"no version of {s.model_name!r} has the alias 'champion' yet"
    return out


async def model_status(settings: Settings) -> dict:
    """``{"name", "available", "detail", "champion", "challenger"}``; never raises."""
    hit = _CACHE.get(settings.model_name)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    base = {"name": settings.model_name, "available": False, "champion": None, "challenger": None}
    if importlib.util.find_spec("mlflow") is None:
        out = {**base, "detail": "mlflow is not installed"}
    else:
        try:
            out = await asyncio.wait_for(asyncio.to_thread(_query, settings), timeout=20)
        except Exception as e:  # noqa: BLE001 - reported in the answer, not raised
            log.warning("model registry unavailable: %s", e)
            out = {**base, "detail": f"registry unavailable: {type(e).__name__}"}
    _CACHE[settings.model_name] = (time.monotonic() + CACHE_S, out)
    return out


@router.get("/models", response_model=ModelStatus)
async def models(request: Request, key: ReadKey, settings: SettingsDep) -> ModelStatus:
    """Champion and challenger of the batch model in the MLflow registry."""
    return ModelStatus(**await request.app.state.model_status(settings))
