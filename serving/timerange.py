"""Time-range query parameters shared by the series, metrics, alerts and incident routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query

from serving.errors import BadRequest

StartQ = Annotated[datetime | None, Query(description="Inclusive start (ISO 8601 or epoch seconds); default: end minus the default span.")]
EndQ = Annotated[datetime | None, Query(description="Exclusive end (ISO 8601 or epoch seconds); default: now.")]

_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_MAX = datetime(9999, 1, 1, tzinfo=UTC)


def utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def time_range(start: datetime | None, end: datetime | None,
               default_span: timedelta = timedelta(hours=1)) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC; naive datetimes are UTC; raises :class:`BadRequest` if empty."""
    try:
        end = utc(end) if end is not None else datetime.now(UTC)
        start = utc(start) if start is not None else max(_MIN, end - default_span)
    except (OverflowError, ValueError) as e:
        raise BadRequest(f"time out of range: {e}") from None
    if not (_MIN <= start < _MAX and _MIN < end <= _MAX):
        raise BadRequest("times must lie between 1970 and 9999")
    if end <= start:
        raise BadRequest("end must be after start")
    return start, end
