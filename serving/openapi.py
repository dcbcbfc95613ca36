"""What the OpenAPI document says beyond the routes' signatures: links between operations.

A link tells a client (and schemathesis' stateful phase) where the ids in one response can
be used next: the alerts of ``GET /alerts`` → ``GET /alerts/{alert_id}``, the source a
``PUT /inventory/{source_id}`` wrote → its ``GET``/``PATCH``/``DELETE``, and so on. Operation
ids are the route functions' names (``create_app`` sets ``generate_unique_id_function``).
"""

from __future__ import annotations

from typing import Any


def links(**targets: dict[str, str]) -> dict[str, Any]:
    """``{"links": …}`` of a response: operation id -> {parameter: runtime expression}."""
    return {
        "links": {
            "".join(w.capitalize() for w in op.split("_")): {
                "operationId": op,
                "parameters": params,
            }
            for op, params in targets.items()
        }
    }


def operation_id(route: Any) -> str:
    """The operation id of a route: its function's name (unique across the API)."""
    return route.name
