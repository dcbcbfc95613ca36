"""PostgreSQL for the pipeline: migrations, inventory/tenants snapshots and the sink's writes.

This is the only pipeline module that writes to PostgreSQL. Every statement is parameterized.
Metric rows are COPYed straight into ``metrics``; when that hits an already-stored event id, the
batch goes through a temporary staging table and ``INSERT … ON CONFLICT DO NOTHING`` instead, so
a replayed batch writes nothing twice. ``metrics``, ``features``, ``scores`` and
``shadow_scores`` are time-partitioned (:class:`Partitions`, :func:`maintain`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import numpy as np
import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from core.batch import DeadLetter, MetricBatch
from core.errors import ServiceError
from core.records import AlertEvent, OpenAlert
from core.settings import Settings
from features.cross import CROSS_FEATURES

log = logging.getLogger(__name__)


def connect(settings: Settings, database: str | None = None, autocommit: bool = False) -> psycopg.Connection:
    try:
        return psycopg.connect(settings.pg_dsn(database), autocommit=autocommit,
                               connect_timeout=max(1, round(settings.connect_timeout_s)))
    except psycopg.OperationalError as e:
        raise ServiceError(
            f"PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable "
            "(run `make services-up`)"
        ) from e


# --- migrations -----------------------------------------------------------------------------

def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration shipped with the package, in order."""
    files = sorted(
        (p for p in resources.files("storage.migrations").iterdir() if p.name.endswith(".sql")),
        key=lambda p: p.name,
    )
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def migrate(conn: psycopg.Connection, upto: str | None = None) -> list[str]:
    """Apply the migrations not yet applied; returns their versions. Safe to run concurrently.

    ``upto`` stops after that version (tests of a migration start from the schema before it).
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(727274)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if upto is not None and version > upto:
                break
            if version in done:
                continue
            conn.execute(text)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


# --- reference data ---------------------------------------------------------------------------

def load_inventory(conn: psycopg.Connection) -> dict[tuple[str, str], dict]:
    rows = conn.execute("SELECT tenant_id, source_id, tags FROM inventory").fetchall()
    conn.commit()
    return {(t, s): tags for t, s, tags in rows}


def set_inventory(conn: psycopg.Connection, tenant: str, source: str, tags: dict, replace: bool = False) -> dict:
    """Upsert one inventory entry; merges into existing tags unless ``replace``."""
    merge = "EXCLUDED.tags" if replace else "inventory.tags || EXCLUDED.tags"
    row = conn.execute(
        "INSERT INTO inventory (tenant_id, source_id, tags) VALUES (%s, %s, %s) "
        f"ON CONFLICT (tenant_id, source_id) DO UPDATE SET tags = {merge}, updated_at = now() "
        "RETURNING tags",
        (tenant, source, Jsonb(tags)),
    ).fetchone()
    conn.commit()
    return row[0]


def delete_inventory(conn: psycopg.Connection, tenant: str, source: str) -> bool:
    n = conn.execute(
        "DELETE FROM inventory WHERE tenant_id = %s AND source_id = %s", (tenant, source)
    ).rowcount
    conn.commit()
    return n > 0


def load_tenants(conn: psycopg.Connection) -> frozenset[str]:
    rows = conn.execute("SELECT tenant_id FROM tenants").fetchall()
    conn.commit()
    return frozenset(r[0] for r in rows)


def create_tenant(conn: psycopg.Connection, tenant: str, name: str = "") -> bool:
    n = conn.execute(
        "INSERT INTO tenants (tenant_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (tenant, name),
    ).rowcount
    conn.commit()
    return n > 0


def load_open_alerts(conn: psycopg.Connection) -> list[OpenAlert]:
    rows = conn.execute(
        "SELECT alert_id, tenant_id, host, metric, severity, "
        " extract(epoch FROM opened_at)::float8, extract(epoch FROM updated_at)::float8, rule "
        "FROM alerts WHERE state = 'open'"
    ).fetchall()
    conn.commit()
    return [
        OpenAlert(alert_id=a, tenant_id=t, host=h, metric=m, severity=s, opened_at=o, last_ts=u, rule=r)
        for a, t, h, m, s, o, u, r in rows
    ]


# --- time partitions and retention -----------------------------------------------------------
#
# `metrics` (by ts_event), `features`, `scores` and `shadow_scores` (by window_start) are range-
# partitioned (migration 008). Buckets are UTC-aligned spans of ``interval_s`` (one day by
# default); bucket ``b`` covers [b * interval_s, (b + 1) * interval_s). A partition is created for
# a bucket ahead of time by the maintenance job and, failing that, by the sink before it writes
# the first row of the bucket. Where a partition already covers part of a bucket (the interval
# was changed), only the uncovered pieces get one, so partitions never overlap.
#
# Locks: a partition is created as a plain table (plus the leaf unique index of `metrics`) and
# then ATTACHed, which takes SHARE UPDATE EXCLUSIVE on the parent (inserts and reads go on) and
# ACCESS EXCLUSIVE on the DEFAULT partition only. `CREATE TABLE … PARTITION OF` would take ACCESS
# EXCLUSIVE on the parent. Detaching one needs ACCESS EXCLUSIVE on the parent for a moment:
# `DETACH … CONCURRENTLY` is refused while a DEFAULT partition exists (PostgreSQL 14-16), so the
# maintenance job DETACHes in a short transaction with a bounded lock wait (``lock_timeout_ms``,
# retried), then DROPs the detached table in a transaction of its own; ingest waits at most
# the lock timeout (benchmarks/bench_growth.py measures it). Partition DDL of one table is
# serialized across processes by an advisory lock.

_DDL_LOCK = 727275  # pg_advisory_xact_lock(_DDL_LOCK, hashtext(table)): partition DDL of a table
_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


@dataclass(frozen=True, slots=True)
class PartitionedTable:
    """A range-partitioned table: its partition key and the unique index each leaf carries."""

    name: str
    key: str
    #: columns of a unique index created on every leaf partition (and on DEFAULT); a unique key
    #: without the partition key can only exist per leaf
    leaf_unique: tuple[str, ...] = ()

    @property
    def default(self) -> str:
        return f"{self.name}_default"


PARTITIONED: dict[str, PartitionedTable] = {t.name: t for t in (
    PartitionedTable("metrics", "ts_event", ("tenant_id", "event_id")),
    PartitionedTable("features", "window_start"),
    PartitionedTable("scores", "window_start"),
    PartitionedTable("shadow_scores", "window_start"),
)}


@dataclass(frozen=True)
class PartitionPolicy:
    """Partition length, how far ahead partitions exist, retention per table (0 = keep)."""

    interval_s: int = 86400
    ahead_days: int = 2
    retention_days: dict[str, int] = field(default_factory=dict)
    lock_timeout_ms: int = 1000

    @classmethod
    def from_settings(cls, s: Settings) -> PartitionPolicy:
        return cls(interval_s=s.partition_interval_hours * 3600, ahead_days=s.partition_ahead_days,
                   retention_days=s.retention_days(), lock_timeout_ms=s.partition_lock_timeout_ms)


@dataclass(frozen=True, slots=True)
class Partition:
    """One range partition: [lo, hi) in epoch seconds."""

    name: str
    lo: float
    hi: float


def _bound(text: str) -> float:
    if text == "MINVALUE":
        return -math.inf
    if text == "MAXVALUE":
        return math.inf
    return datetime.fromisoformat(text.strip("'")).timestamp()


def partitions_of(conn: psycopg.Connection, table: str) -> tuple[list[Partition], str | None]:
    """Range partitions of ``table`` (sorted by lower bound) and the name of its DEFAULT partition."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        (table,),
    ).fetchall()
    parts, default = [], None
    for name, bound in rows:
        if bound == "DEFAULT":
            default = name
            continue
        m = _BOUND.fullmatch(bound)
        if m is None:
            raise ValueError(f"partition {name} of {table} has an unexpected bound: {bound}")
        parts.append(Partition(name, _bound(m[1]), _bound(m[2])))
    return sorted(parts, key=lambda p: p.lo), default


