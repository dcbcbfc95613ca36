"""Bounded checks that a command's services answer, before it starts work.

Without them a command facing a stopped broker or database waits on librdkafka's or MLflow's
own retries (a ``send`` hung 62 s printing 298 lines of librdkafka log; ``models list`` retried
for over 90 s). Each check waits at most ``Settings.connect_timeout_s`` and raises
:class:`~core.errors.ServiceError` (or :class:`~core.errors.NotFound` for a missing
topic) whose message names the address and the fix; ``cli.errors`` prints it as one
line.

librdkafka writes its log lines straight to stderr unless the client is given a ``logger``:
:func:`kafka_quiet` is the configuration that sends them to the ``eventops.librdkafka`` logger
instead, which the CLI shows only at DEBUG level (the command reports failures itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from core.errors import NotFound, ServiceError
from core.settings import Settings

__all__ = [
    "KAFKA_LOGGER",
    "check_kafka",
    "check_postgres",
    "check_tracking",
    "kafka_quiet",
    "kafka_unreachable",
]

#: logger that receives librdkafka's log lines of the clients the CLI creates
KAFKA_LOGGER = "eventops.librdkafka"


def kafka_quiet() -> dict[str, object]:
    """Client configuration routing librdkafka's log lines to :data:`KAFKA_LOGGER`."""
    return {"logger": logging.getLogger(KAFKA_LOGGER)}


def kafka_unreachable(s: Settings) -> str:
    return (
        f"Kafka at {s.kafka_bootstrap} is not reachable — start it (`make services-up`) or "
        "set EVENTOPS_KAFKA_BOOTSTRAP"
    )


def check_kafka(s: Settings, topics: Iterable[str] = (), timeout: float | None = None) -> None:
    """A broker answers a metadata request within ``timeout`` (default: the setting) and every
    one of ``topics`` exists."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    t = s.connect_timeout_s if timeout is None else timeout
    if timeout is None and _all_refused(s.kafka_bootstrap, t):
        raise ServiceError(kafka_unreachable(s))  # at once, not after librdkafka's retries
    a = AdminClient(
        {
            **s.kafka_common(),
            **kafka_quiet(),
            "socket.connection.setup.timeout.ms": max(1000, int(t * 1000)),
        }
    )
    try:
        md = a.list_topics(timeout=t)
    except KafkaException as e:
        raise ServiceError(kafka_unreachable(s)) from e
    if not md.brokers:
        raise ServiceError(kafka_unreachable(s))
    missing = [
        name for name in topics if name not in md.topics or md.topics[name].error is not None
    ]
    if missing:
        raise NotFound(
            f"Kafka topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"not found on {s.kafka_bootstrap} — run `eventops topics create`"
        )


def _all_refused(bootstrap: str, timeout: float) -> bool:
    """True when every ``host:port`` of ``bootstrap`` refuses a TCP connection (a stopped broker):
    librdkafka would retry until the metadata timeout. Anything else (a timeout, a name that
    does not resolve, an address form not understood here) is left to librdkafka.

    >>> _all_refused("", 1.0)
    False
    """
    import socket

    addrs = []
    for part in bootstrap.split(","):
        host, sep, port = part.strip().rpartition("://")[2].rpartition(":")
        if not sep or not port.isdigit() or not host:
            return False
        addrs.append((host.strip("[]"), int(port)))
    if not addrs:
        return False
    for addr in addrs:
        try:
            socket.create_connection(addr, timeout=min(timeout, 2.0)).close()
            return False
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
    return True


def check_postgres(s: Settings, database: str | None = None) -> None:
    """PostgreSQL accepts a connection to ``database`` (default: the pipeline's) in time."""
    import psycopg

    from cli.errors import pg_error

    db = database or s.pg_database
    try:
        psycopg.connect(s.pg_dsn(db), connect_timeout=max(1, round(s.connect_timeout_s))).close()
    except psycopg.OperationalError as e:
        raise pg_error(e, s.pg_host, s.pg_port, db, s.pg_user) from e


def check_tracking(s: Settings, uri: str) -> None:
    """The MLflow tracking store at ``uri`` answers within the timeout.

    A ``postgresql…`` store: a plain connection with the URI's address and credentials (MLflow's
    SQL store itself retries a refused connection ten times with backoff, about 100 s, and has
    no setting for it). An ``http(s)://`` server: any HTTP answer from ``/health``. Other
    schemes (sqlite, file) are local and not checked.
    """
    t = s.connect_timeout_s
    if uri.startswith("postgresql"):
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(uri)
        try:
            psycopg.connect(
                host=u.host or "localhost",
                port=u.port or 5432,
                user=u.username,
                password=u.password,
                dbname=u.database,
                connect_timeout=max(1, round(t)),
            ).close()
        except psycopg.OperationalError as e:
            from cli.errors import pg_error

            raise pg_error(
                e, u.host, u.port or 5432, u.database, u.username, prefix="MLflow store: "
            ) from e
    elif uri.startswith(("http://", "https://")):
        import httpx

        try:
            httpx.get(uri.rstrip("/") + "/health", timeout=t)
        except httpx.HTTPError as e:
            raise ServiceError(
                f"MLflow tracking server {uri} is not reachable ({type(e).__name__}) — "
                "start it (`make mlflow`) or set MLFLOW_TRACKING_URI"
            ) from e
