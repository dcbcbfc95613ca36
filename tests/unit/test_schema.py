"""storage.schema derives the feature columns from the feature code (no list written out again),
and the API's response models have the columns the repositories return."""

from __future__ import annotations

import doctest

import pytest

from features.cross import CROSS_FEATURES
from features.windows import FEATURES
from storage import feedback, schema, series, sink


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


def test_api_models_have_the_columns_the_repositories_read():
    from serving.alerts import Alert
    from serving.feedback import Feedback
    from serving.metrics import Point
    from serving.series import Features, Score

    assert tuple(Features.model_fields) == series.FEATURE_ROW
    assert tuple(Point.model_fields) == series.POINT_ROW
    assert set(series.SCORE_ROW) <= set(Score.model_fields)
    # silenced_by is computed by the API (serving.notify.muting), after the stored columns
    assert tuple(Alert.model_fields) == (*schema.ALERT_COLUMNS, "feedback", "silenced_by")
    assert tuple(Feedback.model_fields) == feedback.FEEDBACK_ROW


@pytest.mark.parametrize("module", [schema, series])
def test_storage_doctests(module):
    assert doctest.testmod(module).failed == 0
