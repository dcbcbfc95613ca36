"""Log lines: the ``text`` or ``json`` format (``EVENTOPS_LOG_FORMAT``) and no secret in any line.

:class:`JsonFormatter` writes one JSON object per line: ``ts`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger``, ``msg`` (the formatted message), ``exc`` (the traceback
text, when there is one) and, for an access-log record of uvicorn, ``http``: the client, method,
path (query string redacted), protocol version and status.

:class:`RedactSecrets` is a filter for *handlers* (a logger's filter does not see the records
its children propagate): it rewrites the values of the query parameters :data:`SECRET_PARAMS`
(``?key=eo_…`` of an SSE URL: a browser ``EventSource`` cannot send headers) to ``REDACTED``
in the message and its arguments, before any formatter sees them, so both formats are clean.

>>> r = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
...                       ("1.2.3.4:5", "GET", "/alerts/stream?key=eo_x&b=1", "1.1", 200), None)
>>> RedactSecrets().filter(r), r.getMessage()
(True, '1.2.3.4:5 - "GET /alerts/stream?key=REDACTED&b=1 HTTP/1.1" 200')
>>> json.loads(JsonFormatter().format(r))["http"]["path"]
'/alerts/stream?key=REDACTED&b=1'
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

#: query parameters whose values never reach a log line
SECRET_PARAMS = ("key", "api_key", "token", "access_token")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SECRET_RE = re.compile(r"([?&](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters replaced.

    >>> redact("/s?tenant=a&api_key=xyz&token=1#f")
    '/s?tenant=a&api_key=REDACTED&token=REDACTED#f'
    >>> redact("/keys?monkey=1")
    '/keys?monkey=1'
    """
    if "=" not in text:
        return text
    return _SECRET_RE.sub(r"\1REDACTED", text)


class RedactSecrets(logging.Filter):
    """Redacts secret query parameters in a record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            out["http"] = {
                "client": client,
                "method": method,
                "path": path,
                "version": version,
                "status": status,
            }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased if it is one of :data:`FORMATS`; else :class:`ValueError`."""
    f = fmt.strip().lower()
    if f not in FORMATS:
        raise ValueError(f"EVENTOPS_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return f


def configure(level: int, fmt: str = "text", force: bool = False) -> None:
    """The root logger of a command: one stderr handler in ``fmt``, secrets redacted
    (``force``: replacing the handlers it has)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if check_format(fmt) == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=level, handlers=[handler], force=force)
