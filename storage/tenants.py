"""Tenants and their API keys.

:func:`load_tenants` is the normalize stage's snapshot of every known tenant. Keys are
administered on sync connections (CLI, demo; each function commits) and verified by the API on
its async pool (:func:`key_row`, by key id: the key says which tenant it belongs to). Only the
SHA-256 of a key's secret is stored (``serving.auth``).
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection

#: columns of a row of :func:`list_keys`
KEY_ROW: tuple[str, ...] = ("key_id", "tenant_id", "scope", "label", "created_at", "revoked_at")


def load_tenants(conn: psycopg.Connection) -> frozenset[str]:
    """Every tenant id."""
    rows = conn.execute("SELECT tenant_id FROM tenants").fetchall()
    conn.commit()
    return frozenset(r[0] for r in rows)


def create_tenant(conn: psycopg.Connection, tenant: str, name: str = "") -> bool:
    n = conn.execute(
        "INSERT INTO tenants (tenant_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (tenant, name),
    ).rowcount
    conn.commit()
    return n > 0


def tenant_exists(conn: psycopg.Connection, tenant: str) -> bool:
    found = (
        conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant,)).fetchone() is not None
    )
    conn.commit()
    return found


# --- API keys ---------------------------------------------------------------------------------


def add_key(
    conn: psycopg.Connection, key_id: str, tenant: str, scope: str, key_hash: bytes, label: str = ""
) -> None:
    conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, scope, key_hash, label)"
        " VALUES (%s, %s, %s, %s, %s)",
        (key_id, tenant, scope, key_hash, label),
    )
    conn.commit()


def list_keys(conn: psycopg.Connection, tenant: str | None = None) -> list[dict]:
    """Keys (without their hashes) of ``tenant``, or of every tenant, by tenant and age."""
    rows = conn.execute(
        "SELECT " + ", ".join(KEY_ROW) + " FROM api_keys "
        "WHERE %s::text IS NULL OR tenant_id = %s ORDER BY tenant_id, created_at",
        (tenant, tenant),
    ).fetchall()
    conn.commit()
    return [dict(zip(KEY_ROW, r, strict=True)) for r in rows]


def revoke_key(conn: psycopg.Connection, key_id: str) -> bool:
    n = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
    ).rowcount
    conn.commit()
    return n > 0


async def key_row(conn: AsyncConnection, key_id: str) -> tuple[str, str, bytes, bool] | None:
    """``(tenant_id, scope, key_hash, revoked)`` of a key, or ``None`` when there is none."""
    cur = await conn.execute(
        "SELECT tenant_id, scope, key_hash, revoked_at IS NOT NULL FROM api_keys WHERE key_id = %s",
        (key_id,),
    )
    return await cur.fetchone()
