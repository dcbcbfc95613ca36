"""Liveness and readiness (no key needed), and how the API behaves while PostgreSQL is away.

The API's pool is a :class:`GuardedPool`. A request that finds PostgreSQL unreachable (no
connection within ``EVENTOPS_DB_POOL_TIMEOUT_S``, a refused or dropped connection, the server
shutting down) answers ``503`` with ``Retry-After`` and trips :class:`DbState`: from then on
requests that need the database answer the same ``503`` at once instead of waiting, routes that
do not (health, the dashboard's files, OpenAPI) keep working, and ``/readyz`` says ``degraded``.
A probe checks the database every second through the pool, which replaces its dead
connections (``check=`` validates every connection handed out); its first success closes the
breaker, and the API serves again — no restart. One log line when the database goes away and
one when it is back (with how long), never one per request or per reconnect attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

from serving.deps import BroadcasterDep, PoolDep
from storage.connect import ping

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

#: seconds between two probes of a database found away (and the ``Retry-After`` of its 503s)
PROBE_S = 1.0
RETRY_AFTER_S = 2


class DatabaseUnavailable(psycopg.OperationalError):
    """Raised instead of waiting for a connection while the database is known to be away."""


def is_outage(exc: BaseException) -> bool:
    """The error says the server cannot be reached (not that one statement failed).

    Pool timeouts, client-side connection failures (no SQLSTATE), class 08 (connection
    exception) and 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now). A
    cancelled statement (57014) or a deadlock is an error of that request only.
    """
    if isinstance(exc, DatabaseUnavailable):
        return False
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    code = getattr(exc, "sqlstate", None)
    return code is None or code.startswith("08") or code in ("57P01", "57P02", "57P03")


class DbState:
    """Circuit breaker over the pool: open while PostgreSQL is away, closed by a probe."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.reason = ""
        self._probe: asyncio.Task | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def trip(self, pool: GuardedPool, exc: BaseException) -> None:
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.reason = _describe(exc)
        log.warning(
            "degraded: postgres unavailable (%s); requests answer 503 until it is back", self.reason
        )
        self._probe = asyncio.get_running_loop().create_task(self._run_probe(pool))

    async def _run_probe(self, pool: GuardedPool) -> None:
        attempts = 0
        while self.down_since is not None:
            attempts += 1
            try:
                await pool.probe(timeout=2 * PROBE_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - still away: keep probing
                self.reason = _describe(e)
                await asyncio.sleep(PROBE_S)
                continue
            took = time.monotonic() - self.down_since
            self.down_since, self.reason = None, ""
            log.warning(
                "recovered: postgres available again after %.1f s (%d probes); serving requests",
                took,
                attempts,
            )

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            try:
                await self._probe
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass


class GuardedPool(AsyncConnectionPool):
    """An ``AsyncConnectionPool`` that refuses at once (:class:`DatabaseUnavailable`) while
    :attr:`state` knows the database is away, instead of making every request wait."""

    def __init__(self, *args, **kwargs) -> None:
        self.state = DbState()
        super().__init__(*args, **kwargs)

    async def getconn(self, timeout: float | None = None):
        if self.state.down:
            raise DatabaseUnavailable(f"database unavailable ({self.state.reason})")
        return await super().getconn(timeout=timeout)

    async def probe(self, timeout: float) -> None:
        """``SELECT 1`` on a pooled connection, whatever the breaker says."""
        conn = await super().getconn(timeout=timeout)
        try:
            await ping(conn)
        finally:
            await self.putconn(conn)


class QuietWhileDown(logging.Filter):
    """Drops psycopg_pool's per-attempt warnings ("error connecting in …", "discarding closed
    connection") while the breaker reports the outage; they return with the database."""

    def __init__(self, state: DbState) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.state.down or record.levelno >= logging.ERROR


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(pool: PoolDep, broadcaster: BroadcasterDep):
    """`ok` when PostgreSQL answers and the alert broadcaster is attached to its source;
    `degraded` with the reason while the database is away (503) or while the broadcaster's Kafka
    source reconnects (200: streams still get every alert, from PostgreSQL)."""
    checks = {}
    state: DbState | None = getattr(pool, "state", None)
    if state is not None and state.down:
        checks["postgres"] = f"degraded: {state.reason}"
    else:
        try:
            async with pool.connection(timeout=5) as conn:
                await ping(conn)
            checks["postgres"] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, not raised
            if state is not None and is_outage(e):
                state.trip(pool, e)
            checks["postgres"] = f"degraded: {_describe(e)}"
    checks["broadcaster"] = broadcaster.status()
    if checks["postgres"] != "ok":
        status, code = "degraded", 503
    elif checks["broadcaster"] == "ok":
        status, code = "ok", 200
    elif checks["broadcaster"].startswith("degraded"):
        status, code = "degraded", 200
    else:
        status, code = "starting", 503
    body = Health(status=status, checks=checks)
    return body if code == 200 else JSONResponse(body.model_dump(), status_code=code)
