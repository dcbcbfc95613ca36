"""storage.schema against the migrated database: the feature columns the code writes are the
``features`` table's, and every table the migrations create is named."""

from __future__ import annotations

from features.cross import CROSS_FEATURES
from features.windows import FEATURES
from storage.schema import TABLES, WINDOW_FEATURE_COLUMNS, WINDOW_KEY, feature_type

_PG_TYPE = {"integer": "int4", "double precision": "float8"}


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
