"""Request dependencies as ``Annotated`` aliases: pool, settings, broadcaster and the caller.

Authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the SSE endpoints also
accept ``?key=`` because a browser ``EventSource`` cannot send headers. Every route that reads
tenant data takes an optional ``tenant`` query parameter (the MVP's); when given it must be the
key's own tenant, otherwise the answer is 404 like for any other tenant's object.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from core.errors import NotFound
from core.settings import Settings
from serving.auth import KeyStore, Principal, RateLimiter
from serving.broadcast import Broadcaster
from serving.config import ServingSettings
from serving.errors import Unauthorized

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


# ``async def`` although nothing is awaited: FastAPI runs a plain ``def`` dependency in the
# thread pool, a thread hop per dependency per request (most of the per-request overhead)
async def get_pool(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_serving(request: Request) -> ServingSettings:
    return request.app.state.serving


async def get_broadcaster(request: Request) -> Broadcaster:
    return request.app.state.broadcaster


PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ServingDep = Annotated[ServingSettings, Depends(get_serving)]
BroadcasterDep = Annotated[Broadcaster, Depends(get_broadcaster)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer eo_…`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: eo_…`")
_query = APIKeyQuery(
    name="key",
    auto_error=False,
    description="`?key=eo_…` (SSE streams only: EventSource cannot send headers)",
)

TenantQ = Annotated[
    str | None,
    Query(pattern=TENANT_PATTERN, description="Optional; must be the key's own tenant (else 404)."),
]


async def _principal(request: Request, key: str | None, need: str, tenant: str | None) -> Principal:
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer … or X-API-Key)")
    app = request.app
    p = await app.state.keys.verify(app.state.pool, key)
    limiter: RateLimiter = app.state.limiter
    limiter.hit(p.key_id)
    p.require(need)
    if tenant is not None and tenant != p.tenant_id:
        raise NotFound(f"tenant {tenant!r} not found")
    request.state.principal = p
    return p


def _key(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    if bearer is not None and bearer.scheme.lower() == "bearer":
        return bearer.credentials
    return header


async def read_key(
    request: Request,
    tenant: TenantQ = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    header: Annotated[str | None, Depends(_header)] = None,
) -> Principal:
    return await _principal(request, _key(bearer, header), "read", tenant)


async def admin_key(
    request: Request,
    tenant: TenantQ = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    header: Annotated[str | None, Depends(_header)] = None,
) -> Principal:
    return await _principal(request, _key(bearer, header), "admin", tenant)


async def ingest_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    header: Annotated[str | None, Depends(_header)] = None,
) -> Principal:
    return await _principal(request, _key(bearer, header), "ingest", None)


async def stream_key(
    request: Request,
    tenant: TenantQ = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    header: Annotated[str | None, Depends(_header)] = None,
    query: Annotated[str | None, Depends(_query)] = None,
) -> Principal:
    return await _principal(request, _key(bearer, header) or query, "read", tenant)


ReadKey = Annotated[Principal, Depends(read_key)]
AdminKey = Annotated[Principal, Depends(admin_key)]
IngestKey = Annotated[Principal, Depends(ingest_key)]
StreamKey = Annotated[Principal, Depends(stream_key)]

__all__ = [
    "AdminKey",
    "BroadcasterDep",
    "IngestKey",
    "KeyStore",
    "PoolDep",
    "ReadKey",
    "ServingDep",
    "SettingsDep",
    "StreamKey",
    "TenantQ",
]
