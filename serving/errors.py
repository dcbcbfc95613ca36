"""HTTP-facing errors of the API, and the one table that maps every domain error to a status.

    EventOpsError (pipeline.errors)
    ├── NotFound           404  unknown id, or an id of another tenant (indistinguishable)
    ├── ServiceError       503  PostgreSQL/Kafka unreachable
    ├── ConfigError        500  never raised by a request
    └── ApiError                errors only the API raises
        ├── BadRequest     400  well-formed but unusable parameters (empty range, bad cursor)
        ├── Unauthorized   401  no key, malformed key, unknown or revoked key
        ├── Forbidden      403  the key's scope does not allow the operation
        ├── TooLarge       413  request body above ``max_request_bytes``
        └── RateLimited    429  the key exceeded its request rate (``Retry-After`` says when)
"""

from __future__ import annotations

from pipeline.errors import ConfigError, EventOpsError, NotFound, ServiceError


class ApiError(EventOpsError):
    """Base of the errors raised while serving a request."""


class BadRequest(ApiError):
    """Parameters are syntactically valid but cannot be served."""


class Unauthorized(ApiError):
    """Missing, malformed, unknown or revoked API key."""


class Forbidden(ApiError):
    """The key is valid but its scope does not allow this operation."""


class TooLarge(ApiError):
    """The request body is larger than allowed."""


class RateLimited(ApiError):
    """Too many requests for this key; ``retry_after`` seconds until the next one is allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit exceeded; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


#: exception class -> HTTP status (first match in MRO order wins)
STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    RateLimited: 429,
    ServiceError: 503,
    ConfigError: 500,
}


def status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500
