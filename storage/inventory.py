"""Inventory: enrichment tags per source (host) of a tenant.

The enrich stage loads every tenant's entries (:func:`load_inventory`) and re-reads them every
``inventory_refresh_s``; the CLI edits them on a sync connection (``set_inventory``,
``delete_inventory``: each commits), the API on its async pool (``…_item(s)``; the pool's
connection context commits). Both run the same statements. Entries come back as
``(source_id, tags, updated_at)``.
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

#: one entry: created, or its tags replaced (``replace``) or merged into
_UPSERT = (
    "INSERT INTO inventory (tenant_id, source_id, tags) VALUES (%(t)s, %(s)s, %(tags)s) "
    "ON CONFLICT (tenant_id, source_id) DO UPDATE SET tags = CASE WHEN %(replace)s"
    " THEN EXCLUDED.tags ELSE inventory.tags || EXCLUDED.tags END, updated_at = now() "
    "RETURNING source_id, tags, updated_at"
)
_MERGE = (
    "UPDATE inventory SET tags = tags || %s, updated_at = now() "
    "WHERE tenant_id = %s AND source_id = %s RETURNING source_id, tags, updated_at"
)
_DELETE = "DELETE FROM inventory WHERE tenant_id = %s AND source_id = %s"


def load_inventory(conn: psycopg.Connection) -> dict[tuple[str, str], dict]:
    """Every tenant's entries: (tenant, source) -> tags (the enrich stage's snapshot)."""
    rows = conn.execute("SELECT tenant_id, source_id, tags FROM inventory").fetchall()
    conn.commit()
    return {(t, s): tags for t, s, tags in rows}


def _upsert_params(tenant: str, source: str, tags: dict, replace: bool) -> dict:
    return {"t": tenant, "s": source, "tags": Jsonb(tags), "replace": replace}


def set_inventory(
    conn: psycopg.Connection, tenant: str, source: str, tags: dict, replace: bool = False
) -> dict:
    """Upsert one inventory entry; merges into existing tags unless ``replace``. Returns its
    tags."""
    row = conn.execute(_UPSERT, _upsert_params(tenant, source, tags, replace)).fetchone()
    conn.commit()
    return row[1]


def delete_inventory(conn: psycopg.Connection, tenant: str, source: str) -> bool:
    n = conn.execute(_DELETE, (tenant, source)).rowcount
    conn.commit()
    return n > 0


async def list_items(conn: AsyncConnection, tenant: str, limit: int) -> list[tuple]:
    """The tenant's entries by source id, at most ``limit``."""
    cur = await conn.execute(
        "SELECT source_id, tags, updated_at FROM inventory WHERE tenant_id = %s "
        "ORDER BY source_id LIMIT %s",
        (tenant, limit),
    )
    return await cur.fetchall()


async def get_item(conn: AsyncConnection, tenant: str, source: str) -> tuple | None:
    cur = await conn.execute(
        "SELECT source_id, tags, updated_at FROM inventory WHERE tenant_id = %s AND source_id = %s",
        (tenant, source),
    )
    return await cur.fetchone()


async def put_item(conn: AsyncConnection, tenant: str, source: str, tags: dict) -> tuple:
    """Create the entry or replace all of its tags."""
    cur = await conn.execute(_UPSERT, _upsert_params(tenant, source, tags, True))
    return await cur.fetchone()


async def merge_item(conn: AsyncConnection, tenant: str, source: str, tags: dict) -> tuple | None:
    """Merge tags into an existing entry (``None``: there is none)."""
    cur = await conn.execute(_MERGE, (Jsonb(tags), tenant, source))
    return await cur.fetchone()


async def delete_item(conn: AsyncConnection, tenant: str, source: str) -> bool:
    cur = await conn.execute(_DELETE, (tenant, source))
    return cur.rowcount > 0
