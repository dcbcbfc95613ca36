"""How the ``eventops`` command line reports failure: one line on stderr and an exit code.

:func:`describe` is the one place that turns an exception into that line; ``cli.main.main``
calls it for every command (the ``train``/``models``/``keys`` commands registered by other
packages included). No traceback is printed unless the log level is DEBUG
(``EVENTOPS_LOG_LEVEL=DEBUG`` or ``--log-level DEBUG``). Usage errors that typer/click detect
while parsing (unknown option, missing argument) keep click's own output and exit code 2.

=====  =========================================================================================
exit   meaning
=====  =========================================================================================
0      success
1      unexpected error (a bug): the line names the exception; DEBUG logging shows the traceback
2      bad usage or an invalid argument value (e.g. ``tenants create ""``, ``worker bogus``)
3      bad configuration: an invalid ``EVENTOPS_*`` setting, a port already in use, a database
       schema that needs ``eventops db migrate``, PostgreSQL refusing the login
4      not found: a file, a tenant, a Kafka topic, a model version
5      a service is unreachable or failed: Kafka, PostgreSQL, the MLflow store
6      done, but some events were or will be dead-lettered; the line counts them by reason
130    interrupted outside a command (Ctrl-C inside one is click's ``Aborted!``, exit 1; ``worker``
       and ``simulate`` treat it as their normal end)
=====  =========================================================================================
"""

from __future__ import annotations

import re
import sys

from core.errors import ConfigError, EventOpsError, NotFound, ServiceError

__all__ = [
    "EXIT_CONFIG", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK",
    "EXIT_REJECTED", "EXIT_SERVICE", "EXIT_USAGE", "BadArgument", "describe", "one_line",
    "pg_error", "pg_problem",
]  # fmt: skip

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_NOT_FOUND = 4
EXIT_SERVICE = 5
EXIT_REJECTED = 6
EXIT_INTERRUPTED = 130

DEBUG_HINT = "rerun with EVENTOPS_LOG_LEVEL=DEBUG for the traceback"
MAX_LINE = 400


class BadArgument(EventOpsError):
    """A command-line argument has an invalid value (exit 2); the message says what is allowed."""


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """``text`` folded to one line of at most ``limit`` characters.

    >>> one_line("a\\n  b\\tc")
    'a b c'
    >>> len(one_line("x" * 1000))
    400
    """
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _settings():
    """The settings the command ran with, or ``None`` when they are themselves invalid."""
    try:
        from core.settings import Settings

        return Settings()
    except Exception:  # noqa: BLE001 - only used to name host:port in a message
        return None


def pg_problem(
    err: BaseException,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    user: str | None = None,
) -> tuple[str, int]:
    """Message and exit code for a failed PostgreSQL connection (libpq's text classified).

    >>> pg_problem(Exception('connection to server at "h", port 1 failed: Connection refused'),
    ...            "h", 1)[1]
    5
    >>> pg_problem(Exception('FATAL:  database "x" does not exist'), "h", 1, "x")[0]
    'PostgreSQL at h:1 has no database "x" — run `make services-up` (it creates it) or set
    EVENTOPS_PG_DATABASE'
    """
    raw = str(err)
    named_db = re.search(r'database "([^"]*)" does not exist', raw)
    named_user = re.search(r'(?:for user|role) "([^"]*)"', raw)
    s = _settings() if not (host and port) else None
    host = host or (s.pg_host if s else "?")
    port = port or (s.pg_port if s else 0)
    user = (named_user.group(1) if named_user else None) or user or (s.pg_user if s else "?")
    database = (named_db.group(1) if named_db else None) or database
    where = f"PostgreSQL at {host}:{port}"
    text = raw.lower()
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return (
            f"{where} refused the login of user {user!r} — check EVENTOPS_PG_USER / "
            "EVENTOPS_PG_PASSWORD",
            EXIT_CONFIG,
        )
    if "database" in text and "does not exist" in text:
        db = f'"{database}"' if database else "named in the settings"
        return (
            f"{where} has no database {db} — run `make services-up` (it creates it) or set "
            "EVENTOPS_PG_DATABASE",
            EXIT_CONFIG,
        )
    return (
        f"{where} is not reachable — start it (`make services-up`) or point "
        "EVENTOPS_PG_HOST / EVENTOPS_PG_PORT at it",
        EXIT_SERVICE,
    )


def pg_error(
    err: BaseException,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    user: str | None = None,
    prefix: str = "",
) -> EventOpsError:
    """:func:`pg_problem` as an exception: :class:`ConfigError` or :class:`ServiceError`."""
    msg, code = pg_problem(err, host, port, database, user)
    return (ConfigError if code == EXIT_CONFIG else ServiceError)(prefix + msg)


