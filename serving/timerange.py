"""Time query parameters shared by the series, metrics, alerts and incident routes.

Every time parameter is an :data:`Instant`: exactly what the OpenAPI's ``format: date-time``
says, an RFC 3339 date-time with an offset (``2026-12-01T12:00:00Z``, ``…+02:00``); anything
else (epoch numbers, dates, times without an offset, which would leave the zone to a guess)
is a 422 that says so. It is converted to UTC while it is validated.

Every date-time RFC 3339 allows is accepted, also where the UTC instant falls outside Python's
years 1–9999 (``9999-12-31T23:59:59-23:59`` is 10000-01-01T23:58:59Z; RFC 3339 also has a year
0000): such an instant is held at :data:`MIN_UTC` / :data:`MAX_UTC`. That changes no answer —
every parameter is the bound of a half-open range and no stored event lies outside those
years (normalize keeps event times near now), so the range selects the same rows — and it
keeps every request the OpenAPI describes a 2xx. A range whose end is not after its start is
empty: the routes answer an empty result, not an error (an OpenAPI cannot state "end after
start", and the empty set is the exact answer).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BeforeValidator, TypeAdapter

MIN_UTC = datetime.min.replace(tzinfo=UTC)
MAX_UTC = datetime.max.replace(tzinfo=UTC)
#: RFC 3339 ``date-time`` (section 5.6); the calendar itself is pydantic's to check
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


_DATETIME = TypeAdapter(datetime)


def utc(dt: datetime) -> datetime:
    """``dt`` in UTC (naive = UTC), held at :data:`MIN_UTC`/:data:`MAX_UTC` beyond them."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # only at the calendar's ends: the offset says which one
        return MAX_UTC if dt.utcoffset() < timedelta(0) else MIN_UTC


def _rfc3339(v: Any) -> Any:
    if v is None or isinstance(v, datetime):
        return v
    if not isinstance(v, str) or _RFC3339.fullmatch(v) is None:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-12-01T12:00:00Z")
    if v.startswith("0000"):
        # RFC 3339 has a year 0, Python's calendar starts at 1: check the date in a leap year
        # like year 0, then hold the instant (at most a day into year 1) at the start
        _DATETIME.validate_python("0004" + v[4:])
        return MIN_UTC
    return v


def _utc_or_none(dt: datetime | None) -> datetime | None:
    return None if dt is None else utc(dt)


_DOC = " RFC 3339 date-time with an offset (Z or ±hh:mm)."

#: an optional time parameter, validated into an aware UTC datetime
Instant = Annotated[datetime | None, BeforeValidator(_rfc3339), AfterValidator(_utc_or_none)]

StartQ = Annotated[
    Instant, Query(description="Inclusive start; default: end minus the default span." + _DOC)
]
EndQ = Annotated[
    Instant,
    Query(description="Exclusive end; default: now. Not after start: an empty result." + _DOC),
]


def time_range(
    start: datetime | None, end: datetime | None, default_span: timedelta = timedelta(hours=1)
) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC (possibly empty: ``end <= start``); defaults from
    ``default_span``."""
    end = utc(end) if end is not None else datetime.now(UTC)
    if start is None:
        start = end - default_span if end - MIN_UTC > default_span else MIN_UTC
    return utc(start), end
