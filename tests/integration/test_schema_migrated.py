"""storage.schema against the migrated database: the feature columns the code writes are the
``features`` table's, the score columns the ``scores`` table's, and every table the migrations
create is named."""

from __future__ import annotations

import uuid

from features.cross import CROSS_FEATURES
from features.windows import FEATURES
from storage.connect import connect
from storage.migrate import migrate
from storage.schema import (
    SCORE_COLUMN_TYPES,
    TABLES,
    WINDOW_FEATURE_COLUMNS,
    WINDOW_KEY,
    feature_type,
)

_PG_TYPE = {
    "integer": "int4",
    "double precision": "float8",
    "text": "text",
    "jsonb": "jsonb",
    "boolean": "bool",
}


def test_schema_feature_columns_are_the_migrated_features_table(conn):
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'features'"
        " ORDER BY ordinal_position"
    ).fetchall()
    names = [n for n, _ in rows]
    assert names[: len(WINDOW_KEY)] == list(WINDOW_KEY)
    stored = rows[len(WINDOW_KEY) :]
    assert [n for n, _ in stored] == list(WINDOW_FEATURE_COLUMNS) == [*FEATURES, *CROSS_FEATURES]
    assert {n: _PG_TYPE[t] for n, t in stored} == {
        n: feature_type(n) for n in WINDOW_FEATURE_COLUMNS
    }


def test_schema_names_every_table_the_migrations_create(conn):
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    ).fetchall()
    assert {r[0] for r in rows} == set(TABLES)


def test_schema_score_columns_are_the_migrated_scores_table(conn):
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'scores'"
        " ORDER BY ordinal_position"
    ).fetchall()
    assert [n for n, _ in rows[: len(WINDOW_KEY)]] == list(WINDOW_KEY)
    stored = [(n, _PG_TYPE[t]) for n, t in rows[len(WINDOW_KEY) :]]
    assert stored == list(SCORE_COLUMN_TYPES)


def test_migration_009_keeps_stored_scores_and_the_api_band_falls_back_to_the_explanation(
    base_settings,
):
    """Rows stored before 009 have no typical deviation, confidence or warming (NULL); the API
    still draws the band of the alerting ones from their explanation, as before."""
    from serving.sse import score_row
    from storage.series import SCORE_ROW

    name = f"eventops_m009_{uuid.uuid4().hex[:8]}"
    admin = connect(base_settings, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(base_settings.model_copy(update={"pg_database": name}), autocommit=True) as c:
            migrate(c, upto="008_time_partitions")
            c.execute(
                "INSERT INTO scores (tenant_id, host, metric, window_start, window_end, score,"
                " severity, expected, explanation) SELECT 't1', 'h', 'm', to_timestamp(i * 60),"
                " to_timestamp(i * 60 + 60), 0.9, 'critical', 10, %s::jsonb"
                " FROM generate_series(0, 2) i",
                ('{"typical_deviation": 2.0}',),
            )
            assert migrate(c, upto="009_score_band_confidence") == ["009_score_band_confidence"]
            rows = c.execute(
                "SELECT window_start, window_end, " + ", ".join(SCORE_ROW[2:]) + " FROM scores"
            ).fetchall()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    assert len(rows) == 3
    for r in rows:
        d = score_row(r)
        assert (d["confidence"], d["warming"]) == (None, None)
        assert (d["typical_deviation"], d["lower"], d["upper"]) == (2.0, 4.0, 16.0)


def test_migration_010_starts_the_notify_cursor_at_the_newest_stored_transition(base_settings):
    """An upgrade does not page for old alerts: the fan-out cursor starts past them."""
    name = f"eventops_test_{uuid.uuid4().hex[:8]}"
    admin = connect(base_settings, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(base_settings.model_copy(update={"pg_database": name}), autocommit=True) as c:
            migrate(c, upto="009_score_band_confidence")
            c.execute(
                "INSERT INTO alert_events (event_key, alert_id, tenant_id, kind, payload)"
                " SELECT 'k' || i, 'a' || i, 't1', 'open', '{}'::jsonb FROM generate_series(1, 3) i"
            )
            (newest,) = c.execute("SELECT max(seq) FROM alert_events").fetchone()
            assert migrate(c) == ["010_notifications"]
            (cursor,) = c.execute("SELECT last_seq FROM notify_cursor").fetchone()
            assert cursor == newest
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