def uncovered(lo: float, hi: float, parts: list[Partition]) -> list[tuple[float, float]]:
    """The pieces of [lo, hi) that no partition of ``parts`` (sorted by ``lo``) covers.

    >>> uncovered(0, 10, [Partition("a", 2, 4), Partition("b", 6, 12)])
    [(0, 2), (4, 6)]
    >>> uncovered(0, 10, [Partition("a", -5, 20)])
    []
    """
    out, cur = [], lo
    for p in parts:
        if p.hi <= cur or p.lo >= hi:
            continue
        if p.lo > cur:
            out.append((cur, p.lo))
        cur = max(cur, p.hi)
        if cur >= hi:
            break
    if cur < hi:
        out.append((cur, hi))
    return out


def partition_name(table: str, lo: float) -> str:
    """``<table>_pYYYYMMDD`` for a partition starting at UTC midnight, else ``…_pYYYYMMDD_HHMM``.

    >>> partition_name("metrics", 1764547200), partition_name("scores", 1764547200 + 6 * 3600)
    ('metrics_p20251201', 'scores_p20251201_0600')
    """
    d = datetime.fromtimestamp(lo, UTC)
    return f"{table}_p{d:%Y%m%d}" + ("" if lo % 86400 == 0 else f"_{d:%H%M}")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _lock_timeout(conn: psycopg.Connection, ms: int | str) -> str:
    """Set the transaction's lock_timeout; returns the previous value (to restore it)."""
    value = f"{ms}ms" if isinstance(ms, int) else ms
    return conn.execute(
        "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)", (value,)
    ).fetchone()[0]


def _create_partition(conn: psycopg.Connection, t: PartitionedTable, lo: float, hi: float,
                      default: str | None) -> tuple[str, int]:
    """Create and attach the partition [lo, hi) of ``t``, moving its rows out of DEFAULT.

    Returns (name, rows moved). The caller holds the table's DDL advisory lock.
    """
    name = partition_name(t.name, lo)
    part, parent = sql.Identifier(name), sql.Identifier(t.name)
    conn.execute(sql.SQL(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"
    ).format(part, parent))
    if t.leaf_unique:
        suffix = "_".join(c.removesuffix("_id") for c in t.leaf_unique)
        conn.execute(sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
            sql.Identifier(f"{name}_{suffix}"), part, sql.SQL(", ").join(map(sql.Identifier, t.leaf_unique))))
    a, b = sql.Literal(_utc(lo)), sql.Literal(_utc(hi))
    moved = 0
    if default is not None:
        moved = conn.execute(sql.SQL(
            "WITH moved AS (DELETE FROM {d} WHERE {k} >= {a} AND {k} < {b} RETURNING *)"
            " INSERT INTO {p} SELECT * FROM moved"
        ).format(d=sql.Identifier(default), k=sql.Identifier(t.key), a=a, b=b, p=part)).rowcount
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        parent, part, a, b))
    if moved:
        log.info("%s: %d rows moved from %s into %s", t.name, moved, default, name)
    return name, moved


