"""HTTP-facing errors of the API, and the one place that maps every error to a status.

    EventOpsError (core.errors)
    ├── NotFound           404  unknown id, or an id of another tenant (indistinguishable)
    ├── ServiceError       503  PostgreSQL/Kafka unreachable
    ├── ConfigError        500  never raised by a request
    └── ApiError                errors only the API raises
        ├── BadRequest     400  well-formed but unusable parameters
        ├── Unauthorized   401  no key, malformed key, unknown or revoked key
        ├── Forbidden      403  the key's scope does not allow the operation
        ├── Conflict       409  the resource exists already (a channel of that name)
        ├── TooLarge       413  request body above ``max_request_bytes``
        ├── UnsupportedMedia 415  a body that is not ``application/json``
        ├── RateLimited    429  the key exceeded its request rate (``Retry-After`` says when)
        └── Overloaded     503  too many ingest requests at once (``Retry-After`` says when)

Besides the tree, these exceptions are mapped (:data:`STATUS`; :func:`install` registers the
handlers):

- :class:`fastapi.exceptions.RequestValidationError` → 422, ``detail`` a list of
  ``{loc, msg, type}`` (the input itself is never echoed);
- :class:`psycopg.DataError` → 400: a value PostgreSQL cannot represent is the caller's input;
- :class:`psycopg.OperationalError` → 503: the database is unreachable (its handler lives with
  the pool in :mod:`serving.app`, which knows whether the database is away).

Every error body is ``{"detail": …}`` rendered by :func:`error_response`, which cannot fail on
its own message: text from the request (an unknown id, a dict key) may hold a lone surrogate
that no UTF-8 encoder takes, so messages pass through :func:`printable` first. Routes declare
:data:`ERROR_RESPONSES` so the OpenAPI lists every status they can answer.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel

from core.errors import ConfigError, EventOpsError, NotFound, ServiceError

log = logging.getLogger(__name__)


class ApiError(EventOpsError):
    """Base of the errors raised while serving a request."""


class BadRequest(ApiError):
    """Parameters are syntactically valid but cannot be served."""


class Unauthorized(ApiError):
    """Missing, malformed, unknown or revoked API key."""


class Forbidden(ApiError):
    """The key is valid but its scope does not allow this operation."""


class Conflict(ApiError):
    """The resource already exists (e.g. a channel of that name)."""


class TooLarge(ApiError):
    """The request body is larger than allowed."""


class UnsupportedMedia(ApiError):
    """The request body is not of a media type the operation reads."""


class RateLimited(ApiError):
    """Too many requests for this key; ``retry_after`` seconds until the next one is allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit exceeded; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class Overloaded(ApiError):
    """The process works on as many ingest requests as it may; retry in ``retry_after`` s."""

    def __init__(self, retry_after: float = 1.0) -> None:
        super().__init__(f"ingest is busy; retry in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


#: ``Retry-After`` of a 503 for a service (Kafka, PostgreSQL) that is away
SERVICE_RETRY_AFTER_S = 5

#: exception class -> HTTP status (first match in MRO order wins)
STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    Conflict: 409,
    TooLarge: 413,
    UnsupportedMedia: 415,
    RateLimited: 429,
    Overloaded: 503,
    ServiceError: 503,
    ConfigError: 500,
    psycopg.DataError: 400,
    psycopg.OperationalError: 503,
}


def status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


class ErrorBody(BaseModel):
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "parameters that cannot be served"},
    401: {"model": ErrorBody, "description": "missing, malformed, unknown or revoked API key"},
    403: {"model": ErrorBody, "description": "the key's scope does not allow this"},
    404: {"model": ErrorBody, "description": "not found (or another tenant's)"},
    413: {"model": ErrorBody, "description": "request body too large"},
    429: {"model": ErrorBody, "description": "rate limit exceeded (see Retry-After)"},
    503: {"model": ErrorBody, "description": "database unavailable (see Retry-After)"},
}


def printable(text: str) -> str:
    """``text`` with lone surrogates spelled ``\\udXXX``: always encodable as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    """``{"detail": detail}`` as JSON; never raises on the text it is given."""
    if isinstance(detail, str):
        detail = printable(detail) or "error"
    body = json.dumps(
        {"detail": detail}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    return Response(
        body.encode("utf-8"), status_code=status, headers=headers, media_type="application/json"
    )


def _message(exc: Exception) -> str:
    if isinstance(exc, psycopg.DataError):
        # values PostgreSQL cannot represent (out-of-range timestamps, NUL in text, …)
        return f"invalid value: {exc.diag.message_primary or exc}"
    if isinstance(exc, psycopg.OperationalError):
        return "database unavailable"
    return str(exc)


def response_for(exc: Exception) -> Response:
    status = status_of(exc)
    headers = {}
    if isinstance(exc, RateLimited | Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
    elif status == 503:  # Kafka or PostgreSQL away: senders retry later
        headers["Retry-After"] = str(SERVICE_RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, _message(exc), headers)


def validation_detail(errors: list[dict]) -> list[dict]:
    """FastAPI/pydantic errors as ``{loc, msg, type}`` (the offending input is not echoed)."""
    out = []
    for e in errors:
        loc = [x if isinstance(x, int) else printable(str(x)) for x in e.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "msg": printable(str(e.get("msg", ""))),
                "type": printable(str(e.get("type", ""))),
            }
        )
    return out


def invalid(loc: tuple | list, msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 raised by a route's own validation, shaped like FastAPI's."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_}])


def install(app: FastAPI) -> None:
    """Register the handlers that turn every mapped exception into its status and a message."""

    async def domain(request: Request, exc: Exception) -> Response:
        if status_of(exc) >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return response_for(exc)

    async def validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, validation_detail(list(exc.errors())))

    for cls in (EventOpsError, psycopg.DataError):
        app.add_exception_handler(cls, domain)
    app.add_exception_handler(RequestValidationError, validation)
