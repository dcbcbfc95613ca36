"""FastAPI application factory.

``create_app(settings)`` opens an async PostgreSQL pool and starts the alert broadcaster in
its lifespan. Routes live in one module per resource; they get the pool and the settings
through the ``Annotated`` dependencies below, which tests override.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated

import asyncio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from pipeline.errors import NotFound, ServiceError
from pipeline.runner import Bus
from pipeline.settings import Settings
from serving.broadcast import Broadcaster, KafkaAlertSource

log = logging.getLogger(__name__)


def get_pool(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_broadcaster(request: Request) -> Broadcaster:
    return request.app.state.broadcaster


PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BroadcasterDep = Annotated[Broadcaster, Depends(get_broadcaster)]


def create_app(settings: Settings | None = None, bus: Bus | None = None) -> FastAPI:
    """Build the API. With ``bus`` (embedded mode) alerts come in-process instead of from Kafka."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = AsyncConnectionPool(settings.pg_dsn(), min_size=1, max_size=20, open=False,
                                   kwargs={"autocommit": True})
        await pool.open(wait=True, timeout=30)
        b = Broadcaster(queue_size=settings.sse_queue_size, loop=asyncio.get_running_loop())
        source = None
        unsubscribe = None
        if bus is not None:
            unsubscribe = bus.subscribe(b.publish_threadsafe)
            b.ready.set()
        else:
            source = KafkaAlertSource(settings, b)
            source.start()
        app.state.pool, app.state.broadcaster, app.state.alert_source = pool, b, source
        try:
            yield
        finally:
            if unsubscribe:
                unsubscribe()
            if source:
                source.stop()
                source.join(timeout=5)
            await pool.close()

    app = FastAPI(
        title="EventOps API",
        version="0.1.0",
        description="Anomaly scores, alerts and metrics of your telemetry, as JSON and SSE.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc) or "not found"}, status_code=404)

    @app.exception_handler(ServiceError)
    async def _unavailable(request: Request, exc: ServiceError):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"detail": errs}, status_code=422)

    from serving import alerts, health, metrics

    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(alerts.router)
    return app
