"""JSON bodies for the hot read routes, built without a per-row Python model.

FastAPI validates a route's return value against its ``response_model`` before serializing
it. For a few hundred rows read from typed PostgreSQL columns that pass re-checks what the
table schema already guarantees. Two cheaper paths, both keeping ``response_model`` for the
OpenAPI document and for the schema-conformance fuzz test, which pins them to the models:

* :func:`json_response` — plain dicts in the model's field order, serialized by pydantic-core
  (datetimes as ISO 8601 with ``Z``, NaN/inf as ``null``, like the model path);
* :func:`json_rows_sql` — PostgreSQL renders the rows as one JSON array (``json_agg``), so the
  route never decodes a row at all: decoding a few hundred typed rows in psycopg and
  re-encoding them cost more API CPU than the query itself (``benchmarks/bench_api.py``);
  PostgreSQL serves the pool's connections on both cores, the API process on one.
  Timestamps come out in the same ``…Z`` form as the Python path (:func:`ts_json`); use it
  only for columns that cannot hold NaN/±Infinity (JSON has no such numbers).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from psycopg import sql
from pydantic_core import to_json

__all__ = ["json_body", "json_response", "json_rows_sql", "ts_json"]


def json_response(data: Any, headers: dict[str, str] | None = None) -> Response:
    """``data`` (dicts, lists, str, int, float, datetime, None) as an ``application/json`` 200."""
    return Response(to_json(data, inf_nan_mode="null"), media_type="application/json", headers=headers)


def json_body(body: bytes | str, headers: dict[str, str] | None = None) -> Response:
    """An already rendered JSON document as an ``application/json`` 200."""
    return Response(body.encode() if isinstance(body, str) else body, media_type="application/json",
                    headers=headers)


def ts_json(col: str) -> sql.Composable:
    """A ``timestamptz`` column as the API's ISO 8601 UTC text (``2026-01-02T03:04:05.000006Z``)."""
    return sql.SQL("""to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""").format(
        sql.SQL(col))


def json_rows_sql(fields: dict[str, sql.Composable | str], source: sql.Composable, order: str) -> sql.Composed:
    """``SELECT`` one text value: the rows of ``source`` (aliased ``r``) as a JSON array of objects.

    ``fields`` maps output keys, in the response model's order, to expressions over ``r``
    (a plain string is a column of ``r``). ``order`` orders the array (``json_agg … ORDER BY``).
    """
    obj = sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(k), sql.SQL("r.") + sql.Identifier(v) if isinstance(v, str) else v)
        for k, v in fields.items())
    return sql.SQL("SELECT coalesce(json_agg(json_build_object({}) ORDER BY {}), '[]')::text FROM ({}) r").format(
        obj, sql.SQL(order), source)
