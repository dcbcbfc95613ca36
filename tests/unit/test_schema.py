"""storage.schema derives the feature columns from the feature code (no list written out again)."""

from __future__ import annotations

from features.cross import CROSS_FEATURES
from features.windows import FEATURES
from storage import schema, sink


def test_schema_feature_columns_are_derived_from_the_feature_code():
    assert schema.FEATURE_COLUMNS == FEATURES
    assert schema.CROSS_COLUMNS == CROSS_FEATURES
    assert schema.WINDOW_FEATURE_COLUMNS == FEATURES + CROSS_FEATURES


def test_sink_statements_name_every_feature_column():
    """The sink's COPY/INSERT/staging column lists follow the schema (a new feature is written)."""
    for stmt in (sink._FEATURES_COLS, sink._STAGE_COLS, sink._STAGE_WINDOWS, sink._INSERT_FEATURES):
        for col in schema.WINDOW_FEATURE_COLUMNS:
            assert col in stmt.replace(",", " ").split(), (col, stmt)
    assert len(sink._STAGE_COPY_TYPES) == len(sink._STAGE_COLS.split(", "))
