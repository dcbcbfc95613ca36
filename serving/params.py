"""Text parameter types shared by the routes: only text PostgreSQL can store reaches SQL.

PostgreSQL ``text`` cannot hold NUL (U+0000) and JSONB rejects ``\\u0000``; JSON bodies may
carry lone surrogates (``"\\ud800"``), which no UTF-8 encoder takes. Every text parameter and
body field of the API is one of the types below, so such input is a 422 naming the field
before any SQL runs, and the OpenAPI says so:

- the ``pattern`` :data:`NO_NUL` refuses NUL (and is what the schema shows);
- pydantic refuses a lone surrogate in any constrained string (``string_unicode``).

Query and path text arrives percent-decoded with invalid UTF-8 replaced (U+FFFD), so there
only NUL can occur; bodies can carry both.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import Field

#: no NUL anywhere (pydantic's regex engine: ``$`` is the end of the text)
NO_NUL = r"^[^\x00]*$"
NAME_MAX = 255

_TEXT_DOC = " No NUL characters."

#: a host, metric, source or alert id in a path
NamePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=NAME_MAX,
        pattern=NO_NUL,
        description="1-255 characters." + _TEXT_DOC,
    ),
]
#: a required host/metric query parameter
NameQ = Annotated[
    str,
    Query(
        min_length=1,
        max_length=NAME_MAX,
        pattern=NO_NUL,
        description="1-255 characters." + _TEXT_DOC,
    ),
]
#: an optional host/metric filter
OptNameQ = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=NAME_MAX,
        pattern=NO_NUL,
        description="Exact match; 1-255 characters." + _TEXT_DOC,
    ),
]


def text_field(max_length: int, description: str = "", **kw: Any) -> Any:
    """A body string of at most ``max_length`` characters, no NUL, no lone surrogate."""
    return Field(
        max_length=max_length, pattern=NO_NUL, description=(description + _TEXT_DOC).strip(), **kw
    )
