"""Connections to the EventOps database.

Every other module of :mod:`storage` takes a connection (sync ``psycopg.Connection`` for the
pipeline, CLI and training; ``psycopg.AsyncConnection`` from the API's pool); this one opens
them (the API's pool is ``serving.health.GuardedPool``). :func:`ping` is the liveness probe of
a connection; :func:`count_rows` the one generic read (tests, tools).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from core.errors import ServiceError
from core.settings import Settings


def connect(
    settings: Settings, database: str | None = None, autocommit: bool = False
) -> psycopg.Connection:
    try:
        return psycopg.connect(
            settings.pg_dsn(database),
            autocommit=autocommit,
            connect_timeout=max(1, round(settings.connect_timeout_s)),
        )
    except psycopg.OperationalError as e:
        raise ServiceError(
            f"PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable "
            "(run `make services-up`)"
        ) from e


async def ping(conn: psycopg.AsyncConnection) -> None:
    """``SELECT 1``: raises when the connection (or the server behind it) does not answer."""
    await conn.execute("SELECT 1")


def count_rows(conn: psycopg.Connection, table: str, where: str = "", params: Any = ()) -> int:
    q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    if where:
        q = q + sql.SQL(" WHERE ") + sql.SQL(where)
    n = conn.execute(q, params).fetchone()[0]
    conn.commit()
    return int(n)