def _pg(e: BaseException) -> tuple[str, int] | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(e, psycopg.Error):
        return None
    errors = psycopg.errors
    first = one_line(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if isinstance(e, errors.UndefinedTable | errors.UndefinedColumn):
        return (
            f"the database schema is missing or out of date ({first}) — run `eventops db migrate`",
            EXIT_CONFIG,
        )
    if isinstance(e, psycopg.IntegrityError | psycopg.DataError):
        return f"PostgreSQL rejected the value: {first}", EXIT_USAGE
    state = e.sqlstate or ""
    # no SQLSTATE: libpq could not connect; 08 connection, 28 login, 3D000 no such database,
    # 57P shutdown / cannot connect now
    if isinstance(e, psycopg.OperationalError) and (
        not state or state.startswith(("08", "28", "3D", "57P"))
    ):
        return pg_problem(e)
    return f"PostgreSQL error: {first}", EXIT_SERVICE


def _kafka(e: BaseException) -> tuple[str, int] | None:
    ck = sys.modules.get("confluent_kafka")
    if ck is None or not isinstance(e, ck.KafkaException):
        return None
    err = e.args[0] if e.args else None
    what = err.str() if isinstance(err, ck.KafkaError) else str(e)
    s = _settings()
    where = f"Kafka at {s.kafka_bootstrap}" if s else "Kafka"
    return (
        f"{where} failed: {one_line(what)} — check that it is up (`make services-up`) and "
        "EVENTOPS_KAFKA_BOOTSTRAP",
        EXIT_SERVICE,
    )


def _mlflow(e: BaseException) -> tuple[str, int] | None:
    mod = sys.modules.get("mlflow.exceptions")
    if mod is not None and isinstance(e, mod.MlflowException):
        code = getattr(e, "error_code", "")
        msg = one_line(getattr(e, "message", str(e)).splitlines()[0] if str(e) else code)
        if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return f"MLflow: {msg}", EXIT_NOT_FOUND
        if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"):
            return f"MLflow: {msg}", EXIT_USAGE
        return f"MLflow store failed: {msg}", EXIT_SERVICE
    sa = sys.modules.get("sqlalchemy.exc")
    if sa is not None and isinstance(e, sa.OperationalError):
        s = _settings()
        msg, code = pg_problem(e.orig or e, database=s.mlflow_database if s else None)
        return f"MLflow store: {msg}", code
    return None


def _settings_error(e: BaseException) -> tuple[str, int] | None:
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(e, pydantic.ValidationError):
        return None
    errs = e.errors()
    if not errs:
        return f"invalid settings: {one_line(e)}", EXIT_CONFIG
    first = errs[0]
    name = "_".join(str(x) for x in first.get("loc", ())).upper()
    var = name if name.startswith("MLFLOW_") else f"EVENTOPS_{name}"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return (
        f"invalid setting {var}={first.get('input')!r}: {one_line(first.get('msg', ''))}{more} "
        "— fix it in the environment or .env (see .env.example)",
        EXIT_CONFIG,
    )


def describe(e: BaseException) -> tuple[str, int]:
    """``(one line, exit code)`` for an exception that ended a command.

    >>> describe(NotFound("tenant 'x' does not exist"))
    ("tenant 'x' does not exist", 4)
    >>> describe(FileNotFoundError(2, "No such file or directory", "missing.jsonl"))[1]
    4
    >>> describe(ZeroDivisionError("division by zero"))[0].startswith(
    ...     "unexpected ZeroDivisionError"
    ... )
    True
    """
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    at = re.match(r"PostgreSQL at (\S+):(\d+) ", str(e))
    if type(e) is ServiceError and at and e.__cause__ is not None:
        # storage.connect.connect wraps psycopg's error: classify what libpq said, and name the fix
        cause = e.__cause__
        psycopg = sys.modules.get("psycopg")
        if psycopg is not None and isinstance(cause, psycopg.OperationalError):
            return pg_problem(cause, at.group(1), int(at.group(2)))
    if isinstance(e, EventOpsError):
        code = {
            BadArgument: EXIT_USAGE,
            ConfigError: EXIT_CONFIG,
            NotFound: EXIT_NOT_FOUND,
            ServiceError: EXIT_SERVICE,
        }
        for cls, c in code.items():
            if isinstance(e, cls):
                return one_line(e), c
        return one_line(e), EXIT_INTERNAL
    for probe in (_pg, _kafka, _mlflow, _settings_error):
        found = probe(e)
        if found is not None:
            return found
    if isinstance(e, FileNotFoundError):
        return f"file not found: {e.filename or e} — check the path", EXIT_NOT_FOUND
    if isinstance(e, OSError) and e.filename:
        return f"cannot use {e.filename}: {e.strerror or e}", EXIT_NOT_FOUND
    msg = one_line(str(e).splitlines()[0] if str(e) else "")
    return (
        f"unexpected {type(e).__name__}{': ' + msg if msg else ''} — {DEBUG_HINT}",
        EXIT_INTERNAL,
    )
