"""Tables and column lists of the EventOps database, in one place.

The migrations (``storage/migrations/*.sql``) create the tables; this module names them and the
columns the code writes and reads. The per-window feature columns are *derived* from the
feature code (:data:`features.windows.FEATURES`, :data:`features.cross.CROSS_FEATURES`), never
written out again: a new feature is a new name there plus a migration adding its column
(``tests/integration/test_schema_migrated.py`` checks the migrated ``features`` table against
this list).

>>> FEATURE_COLUMNS[:3], CROSS_COLUMNS[0]
(('count', 'mean', 'std'), 'host_metrics')
>>> [feature_type(c) for c in ("count", "gap", "host_metrics")]
['int4', 'float8', 'float8']

The columns of ``scores`` are listed once, with their types (:data:`SCORE_COLUMN_TYPES`); the
sink's COPY and staging statements and the repositories' reads are built from that list.

>>> SCORE_COLUMNS[-3:], dict(SCORE_COLUMN_TYPES)["warming"]
(('typical_deviation', 'confidence', 'warming'), 'bool')
"""

from __future__ import annotations

from features.cross import CROSS_FEATURES
from features.windows import FEATURES

__all__ = [
    "ALERT_COLUMNS",
    "CROSS_COLUMNS",
    "FEATURE_COLUMNS",
    "METRIC_COLUMNS",
    "SCORE_COLUMNS",
    "SCORE_COLUMN_TYPES",
    "TABLES",
    "WINDOW_FEATURE_COLUMNS",
    "WINDOW_KEY",
    "feature_type",
]

#: the tables the migrations create (partitions and staging tables aside)
TABLES: tuple[str, ...] = (
    "tenants",
    "api_keys",
    "inventory",
    "metrics",
    "features",
    "scores",
    "shadow_scores",
    "alerts",
    "alert_events",
    "feedback",
    "checkpoints",
    "dead_letters",
    "schema_migrations",
    "series",  # migration 002; nothing writes it (series are named by tenant, host, metric)
    "channels",  # migration 010: notifications
    "silences",
    "deliveries",
    "delivery_attempts",
    "notify_cursor",
)

#: columns of ``metrics`` the sink writes, in COPY order
METRIC_COLUMNS: tuple[str, ...] = (
    "event_id",
    "tenant_id",
    "host",
    "metric",
    "value",
    "ts_event",
    "unit",
    "tags",
)

#: the key of a window row of ``features`` / ``scores`` (primary key: the first four)
WINDOW_KEY: tuple[str, ...] = ("tenant_id", "host", "metric", "window_start", "window_end")

#: per-window feature columns of ``features`` (``count`` NOT NULL, the others nullable)
FEATURE_COLUMNS: tuple[str, ...] = tuple(FEATURES)
#: per-host cross-metric columns of ``features`` (migration 007; NULL in rows stored before it)
CROSS_COLUMNS: tuple[str, ...] = tuple(CROSS_FEATURES)
#: every feature column of ``features``, in table order
WINDOW_FEATURE_COLUMNS: tuple[str, ...] = FEATURE_COLUMNS + CROSS_COLUMNS

#: feature columns stored as ``integer`` (the others are ``double precision``)
_INTEGER_FEATURES = frozenset({"count"})

#: columns of ``scores`` after the window key, in table order, with their type (binary COPY
#: name): the score and what backs it. ``typical_deviation`` (the expected window mean's typical
#: deviation; the API derives the band from it), ``confidence`` and ``warming`` came with
#: migration 009 (NULL in rows stored before it)
SCORE_COLUMN_TYPES: tuple[tuple[str, str], ...] = (
    ("score", "float8"),
    ("severity", "text"),
    ("components", "jsonb"),
    ("actual", "float8"),
    ("expected", "float8"),
    ("explanation", "jsonb"),
    ("model_version", "text"),
    ("typical_deviation", "float8"),
    ("confidence", "float8"),
    ("warming", "bool"),
)
#: columns of ``scores`` after the window key
SCORE_COLUMNS: tuple[str, ...] = tuple(k for k, _ in SCORE_COLUMN_TYPES)

#: columns of ``alerts`` the API reads, in :class:`serving.alerts.Alert`'s field order
ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id",
    "tenant_id",
    "host",
    "metric",
    "value",
    "severity",
    "state",
    "ts_event",
    "rule",
    "threshold",
    "message",
    "score",
    "explanation",
    "model_version",
    "opened_at",
    "updated_at",
    "resolved_at",
)


def feature_type(name: str) -> str:
    """PostgreSQL type (binary COPY name) of feature column ``name``: ``int4`` or ``float8``."""
    return "int4" if name in _INTEGER_FEATURES else "float8"
