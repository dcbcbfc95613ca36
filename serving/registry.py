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
    status: str | None = None
    created_at: float | None = None
    tags: dict[str, str] = {}


class ModelStatus(BaseModel):
    name: str
    available: bool
    detail: str = ""
    champion: ModelVersion | None = None
    challenger: ModelVersion | None = None


def _query(s: Settings) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=s.mlflow_tracking_uri(), registry_uri=s.mlflow_tracking_uri())
    out: dict[str, Any] = {"name": s.model_name, "available": True, "detail": ""}
    for alias in ("champion", "challenger"):
        try:
            mv = client.get_model_version_by_alias(s.model_name, alias)
        except MlflowException:
            out[alias] = None
            continue
        out[alias] = {"version": str(mv.version), "run_id": mv.run_id, "status": mv.status,
                      "created_at": (mv.creation_timestamp or 0) / 1000, "tags": dict(mv.tags or {})}
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
