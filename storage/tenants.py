"""Tenants: the normalize stage's snapshot of known tenants, and their creation."""

from __future__ import annotations

import psycopg


def load_tenants(conn: psycopg.Connection) -> frozenset[str]:
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
