"""Time partitions and retention of ``metrics``, ``features``, ``scores`` and ``shadow_scores``.

:class:`Partitions` is the sink's hot-path check (and creation) of the partitions a batch needs;
:func:`maintain` is one maintenance pass (partitions ahead, DEFAULT emptied, retention drops);
:class:`Maintainer` runs it in a thread of the processes that write.
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

import numpy as np
import psycopg
from psycopg import sql

from core.settings import Settings
from storage.connect import connect

log = logging.getLogger(__name__)


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


PARTITIONED: dict[str, PartitionedTable] = {
    t.name: t
    for t in (
        PartitionedTable("metrics", "ts_event", ("tenant_id", "event_id")),
        PartitionedTable("features", "window_start"),
        PartitionedTable("scores", "window_start"),
        PartitionedTable("shadow_scores", "window_start"),
    )
}


@dataclass(frozen=True)
class PartitionPolicy:
    """Partition length, how far ahead partitions exist, retention per table (0 = keep)."""

    interval_s: int = 86400
    ahead_days: int = 2
    retention_days: dict[str, int] = field(default_factory=dict)
    lock_timeout_ms: int = 1000

    @classmethod
    def from_settings(cls, s: Settings) -> PartitionPolicy:
        return cls(
            interval_s=s.partition_interval_hours * 3600,
            ahead_days=s.partition_ahead_days,
            retention_days=s.retention_days(),
            lock_timeout_ms=s.partition_lock_timeout_ms,
        )


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
    """Range partitions of ``table`` (sorted by lower bound) and the name of its DEFAULT
    partition."""
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


def _create_partition(
    conn: psycopg.Connection, t: PartitionedTable, lo: float, hi: float, default: str | None
) -> tuple[str, int]:
    """Create and attach the partition [lo, hi) of ``t``, moving its rows out of DEFAULT.

    Returns (name, rows moved). The caller holds the table's DDL advisory lock.
    """
    name = partition_name(t.name, lo)
    part, parent = sql.Identifier(name), sql.Identifier(t.name)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"
        ).format(part, parent)
    )
    if t.leaf_unique:
        suffix = "_".join(c.removesuffix("_id") for c in t.leaf_unique)
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
                sql.Identifier(f"{name}_{suffix}"),
                part,
                sql.SQL(", ").join(map(sql.Identifier, t.leaf_unique)),
            )
        )
    a, b = sql.Literal(_utc(lo)), sql.Literal(_utc(hi))
    moved = 0
    if default is not None:
        moved = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {d} WHERE {k} >= {a} AND {k} < {b} RETURNING *)"
                " INSERT INTO {p} SELECT * FROM moved"
            ).format(d=sql.Identifier(default), k=sql.Identifier(t.key), a=a, b=b, p=part)
        ).rowcount
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, part, a, b
        )
    )
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
            log.warning(
                "%s: no partition for %d bucket(s) yet (%s: %s); their rows go to %s",
                table,
                len(todo),
                type(e).__name__,
                str(e).strip()[:200],
                PARTITIONED[table].default,
            )
            return []

    def create(
        self, conn: psycopg.Connection, table: str, buckets: Iterable[int]
    ) -> list[tuple[str, int]]:
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
        parts = [
            f"created {len(self.created)} partition(s)",
            f"dropped {len(self.dropped)}"
            + (f" ({', '.join(self.dropped)})" if self.dropped else ""),
            f"{self.moved} row(s) moved out of DEFAULT",
            f"{self.expired} expired row(s) deleted",
        ]
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
        " WHERE d.description = %s AND c.relkind = 'r' AND NOT c.relispartition",
        (_DETACHED,),
    ).fetchall()
    conn.commit()
    for (name,) in rows:
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return [r[0] for r in rows]


def _drop_partition(
    conn: psycopg.Connection,
    t: PartitionedTable,
    name: str,
    lock_timeout_ms: int,
    attempts: int = 4,
) -> tuple[int, float]:
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
                    conn.execute(
                        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                            sql.Identifier(t.name), ident
                        )
                    )
                finally:
                    waited += time.monotonic() - t0
                conn.execute(
                    sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, sql.Literal(_DETACHED))
                )
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(ident))
            log.info("%s: partition %s dropped (retention)", t.name, name)
            return i + 1, waited
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as e:
            log.info(
                "%s: dropping %s waited past the lock timeout (try %d/%d): %s",
                t.name,
                name,
                i + 1,
                attempts,
                str(e).strip(),
            )
            time.sleep(0.25 * 2**i)
    return 0, waited


def maintain(
    conn: psycopg.Connection, policy: PartitionPolicy, now: float | None = None
) -> MaintenanceReport:
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
                    rep.expired += conn.execute(
                        sql.SQL("DELETE FROM {} WHERE {} < {}").format(
                            default, key, sql.Literal(_utc(first_kept))
                        )
                    ).rowcount
            rows = conn.execute(
                sql.SQL(
                    "SELECT DISTINCT floor(extract(epoch FROM {}) / %s)::bigint FROM {}"
                ).format(key, default),
                (step,),
            ).fetchall()
            conn.commit()
            if rows:
                made = parts_mgr.create(conn, t.name, [r[0] for r in rows])
                rep.created += [n for n, _ in made]
                rep.moved += sum(m for _, m in made)
        except psycopg.Error as e:  # lock wait past the timeout, or a partition DDL refused
            if conn.broken:
                raise
            conn.rollback()
            log.warning(
                "%s: partition maintenance left for the next pass: %s", t.name, str(e).strip()
            )
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
        if (
            self.last.created
            or self.last.dropped
            or self.last.moved
            or self.last.expired
            or self.last.skipped
        ):
            log.info("storage maintenance: %s", self.last.summary())
        return self.last

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as e:  # noqa: BLE001 - a maintenance failure must not stop the writer
                log.warning(
                    "storage maintenance failed (next try in %.0f s): %s",
                    self.s.maintenance_interval_s,
                    e,
                )
            self._stop.wait(self.s.maintenance_interval_s)