class Partitions:
    """The buckets of each partitioned table known to have a partition, and their creation.

    One per connection that writes (the sink) or maintains. :meth:`ensure` is the hot-path
    check: the bucket range of a column against an in-memory set, so a batch whose buckets are
    known costs a min/max. For an unknown bucket the catalog is read and the missing partition
    created, in a short transaction of its own when the connection is idle (a savepoint of the
    caller's transaction otherwise). A bucket whose partition could not be created (lock wait
    past ``lock_timeout_ms``, …) is retried after ``RETRY_S``; meanwhile its rows go to the
    DEFAULT partition, which the maintenance job empties.
    """

    RETRY_S = 30.0

    def __init__(self, policy: PartitionPolicy | None = None) -> None:
        self.policy = policy or PartitionPolicy()
        self._known: dict[str, set[int]] = {t: set() for t in PARTITIONED}
        self._retry_at: dict[tuple[str, int], float] = {}

    def buckets(self, ts: np.ndarray) -> list[int]:
        """The buckets of epoch-second times ``ts`` (float64), sorted."""
        if not len(ts):
            return []
        step = self.policy.interval_s
        lo, hi = int(ts.min() // step), int(ts.max() // step)
        if hi - lo <= 1:  # min and max each lie in their bucket: no other bucket to look for
            return list(range(lo, hi + 1))
        return np.unique(ts // step).astype(np.int64).tolist()

    def ensure(self, conn: psycopg.Connection, table: str, ts: np.ndarray) -> list[str]:
        """Make sure every bucket of ``ts`` has a partition of ``table``; returns those created."""
        known = self._known[table]
        todo = [b for b in self.buckets(ts) if b not in known]
        if not todo:
            return []
        now = time.monotonic()
        todo = [b for b in todo if self._retry_at.get((table, b), 0.0) <= now]
        if not todo:
            return []
        try:
            return [n for n, _ in self.create(conn, table, todo)]
        except psycopg.Error as e:
            if conn.broken:
                raise
            for b in todo:
                self._retry_at[(table, b)] = now + self.RETRY_S
            log.warning("%s: no partition for %d bucket(s) yet (%s: %s); their rows go to %s",
                        table, len(todo), type(e).__name__, str(e).strip()[:200],
                        PARTITIONED[table].default)
            return []

    def create(self, conn: psycopg.Connection, table: str, buckets: Iterable[int]) -> list[tuple[str, int]]:
        """Create the missing partitions of ``buckets``; returns (name, rows moved from DEFAULT)."""
        t, step = PARTITIONED[table], self.policy.interval_s
        buckets = sorted(set(buckets))
        created: list[tuple[str, int]] = []
        with conn.transaction():
            previous = _lock_timeout(conn, self.policy.lock_timeout_ms)
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_DDL_LOCK, table))
            parts, default = partitions_of(conn, table)
            for b in buckets:
                for lo, hi in uncovered(b * step, (b + 1) * step, parts):
                    created.append(_create_partition(conn, t, lo, hi, default))
            _lock_timeout(conn, previous)
        self._known[table].update(buckets)
        for b in buckets:
            self._retry_at.pop((table, b), None)
        if created:
            log.info("%s: created partitions %s", table, ", ".join(n for n, _ in created))
        return created


@dataclass
class MaintenanceReport:
    """What one :func:`maintain` pass did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    #: rows moved out of DEFAULT partitions into partitions of their own
    moved: int = 0
    #: rows of DEFAULT partitions past retention, deleted
    expired: int = 0
    #: steps that could not get their lock in time (retried at the next pass)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: seconds each drop took (DETACH + DROP transaction, lock waits and retries included)
    drop_seconds: list[float] = field(default_factory=list)
    #: per drop: tries it took, and seconds spent in DETACH (waiting for the parent's lock)
    drop_attempts: list[int] = field(default_factory=list)
    drop_wait_seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"created {len(self.created)} partition(s)", f"dropped {len(self.dropped)}"
                 + (f" ({', '.join(self.dropped)})" if self.dropped else ""),
                 f"{self.moved} row(s) moved out of DEFAULT", f"{self.expired} expired row(s) deleted"]
        if self.skipped:
            parts.append(f"retry next time: {', '.join(self.skipped)}")
        return "; ".join(parts) + f" ({self.seconds:.2f} s)"


#: comment on a partition detached for retention and not yet dropped (a crash in between)
_DETACHED = "eventops: detached by retention, to be dropped"


def _drop_detached(conn: psycopg.Connection) -> list[str]:
    """Drop the tables a retention pass detached but did not get to drop."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_description d ON d.objoid = c.oid"
        " AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0"
        " WHERE d.description = %s AND c.relkind = 'r' AND NOT c.relispartition", (_DETACHED,),
    ).fetchall()
    conn.commit()
    for (name,) in rows:
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return [r[0] for r in rows]


