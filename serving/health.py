"""Liveness and readiness (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.deps import BroadcasterDep, PoolDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(pool: PoolDep, broadcaster: BroadcasterDep):
    """PostgreSQL answers and the alert broadcaster is attached to its source (200 ``degraded`` while it reconnects)."""
    checks = {}
    try:
        async with pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        checks["postgres"] = f"error: {type(e).__name__}"
    # "degraded": its Kafka source is reconnecting; streams still get every alert (from PostgreSQL)
    checks["broadcaster"] = broadcaster.status()
    ok = all(v == "ok" for v in checks.values())
    degraded = checks["postgres"] == "ok" and checks["broadcaster"].startswith("degraded")
    body = Health(status="ok" if ok else "degraded" if degraded else "unavailable", checks=checks)
    return body if ok or degraded else JSONResponse(body.model_dump(), status_code=503)
