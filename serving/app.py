"""FastAPI application factory.

``create_app(settings)`` opens an async PostgreSQL pool and starts the alert broadcaster in
its lifespan. Routes live in one module per resource and get the pool, the settings and the
calling key through the ``Annotated`` dependencies of :mod:`serving.deps`, which tests override.
Domain errors are mapped to HTTP statuses in one place (:data:`serving.errors.STATUS`); bad
input is a 4xx with a ``detail`` message, never a 500. The dashboard (``serving/static``) is
served at ``/``, behind the API routes (:class:`Dashboard`: an API path with a method it does
not have is a 405 with ``Allow``). Operation ids are the route functions' names.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool
from starlette.routing import compile_path

from core import __version__
from core.settings import Settings
from pipeline.embedded import Bus
from serving import errors
from serving.auth import KeyStore, RateLimiter
from serving.broadcast import Broadcaster, KafkaAlertSource
from serving.config import ServingSettings
from serving.deps import BroadcasterDep, PoolDep, SettingsDep  # noqa: F401 - re-exported
from serving.errors import ERROR_RESPONSES, ErrorBody, error_response  # noqa: F401 - re-exported
from serving.health import (
    RETRY_AFTER_S,
    DatabaseUnavailable,
    GuardedPool,
    QuietWhileDown,
    is_outage,
)
from serving.openapi import operation_id

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
# the dashboard and /docs load only files of this server (Swagger UI is vendored: /docs works
# offline); /docs runs FastAPI's one inline script, allowed by its hash (docs_page)
CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SWAGGER = "/vendor/swagger-ui"  # serving/static/vendor/swagger-ui (vendor/README.md)


def docs_page(openapi_url: str, title: str) -> tuple[bytes, str]:
    """The Swagger UI page from the vendored files, and the CSP that lets exactly its inline
    script run (a ``sha256-`` source; Swagger UI sets inline styles, hence style-src)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
    ).body
    scripts = re.findall(rb"<script>(.*?)</script>", html, re.S)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s).digest()).decode() + "'" for s in scripts
    )
    csp = (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return bytes(html), csp


# what SecurityHeaders appends when the response set none of these itself (precomputed)
_EXTRA = [*SECURITY_HEADERS, (b"content-security-policy", CSP), (b"cache-control", b"no-store")]
_ADDED = frozenset(k for k, _ in _EXTRA)


_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def _json_loads(data: bytes):
    # orjson turns integers beyond 64 bits into floats and refuses 1e400; jsonb allows both, so
    # such documents (rare) go to the stdlib parser, which reads them exactly as before
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # json/jsonb columns (tags, explanation, payload) parsed by orjson: several times cheaper
    set_json_loads(_json_loads, conn)


class SecurityHeaders:
    """Adds security headers to every HTTP response (ASGI middleware: streaming-safe)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if names.isdisjoint(_ADDED):  # the common case: nothing to skip
                    headers += _EXTRA
                else:
                    headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                    if b"content-security-policy" not in names:
                        headers.append((b"content-security-policy", CSP))
                    if b"cache-control" not in names:
                        headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies larger than ``limit`` bytes with 413 (declared or streamed)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    resp = JSONResponse(
                        {"detail": f"request body larger than {self.limit} bytes"}, 413
                    )
                    return await resp(scope, receive, send)
        if not any(k == b"transfer-encoding" for k, _ in scope.get("headers", [])):
            return await self.app(scope, receive, send)
        # chunked upload without a declared length: buffer up to the limit, then replay
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                resp = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, 413)
                return await resp(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Dashboard:
    """The static dashboard behind every API route (mounted at ``/``).

    A request reaches it when no route took it: either no API path matched (static files, 404),
    or an API path matched with a method it does not have. The latter is answered 405 with an
    ``Allow`` header listing that path's methods in the OpenAPI (RFC 9110), not the static
    files' ``GET, HEAD``.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.static = StaticFiles(directory=STATIC, html=True)
        self._paths: list[tuple[re.Pattern, list[str]]] | None = None

    def allowed(self, path: str) -> list[str]:
        if self._paths is None:
            self._paths = [
                (compile_path(p)[0], sorted(m.upper() for m in ops))
                for p, ops in self.app.openapi()["paths"].items()
            ]
        methods: set[str] = set()
        for regex, ms in self._paths:
            if regex.match(path):
                methods.update(ms)
        return sorted(methods)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            allowed = self.allowed(scope["path"])
            if allowed:
                msg = f"method {scope['method']} not allowed here; allowed: {', '.join(allowed)}"
                resp = error_response(405, msg, {"Allow": ", ".join(allowed)})
                return await resp(scope, receive, send)
        await self.static(scope, receive, send)


def _document(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI of this app states its configured limits (inventory tags)."""
    from serving.inventory import document_limits

    generate = app.openapi  # FastAPI's: builds and caches app.openapi_schema

    def openapi() -> dict:
        if app.openapi_schema is None:
            document_limits(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi


def create_app(
    settings: Settings | None = None, bus: Bus | None = None, serving: ServingSettings | None = None
) -> FastAPI:
    """Build the API. With ``bus`` (embedded mode) alerts come in-process instead of from Kafka."""
    settings = settings or Settings()
    serving = serving or ServingSettings()
    cors = serving.cors_list()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # connections are checked when handed out (a PostgreSQL restart leaves dead ones
        # behind, replaced instead of failing a request); waits are bounded by
        # db_pool_timeout_s, and while the database is away the pool refuses at once
        # (serving.health: GuardedPool, DbState)
        wait = serving.db_pool_timeout_s
        pool = GuardedPool(
            settings.pg_dsn(),
            min_size=min(2, serving.db_pool_size),
            max_size=serving.db_pool_size,
            open=False,
            timeout=wait,
            reconnect_timeout=wait,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(wait))},
            configure=_configure,
        )
        quiet = QuietWhileDown(pool.state)
        logging.getLogger("psycopg.pool").addFilter(quiet)
        await pool.open(wait=True, timeout=30)
        b = Broadcaster(
            pool,
            queue_size=settings.sse_queue_size,
            page_size=serving.sse_page_size,
            poll_s=serving.sse_poll_s,
            loop=asyncio.get_running_loop(),
        )
        source = None
        unsubscribe = None
        if bus is not None:
            unsubscribe = bus.subscribe(b.publish_threadsafe)
            b.ready.set()
        else:
            source = KafkaAlertSource(settings, b)
            source.start()
        app.state.pool, app.state.broadcaster, app.state.alert_source = pool, b, source
        # the ~130k objects of the imported app live as long as the process: moving them out of
        # the collector's reach takes the full-heap collections (tens of ms) out of the latency tail
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            ingest = getattr(app.state, "ingest_pipeline", None)  # POST /ingest, embedded mode
            if ingest is not None:
                await asyncio.to_thread(ingest.close)
            await b.aclose()
            if unsubscribe:
                unsubscribe()
            if source:
                source.stop()
                source.join(timeout=5)
            await pool.state.close()
            await pool.close()
            logging.getLogger("psycopg.pool").removeFilter(quiet)

    app = FastAPI(
        title="EventOps API",
        version=__version__,
        description="Anomaly scores, alerts, incidents and metrics of your telemetry, as JSON and "
        "Server-Sent Events. Every route except health and /prometheus/metrics needs a "
        "per-tenant API key "
        "(`Authorization: Bearer eo_…` or `X-API-Key`).",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # served below from the vendored Swagger UI
        redoc_url=None,
    )
    page, page_csp = docs_page(app.openapi_url or "/openapi.json", f"{app.title} - docs")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp})

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> RedirectResponse:  # the old address of the docs
        return RedirectResponse("/docs", status_code=308)

    from serving.registry import model_status

    app.state.settings = settings
    app.state.serving = serving
    app.state.keys = KeyStore(ttl=serving.auth_cache_s)
    app.state.limiter = RateLimiter(serving.rate_limit_rps, serving.rate_limit_burst)
    app.state.model_status = model_status
    app.state.bus = bus

    errors.install(app)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg.InterfaceError)
    async def _db_down(request: Request, exc: psycopg.Error):
        # the database away: one log line from DbState, then every request answers this at
        # once until a probe finds it back; any other operational error is this request's
        pool = getattr(request.app.state, "pool", None)
        if is_outage(exc) and isinstance(pool, GuardedPool):
            pool.state.trip(pool, exc)
        elif not isinstance(exc, DatabaseUnavailable):
            log.warning(
                "%s %s: database error: %s",
                request.method,
                request.url.path,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
        return JSONResponse(
            {"detail": f"database unavailable; retry in {RETRY_AFTER_S} s"},
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    from serving import (
        alerts,
        feedback,
        health,
        hosts,
        incidents,
        ingest,
        inventory,
        metrics,
        notify,
        prometheus,
        registry,
        series,
        standards,
    )

    app.include_router(health.router)
    app.include_router(prometheus.router, responses=ERROR_RESPONSES)
    for mod in (
        metrics,
        series,
        hosts,
        alerts,
        incidents,
        feedback,
        notify,
        inventory,
        registry,
        ingest,
        standards,
    ):
        app.include_router(mod.router, responses=ERROR_RESPONSES)
    app.mount("/", Dashboard(app), name="dashboard")
    _document(app, settings)

    app.add_middleware(BodyLimit, limit=serving.max_request_bytes)
    app.add_middleware(SecurityHeaders)
    if cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Next-Cursor", "Link", "Retry-After"],
            max_age=600,
        )
    # outermost: every answer is counted, a 413 of BodyLimit or a CORS preflight included
    app.add_middleware(prometheus.RequestMetrics)
    return app
