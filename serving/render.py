"""Pre-serialized JSON bodies for the hot read routes.

FastAPI validates a route's return value against its ``response_model`` before serializing
it. For a few hundred rows read from typed PostgreSQL columns that pass re-checks what the
table schema already guarantees, and it cost more than the rest of the route's Python work
(``benchmarks/bench_api.py``). Hot routes therefore build plain dicts in the model's field
order, with the model's Python types, and return :func:`json_response`: pydantic-core's own
serializer (datetimes as ISO 8601 with ``Z``, NaN/inf as ``null``, like the model path) without
the validation pass. They keep ``response_model`` for OpenAPI and for the schema-conformance
fuzz test, which is what pins the two paths together.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from pydantic_core import to_json


def json_response(data: Any, headers: dict[str, str] | None = None) -> Response:
    """``data`` (dicts, lists, str, int, float, datetime, None) as an ``application/json`` 200."""
    return Response(
        to_json(data, inf_nan_mode="null"), media_type="application/json", headers=headers
    )
