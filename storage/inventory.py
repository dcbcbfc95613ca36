"""Inventory (enrichment tags per source): the enrich stage's snapshot and its edits."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def load_inventory(conn: psycopg.Connection) -> dict[tuple[str, str], dict]:
    rows = conn.execute("SELECT tenant_id, source_id, tags FROM inventory").fetchall()
    conn.commit()
    return {(t, s): tags for t, s, tags in rows}


def set_inventory(conn: psycopg.Connection, tenant: str, source: str, tags: dict, replace: bool = False) -> dict:
    """Upsert one inventory entry; merges into existing tags unless ``replace``."""
    merge = "EXCLUDED.tags" if replace else "inventory.tags || EXCLUDED.tags"
    row = conn.execute(
        "INSERT INTO inventory (tenant_id, source_id, tags) VALUES (%s, %s, %s) "
        f"ON CONFLICT (tenant_id, source_id) DO UPDATE SET tags = {merge}, updated_at = now() "
        "RETURNING tags",
        (tenant, source, Jsonb(tags)),
    ).fetchone()
    conn.commit()
    return row[0]


def delete_inventory(conn: psycopg.Connection, tenant: str, source: str) -> bool:
    n = conn.execute(
        "DELETE FROM inventory WHERE tenant_id = %s AND source_id = %s", (tenant, source)
    ).rowcount
    conn.commit()
    return n > 0