def _drop_partition(conn: psycopg.Connection, t: PartitionedTable, name: str, lock_timeout_ms: int,
                    attempts: int = 4) -> tuple[int, float]:
    """DETACH one partition (and mark it), then DROP it in a transaction of its own.

    Only the DETACH needs ACCESS EXCLUSIVE on the parent; waiting for it queues the writers
    behind this transaction, so the wait is kept short (the lock timeout) and retried after a
    pause rather than made long, and the parent's lock is released before the DROP removes the
    files. A crash between the two leaves a marked table that the next pass drops. Returns
    (tries it took, 0 if it did not succeed; seconds spent in DETACH, lock waits included).
    """
    waited = 0.0
    ident = sql.Identifier(name)
    for i in range(attempts):
        try:
            with conn.transaction():
                _lock_timeout(conn, lock_timeout_ms)
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_DDL_LOCK, t.name))
                t0 = time.monotonic()
                try:
                    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                        sql.Identifier(t.name), ident))
                finally:
                    waited += time.monotonic() - t0
                conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, sql.Literal(_DETACHED)))
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(ident))
            log.info("%s: partition %s dropped (retention)", t.name, name)
            return i + 1, waited
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as e:
            log.info("%s: dropping %s waited past the lock timeout (try %d/%d): %s",
                     t.name, name, i + 1, attempts, str(e).strip())
            time.sleep(0.25 * 2**i)
    return 0, waited


