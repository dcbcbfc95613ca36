"""Versioned SQL migrations (``storage/migrations/NNN_name.sql``), applied by the project itself.

Each file runs once, in name order, inside one transaction that holds an advisory lock (two
processes migrating at once apply each migration once); ``schema_migrations`` records the
versions applied. A migration library (yoyo, Alembic) would replace these ~35 lines with a
dependency and its own configuration, so the project keeps them.
"""

from __future__ import annotations

from importlib import resources

import psycopg


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration shipped with the package, in order."""
    files = sorted(
        (p for p in resources.files("storage.migrations").iterdir() if p.name.endswith(".sql")),
        key=lambda p: p.name,
    )
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def migrate(conn: psycopg.Connection, upto: str | None = None) -> list[str]:
    """Apply the migrations not yet applied; returns their versions. Safe to run concurrently.

    ``upto`` stops after that version (tests of a migration start from the schema before it).
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(727274)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if upto is not None and version > upto:
                break
            if version in done:
                continue
            conn.execute(text)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