def maintain(conn: psycopg.Connection, policy: PartitionPolicy, now: float | None = None) -> MaintenanceReport:
    """One maintenance pass over the partitioned tables (idempotent; safe beside running writers).

    Per table: (1) create the partitions of the current bucket through ``ahead_days`` ahead;
    (2) empty the DEFAULT partition: rows of buckets entirely past retention are deleted, the
    others moved into partitions created for them; (3) drop the partitions that lie entirely
    before ``now - retention`` (DETACH with a bounded lock wait, retried, then DROP; a partition
    whose lock cannot be had is left for the next pass).
    """
    t0 = time.monotonic()
    now = time.time() if now is None else now
    rep = MaintenanceReport()
    parts_mgr = Partitions(policy)
    step = policy.interval_s
    rep.dropped += _drop_detached(conn)
    for t in PARTITIONED.values():
        ahead = range(int(now // step), int((now + policy.ahead_days * 86400) // step) + 1)
        days = policy.retention_days.get(t.name, 0)
        cutoff = now - days * 86400 if days > 0 else -math.inf
        try:
            rep.created += [n for n, _ in parts_mgr.create(conn, t.name, ahead)]
            default = sql.Identifier(t.default)
            key = sql.Identifier(t.key)
            if days > 0:
                first_kept = math.floor(cutoff / step) * step  # start of the oldest bucket kept
                with conn.transaction():
                    rep.expired += conn.execute(sql.SQL("DELETE FROM {} WHERE {} < {}").format(
                        default, key, sql.Literal(_utc(first_kept)))).rowcount
            rows = conn.execute(sql.SQL(
                "SELECT DISTINCT floor(extract(epoch FROM {}) / %s)::bigint FROM {}"
            ).format(key, default), (step,)).fetchall()
            conn.commit()
            if rows:
                made = parts_mgr.create(conn, t.name, [r[0] for r in rows])
                rep.created += [n for n, _ in made]
                rep.moved += sum(m for _, m in made)
        except psycopg.Error as e:  # lock wait past the timeout, or a partition DDL refused
            if conn.broken:
                raise
            conn.rollback()
            log.warning("%s: partition maintenance left for the next pass: %s", t.name, str(e).strip())
            rep.skipped.append(f"{t.name} partitions ({type(e).__name__})")
        if days > 0:
            parts, _ = partitions_of(conn, t.name)
            conn.commit()
            for p in parts:
                if p.hi <= cutoff:
                    t1 = time.monotonic()
                    tries, waited = _drop_partition(conn, t, p.name, policy.lock_timeout_ms)
                    if tries:
                        rep.dropped.append(p.name)
                        rep.drop_seconds.append(time.monotonic() - t1)
                        rep.drop_attempts.append(tries)
                        rep.drop_wait_seconds.append(waited)
                    else:
                        rep.skipped.append(f"drop {p.name}")
    rep.seconds = time.monotonic() - t0
    return rep


class Maintainer:
    """Runs :func:`maintain` in a daemon thread: at start, then every ``maintenance_interval_s``.

    Started by the processes that write (a Kafka worker whose chain includes ``sink``, the demo),
    so partitions exist ahead and retention runs without a cron job. Each pass opens its own
    connection; a failed pass (PostgreSQL down, …) is logged and the next one tries again.
    """

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.policy = PartitionPolicy.from_settings(s)
        self.last: MaintenanceReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Maintainer:
        if self.s.maintenance_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="db-maintenance", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> MaintenanceReport:
        with connect(self.s) as conn:
            self.last = maintain(conn, self.policy)
        if self.last.created or self.last.dropped or self.last.moved or self.last.expired or self.last.skipped:
            log.info("storage maintenance: %s", self.last.summary())
        return self.last

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as e:  # noqa: BLE001 - a maintenance failure must not stop the writer
                log.warning("storage maintenance failed (next try in %.0f s): %s",
                            self.s.maintenance_interval_s, e)
            self._stop.wait(self.s.maintenance_interval_s)


# --- sink -----------------------------------------------------------------------------------

_STAGE_METRICS = """
CREATE TEMP TABLE IF NOT EXISTS metrics_stage (
    idx int4, event_id text, tenant_id text, host text, metric text,
    value float8, ts text, unit text, tags text
) ON COMMIT DELETE ROWS
"""
_STAGE_WINDOWS = """
CREATE TEMP TABLE IF NOT EXISTS windows_stage (
    tenant_id text, host text, metric text, ws float8, we float8, count int4,
    mean float8, std float8, min float8, max float8, last float8, slope float8, change float8,
    gap float8, score float8, severity text, components text, actual float8, expected float8,
    explanation text, model_version text, host_metrics float8, host_deviating float8,
    host_max_z float8, host_mean_z float8
) ON COMMIT DELETE ROWS
"""
_COPY_TYPES = ["int4", "text", "text", "text", "text", "float8", "text", "text", "text"]


_UNSAFE = re.compile(r"[\\\t\n\r]")


_FEATURE_COLS = ("count", "mean", "std", "min", "max", "last", "slope", "change", "gap")
#: nullable columns of ``features`` (migration 007); windows without them store NULL
_CROSS_COLS = CROSS_FEATURES


def _optional_column(w, k: str) -> list[float | None]:
    """Column ``k`` of window rows ``w`` as floats, ``None`` for NaN or a missing column."""
    col = w.features.get(k)
    if col is None:
        return [None] * len(w)
    return [None if x != x else x for x in np.asarray(col, np.float64).tolist()]


_NULL = "\\N"


def _num(x: float | int | None) -> str:
    """A number in COPY text format (NULL for None/NaN)."""
    if x is None or x != x:
        return _NULL
    return repr(x)


def _iso_us(ts: np.ndarray) -> list[str]:
    """Epoch seconds (float64) as ISO-8601 UTC text truncated to microseconds.

    Both metric write paths store exactly these instants, so a replay compares equal.
    """
    return [d + "Z" for d in np.datetime_as_string((ts * 1e6).astype("datetime64[us]"), unit="us").tolist()]


def _copy_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Detect state of one input partition and the offset it is valid up to (exclusive)."""

    group: str
    topic: str
    partition: int
    next_offset: int
    state: bytes


def save_checkpoints(conn: psycopg.Connection, cps: Iterable[Checkpoint]) -> None:
    for c in cps:
        conn.execute(
            "INSERT INTO checkpoints (consumer_group, topic, partition, next_offset, state, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (consumer_group, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, state = EXCLUDED.state,"
            " updated_at = now()",
            (c.group, c.topic, c.partition, c.next_offset, c.state),
        )


def load_checkpoints(conn: psycopg.Connection, group: str, topic: str) -> dict[int, tuple[int, bytes]]:
    """partition -> (next offset, state) of a consumer group's checkpoints on a topic."""
    rows = conn.execute(
        "SELECT partition, next_offset, state FROM checkpoints WHERE consumer_group = %s AND topic = %s",
        (group, topic),
    ).fetchall()
    conn.commit()
    return {p: (o, bytes(st) if st is not None else None) for p, o, st in rows}


#: errors that a row's values cause (not an outage): a refused row is isolated and dead-lettered
_ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError,
               psycopg.errors.ProgramLimitExceeded)


class Sink:
    """Writes batches in one transaction per call: metrics, alerts, alert events (outbox).

    Event ids are unique per tenant (within a partition of ``metrics``, see migration 008). A
    row whose tenant already stored the *same* event under its id (a replay: same host, metric,
    value and ts_event) is dropped; one whose tenant stored a *different* event under that id
    is not stored either, and its index in the batch is left in :attr:`collided` for the runner
    to dead-letter with reason ``duplicate_event_id``.
    """

    def __init__(self, conn: psycopg.Connection, partitions: Partitions | None = None) -> None:
        self.conn = conn
        self.partitions = partitions or Partitions()
        #: indices into the last written batch of rows refused as ``duplicate_event_id`` (int64)
        self.collided = np.empty(0, np.int64)
        #: indices into the last written batch of rows PostgreSQL itself refused (``store_refused``)
        self.refused = np.empty(0, np.int64)
        conn.execute(_STAGE_METRICS)
        conn.execute(_STAGE_WINDOWS)
        conn.commit()

    def ensure_partitions(self, batch: MetricBatch, windows=None) -> None:
        """Partitions for the time range of a batch's metrics and windows (no-op when known).

        :meth:`write` calls it too; a runner that wraps the write in a transaction of its own
        calls it before, so that partition DDL commits in a short transaction of its own.
        """
        p, conn = self.partitions, self.conn
        p.ensure(conn, "metrics", batch.ts)
        if windows is not None and len(windows):
            p.ensure(conn, "features", windows.start)
            p.ensure(conn, "scores", windows.start)
            shadow = windows.shadow_idx()
            if shadow.size:
                p.ensure(conn, "shadow_scores", windows.start[shadow])

    def write(
        self, batch: MetricBatch, alert_events: Iterable[AlertEvent] = (), windows=None,
        checkpoints: Iterable[Checkpoint] = (),
    ) -> tuple[int, list[AlertEvent]]:
        """Store a batch; returns (new metric rows, alert events newly stored with their ``seq``).

        Runs in one transaction: metrics, window features and scores, the challenger's shadow
        scores, alert transitions and the detect state checkpoints (with their offsets) are
        stored together or not at all.
        """
        alert_events, checkpoints = list(alert_events), list(checkpoints)
        self.collided = np.empty(0, np.int64)
        self.refused = np.empty(0, np.int64)
        self.ensure_partitions(batch, windows)
        try:
            return self._write_either(batch, alert_events, windows, checkpoints)
        except _ROW_ERRORS as e:
            # normalize makes every row storable; should one still be refused, it costs that
            # row (dead-lettered by the runner), not the batch and not the worker
            bad = self._refused_rows(batch) if len(batch) else np.empty(0, np.int64)
            if not bad.size:
                raise  # not a metric row: the windows or alerts of the batch
            log.error("PostgreSQL refused %d of %d metric rows (%s); storing the others",
                      bad.size, len(batch), str(e).strip().splitlines()[0][:200])
            keep = np.ones(len(batch), bool)
            keep[bad] = False
            out = self._write_either(batch.take(keep), alert_events, windows, checkpoints)
            self.collided = np.flatnonzero(keep)[self.collided]
            self.refused = bad
            return out

    def _write_either(self, batch, alert_events, windows, checkpoints) -> tuple[int, list[AlertEvent]]:
        try:
            # fast path: plain COPY into metrics; a replayed event violates the unique key ...
            return self._write(batch, alert_events, windows, checkpoints, fresh=True)
        except psycopg.errors.UniqueViolation:
            # ... and the whole batch is written again, skipping rows already stored
            log.info("replayed events in a batch of %d: writing with ON CONFLICT", len(batch))
            return self._write(batch, alert_events, windows, checkpoints, fresh=False)

    def _refused_rows(self, b: MetricBatch) -> np.ndarray:
        """Indices of the rows of ``b`` PostgreSQL refuses, found by bisection in a transaction
        that is rolled back (``k`` bad rows cost ``O(k log n)`` staging writes)."""
        bad: list[int] = []

        def probe(idx: np.ndarray) -> None:
            try:
                with self.conn.transaction():  # a savepoint per probe
                    self._write_metrics(b.take(idx))
            except _ROW_ERRORS:
                if idx.size == 1:
                    bad.append(int(idx[0]))
                    return
                h = idx.size // 2
                probe(idx[:h])
                probe(idx[h:])

        with self.conn.transaction(force_rollback=True):
            probe(np.arange(len(b)))
        self.collided = np.empty(0, np.int64)
        return np.asarray(sorted(bad), dtype=np.int64)

    def _write(self, batch, alert_events, windows, checkpoints, fresh: bool) -> tuple[int, list[AlertEvent]]:
        with self.conn.transaction():
            if not len(batch):
                inserted = 0
            elif fresh:
                inserted = self._copy_metrics(batch)
            else:
                inserted = self._write_metrics(batch)
            if windows is not None and len(windows):
                if fresh:
                    self._copy_windows(windows)
                else:
                    self._write_windows(windows)
                shadow = windows.shadow_idx()
                if shadow.size:
                    self._write_shadow(windows, shadow, fresh)
            stored = self._write_alerts(alert_events) if alert_events else []
            save_checkpoints(self.conn, checkpoints)
        return inserted, stored

    def _copy_metrics(self, b: MetricBatch) -> int:
        """COPY (text) straight into ``metrics``; fails on the first already-stored event id."""
        ts = _iso_us(b.ts)
        dumps = orjson.dumps
        tags = ["{}" if not g else dumps(g).decode() for g in b.tags]
        eid, unit = b.event_id.tolist(), b.unit.tolist()
        # escaping is needed only for agent-given ids/units with tabs, newlines or backslashes
        # (tenant/host/metric are validated), checked once per batch, not per row
        if _UNSAFE.search("".join(eid)):
            eid = [_copy_escape(e) for e in eid]
        if _UNSAFE.search("".join(unit)):
            unit = [_copy_escape(u) for u in unit]
        if "\\" in "".join(tags):
            tags = [t.replace("\\", "\\\\") for t in tags]
        buf = "".join([
            f"{e}\t{t}\t{h}\t{m}\t{v!r}\t{d}\t{u}\t{g}\n"
            for e, t, h, m, v, d, u, g in zip(eid, b.tenant_id, b.host, b.metric, b.value.tolist(),
                                              ts, unit, tags, strict=True)
        ])
        with self.conn.cursor().copy(
            "COPY metrics (event_id, tenant_id, host, metric, value, ts_event, unit, tags) FROM STDIN"
        ) as cp:
            cp.write(buf)
        return len(b)

    def _copy_windows(self, w) -> None:
        """COPY (text) straight into ``features`` and ``scores``; fails on an already-stored window."""
        ws = np.datetime_as_string((w.start * 1e6).astype("datetime64[us]"), unit="us").tolist()
        we = np.datetime_as_string((w.end * 1e6).astype("datetime64[us]"), unit="us").tolist()
        cols = [w.features[k].tolist() for k in _FEATURE_COLS]
        cols += [_optional_column(w, k) for k in _CROSS_COLS]
        keys = [f"{t}\t{h}\t{m}\t{a}Z\t{b}Z" for t, h, m, a, b in
                zip(w.tenant_id, w.host, w.metric, ws, we, strict=True)]
        feats = "".join([
            k + "".join(["\t" + _num(x) for x in vals]) + "\n"
            for k, vals in zip(keys, zip(*cols, strict=True), strict=True)
        ])
        dumps = orjson.dumps
        comp = [dumps(c).decode() for c in w.components]
        expl = [dumps(e).decode() for e in w.explanation]
        if "\\" in "".join(comp) or "\\" in "".join(expl):
            comp = [c.replace("\\", "\\\\") for c in comp]
            expl = [e.replace("\\", "\\\\") for e in expl]
        mean = w.features["mean"].tolist()
        version = [_NULL if v is None else v for v in w.model_version]
        scores = "".join([
            f"{k}\t{_num(sc)}\t{sev}\t{c}\t{_num(a)}\t{_num(x)}\t{e}\t{v}\n"
            for k, sc, sev, c, a, x, e, v in zip(keys, w.score.tolist(), w.severity, comp, mean,
                                                 w.expected.tolist(), expl, version, strict=True)
        ])
        cur = self.conn.cursor()
        with cur.copy("COPY features (tenant_id, host, metric, window_start, window_end, "
                      + ", ".join(_FEATURE_COLS + _CROSS_COLS) + ") FROM STDIN") as cp:
            cp.write(feats)
        with cur.copy("COPY scores (tenant_id, host, metric, window_start, window_end, score, severity,"
                      " components, actual, expected, explanation, model_version) FROM STDIN") as cp:
            cp.write(scores)

    def _write_windows(self, w) -> None:
        """``features`` and ``scores`` rows of closed windows (idempotent on the window key)."""
        cur = self.conn.cursor()
        f = {k: w.features[k].tolist() for k in ("count", "mean", "std", "min", "max", "last",
                                                 "slope", "change", "gap")}
        start, end = w.start.tolist(), w.end.tolist()
        expected = [None if x != x else x for x in w.expected.tolist()]
        cross = [_optional_column(w, k) for k in _CROSS_COLS]
        xcols = ", ".join(_CROSS_COLS)
        dumps = orjson.dumps
        with cur.copy(
            "COPY windows_stage (tenant_id, host, metric, ws, we, count, mean, std, min, max, last,"
            " slope, change, gap, score, severity, components, actual, expected, explanation,"
            f" model_version, {xcols}) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["text", "text", "text", "float8", "float8", "int4"] + ["float8"] * 8
                         + ["float8", "text", "text", "float8", "float8", "text", "text"]
                         + ["float8"] * len(_CROSS_COLS))
            for i in range(len(w)):
                cp.write_row((
                    w.tenant_id[i], w.host[i], w.metric[i], start[i], end[i], int(f["count"][i]),
                    f["mean"][i], f["std"][i], f["min"][i], f["max"][i], f["last"][i],
                    f["slope"][i], f["change"][i], float(f["gap"][i]), float(w.score[i]),
                    w.severity[i], dumps(w.components[i]).decode(), f["mean"][i], expected[i],
                    dumps(w.explanation[i]).decode(), w.model_version[i],
                    *(c[i] for c in cross),
                ))
        cur.execute(
            "INSERT INTO features (tenant_id, host, metric, window_start, window_end, count, mean,"
            f" std, min, max, last, slope, change, gap, {xcols}) SELECT tenant_id, host, metric,"
            " to_timestamp(ws), to_timestamp(we), count, mean, std, min, max, last, slope, change,"
            f" gap, {xcols} FROM windows_stage ON CONFLICT DO NOTHING"
        )
        cur.execute(
            "INSERT INTO scores (tenant_id, host, metric, window_start, window_end, score, severity,"
            " components, actual, expected, explanation, model_version) SELECT tenant_id, host,"
            " metric, to_timestamp(ws), to_timestamp(we), score, severity, components::jsonb,"
            " actual, expected, explanation::jsonb, model_version FROM windows_stage"
            " ON CONFLICT DO NOTHING"
        )
        cur.execute("TRUNCATE windows_stage")

    def _write_shadow(self, w, idx: np.ndarray, fresh: bool) -> None:
        """``shadow_scores`` rows of the windows ``idx`` (COPY; ``ON CONFLICT`` on a replay).

        The champion's side of the comparison is the window's ``batch`` score component.
        """
        version = [w.shadow_version[i] for i in idx.tolist()]
        comp = [w.components[i] for i in idx.tolist()]
        champ_v = [w.model_version[i] for i in idx.tolist()]
        champ = [c.get("batch") for c in comp]
        score, raw = w.shadow_score[idx].tolist(), w.shadow_raw[idx].tolist()
        tenant, host, metric = w.tenant_id[idx], w.host[idx], w.metric[idx]
        cols = ("tenant_id, model_version, window_start, host, metric, window_end, score, raw,"
                " champion_version, champion_score")
        cur = self.conn.cursor()
        if not fresh:
            nul = [None if x != x else x for x in raw]
            cur.execute(
                f"INSERT INTO shadow_scores ({cols}) SELECT t, v, to_timestamp(ws), h, m,"
                " to_timestamp(we), sc, r, cv, cs FROM unnest(%s::text[], %s::text[], %s::float8[],"
                " %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[], %s::text[],"
                " %s::float8[]) AS u(t, v, ws, h, m, we, sc, r, cv, cs) ON CONFLICT DO NOTHING",
                (tenant.tolist(), version, w.start[idx].tolist(), host.tolist(), metric.tolist(),
                 w.end[idx].tolist(), score, nul, champ_v, champ),
            )
            return
        ws = np.datetime_as_string((w.start[idx] * 1e6).astype("datetime64[us]"), unit="us").tolist()
        we = np.datetime_as_string((w.end[idx] * 1e6).astype("datetime64[us]"), unit="us").tolist()
        if _UNSAFE.search("".join(version) + "".join(v or "" for v in champ_v)):
            version = [_copy_escape(v) for v in version]
            champ_v = [None if v is None else _copy_escape(v) for v in champ_v]
        buf = "".join([
            f"{t}\t{v}\t{a}Z\t{h}\t{m}\t{b}Z\t{_num(sc)}\t{_num(r)}\t"
            f"{_NULL if cv is None else cv}\t{_num(cs)}\n"
            for t, v, a, h, m, b, sc, r, cv, cs in zip(tenant, version, ws, host, metric, we, score,
                                                       raw, champ_v, champ, strict=True)
        ])
        with cur.copy(f"COPY shadow_scores ({cols}) FROM STDIN") as cp:
            cp.write(buf)

    def _write_metrics(self, b: MetricBatch) -> int:
        """Staging COPY + ``INSERT … ON CONFLICT DO NOTHING``; sets :attr:`collided`.

        No conflict target: the arbiter is the leaf partition's unique index on
        (tenant_id, event_id) (a partitioned table has no such index of its own). Rows go in
        batch order, so of two rows of one batch with one id the first is stored.
        """
        cur = self.conn.cursor()
        tags = [b"{}" if t is None else orjson.dumps(t) for t in b.tags]
        with cur.copy(
            "COPY metrics_stage (idx, event_id, tenant_id, host, metric, value, ts, unit, tags) "
            "FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(_COPY_TYPES)
            for row in zip(range(len(b)), b.event_id, b.tenant_id, b.host, b.metric, b.value.tolist(),
                           _iso_us(b.ts), b.unit, (t.decode() for t in tags), strict=True):
                cp.write_row(row)
        cur.execute(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event, unit, tags) "
            "SELECT event_id, tenant_id, host, metric, value, ts::timestamptz, unit, tags::jsonb "
            "FROM metrics_stage ORDER BY idx ON CONFLICT DO NOTHING"
        )
        n = cur.rowcount
        if n < len(b):
            self.collided = self._collisions(cur)
        cur.execute("TRUNCATE metrics_stage")
        return n

    @staticmethod
    def _collisions(cur) -> np.ndarray:
        """Staged rows with no stored twin: their tenant stored another event under their id.

        A twin has the same tenant, id, host, metric and value and a ts_event within 1 µs (rows
        written before migration 008 by ``to_timestamp`` may differ in the last microsecond). Tags
        are not compared: enrichment may have changed them between an event and its replay.
        The LATERAL … LIMIT 1 makes it one index probe per row (the leaf unique index, its
        partition found at run time from ts_event), whatever the planner thinks of the staging
        table's size.
        """
        rows = cur.execute(
            "SELECT s.idx FROM metrics_stage s LEFT JOIN LATERAL ("
            " SELECT 1 AS hit FROM metrics m WHERE m.tenant_id = s.tenant_id"
            " AND m.event_id = s.event_id AND m.host = s.host AND m.metric = s.metric"
            " AND m.value = s.value AND m.ts_event BETWEEN s.ts::timestamptz - interval '1 microsecond'"
            " AND s.ts::timestamptz + interval '1 microsecond' LIMIT 1) x ON true"
            " WHERE x.hit IS NULL ORDER BY s.idx"
        ).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def _write_alerts(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """Store transitions (``alert_events`` + their ``alerts`` row); returns the new ones
        with their ``seq``. ``payload`` is :meth:`AlertEvent.to_dict`."""
        cur = self.conn.cursor()
        stored: list[AlertEvent] = []
        for ev in events:
            row = cur.execute(
                "INSERT INTO alert_events (event_key, alert_id, tenant_id, kind, payload) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_key) DO NOTHING RETURNING seq",
                (ev.event_key, ev.alert_id, ev.tenant_id, ev.kind, Jsonb(ev.to_dict())),
            ).fetchone()
            if row is None:
                continue  # replayed transition: already stored (and published)
            stored.append(ev.stored(row[0]))
            ts_event = ev.ts_event
            if ev.kind == "open":
                cur.execute(
                    "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity, ts_event,"
                    " state, rule, threshold, message, score, explanation, model_version,"
                    " opened_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,'open',%s,%s,%s,%s,%s,%s,"
                    " to_timestamp(%s), %s) ON CONFLICT (alert_id) DO NOTHING",
                    (ev.alert_id, ev.tenant_id, ev.host, ev.metric, ev.value,
                     ev.severity, ts_event, ev.rule, ev.threshold, ev.message,
                     ev.score, Jsonb(ev.explanation), ev.model_version, ev.opened_at,
                     ts_event),
                )
            else:
                cur.execute(
                    "UPDATE alerts SET severity = %s, value = %s, message = %s, score = %s,"
                    " threshold = %s, explanation = %s, updated_at = %s, state = %s,"
                    " resolved_at = CASE WHEN %s::text = 'resolved' THEN %s::timestamptz END"
                    " WHERE alert_id = %s AND updated_at <= %s",
                    (ev.severity, ev.value, ev.message, ev.score, ev.threshold,
                     Jsonb(ev.explanation), ts_event, ev.state, ev.state,
                     ts_event, ev.alert_id, ts_event),
                )
        return stored

    def write_dead_letters(self, dead: Iterable[DeadLetter]) -> None:
        """Dead letters into ``dead_letters`` (the embedded runner's DLQ), in the caller's transaction."""
        with self.conn.cursor().copy(
            "COPY dead_letters (reason, detail, stage, source, raw) FROM STDIN"
        ) as cp:
            for d in dead:
                cp.write_row((d.reason, d.detail, d.stage, f"{d.topic}:{d.partition}:{d.offset}", d.raw))

    def unpublished(self, limit: int = 10_000) -> list[AlertEvent]:
        """Alert events stored but not yet confirmed on the alert topic (outbox), with ``seq``."""
        rows = self.conn.execute(
            "SELECT seq, payload FROM alert_events WHERE published_at IS NULL ORDER BY seq LIMIT %s",
            (limit,),
        ).fetchall()
        self.conn.commit()
        return [AlertEvent.from_dict(p).stored(s) for s, p in rows]

    def mark_published(self, seqs: list[int]) -> None:
        if not seqs:
            return
        self.conn.execute(
            "UPDATE alert_events SET published_at = now() WHERE seq = ANY(%s)", (seqs,)
        )
        self.conn.commit()


def count_rows(conn: psycopg.Connection, table: str, where: str = "", params: Any = ()) -> int:
    q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    if where:
        q = q + sql.SQL(" WHERE ") + sql.SQL(where)
    n = conn.execute(q, params).fetchone()[0]
    conn.commit()
    return int(n)

