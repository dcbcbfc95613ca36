"""Time partitions of metrics/features/scores/shadow_scores: created ahead and on demand, the
DEFAULT partition as safety net (emptied by maintenance), retention by dropping whole partitions
while a writer goes on, and migration 008 converting populated tables.

Issue 8: "Storage grows without bound" (no time partitions, no retention).

Every test here runs on a database of its own: retention drops partitions table-wide.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from core.batch import MetricBatch
from core.settings import Settings
from storage.connect import connect
from storage.migrate import migrate
from storage.partitions import (
    _DETACHED,
    PARTITIONED,
    PartitionPolicy,
    Partitions,
    maintain,
    partition_name,
    partitions_of,
)
from storage.sink import Sink

DAY = 86400.0
TODAY = time.time() // DAY * DAY


@pytest.fixture
def fresh(base_settings: Settings) -> Iterator[Settings]:
    """Settings of a new, empty database (migrated only where a test says so)."""
    name = f"eventops_part_{uuid.uuid4().hex[:8]}"
    admin = connect(base_settings, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    yield base_settings.model_copy(update={"pg_database": name})
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def pconn(fresh: Settings) -> Iterator[psycopg.Connection]:
    c = connect(fresh, autocommit=True)
    migrate(c)
    yield c
    c.close()


def obj(xs):
    a = np.empty(len(xs), dtype=object)
    a[:] = xs
    return a


def batch(ts, tenant="t1", prefix=None) -> MetricBatch:
    ts = np.asarray(ts, dtype=float)
    n = len(ts)
    prefix = prefix or uuid.uuid4().hex[:6]
    return MetricBatch(
        obj([f"{prefix}-{i}" for i in range(n)]),
        obj([tenant] * n),
        obj(["h"] * n),
        obj(["m"] * n),
        np.arange(n, dtype=float),
        ts,
        obj(["u"] * n),
        obj([None] * n),
    )


def where(conn, table="metrics") -> dict[str, int]:
    """partition name -> rows in it."""
    return dict(
        conn.execute(
            f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1"
        ).fetchall()
    )


def names(conn, table="metrics") -> set[str]:
    return {p.name for p in partitions_of(conn, table)[0]}


def test_maintenance_creates_partitions_ahead_for_every_table(pconn):
    policy = PartitionPolicy(ahead_days=3)
    rep = maintain(pconn, policy, now=TODAY + 3600)
    for table in PARTITIONED:
        want = {partition_name(table, TODAY + k * DAY) for k in range(4)}
        assert want <= names(pconn, table), table
    assert len(rep.created) == 16
    assert maintain(pconn, policy, now=TODAY + 3600).created == []  # idempotent


def test_sink_creates_missing_partitions_on_demand_before_writing(pconn):
    far = TODAY + 40 * DAY  # no partition there
    sink = Sink(pconn)
    assert sink.write(batch([far + 10, far + DAY + 10, far + 5 * DAY]))[0] == 3
    got = where(pconn)
    assert got == {
        partition_name("metrics", far): 1,
        partition_name("metrics", far + DAY): 1,
        partition_name("metrics", far + 5 * DAY): 1,
    }
    assert partition_name("metrics", far + 2 * DAY) not in names(pconn)  # only buckets with rows
    # every leaf carries the per-tenant unique index on event ids
    idx = pconn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE 'CREATE UNIQUE%%'",
        (partition_name("metrics", far),),
    ).fetchone()[0]
    assert "(tenant_id, event_id)" in idx


def test_partitions_follow_a_changed_interval_without_overlapping(pconn):
    Sink(pconn).write(batch([TODAY + 100]))  # a daily partition for today
    six = Partitions(PartitionPolicy(interval_s=6 * 3600))
    assert six.ensure(pconn, "metrics", np.array([TODAY + 7 * 3600])) == []  # today is covered
    made = six.ensure(pconn, "metrics", np.array([TODAY + DAY + 7 * 3600]))
    assert made == [partition_name("metrics", TODAY + DAY + 6 * 3600)]
    assert made[0].endswith("_0600")


def test_row_without_partition_lands_in_default_and_maintenance_moves_it(pconn, fresh):
    far = TODAY + 60 * DAY
    lock_holder = connect(fresh)
    # a reader of the DEFAULT partition holds off the sink's ATTACH (ACCESS EXCLUSIVE on DEFAULT)
    lock_holder.execute("SELECT count(*) FROM metrics_default")
    sink = Sink(pconn, Partitions(PartitionPolicy(lock_timeout_ms=100)))
    try:
        assert sink.write(batch([far + 5, far + 6]))[0] == 2  # not refused for want of a partition
    finally:
        lock_holder.rollback()
        lock_holder.close()
    assert where(pconn) == {"metrics_default": 2}
    # an expired row (direct SQL, no partition) sits there too
    pconn.execute(
        "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event)"
        " VALUES ('old', 't1', 'h', 'm', 1, to_timestamp(%s))",
        (TODAY - 30 * DAY,),
    )
    rep = maintain(
        pconn, PartitionPolicy(ahead_days=0, retention_days={"metrics": 14}), now=TODAY + 60
    )
    assert (rep.moved, rep.expired) == (2, 1)
    assert where(pconn) == {partition_name("metrics", far): 2}
    # the moved rows still deduplicate: their partition has the unique index
    again = Sink(pconn)
    assert again.write(batch([far + 5], prefix="x"))[0] == 1
    assert pconn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 3


def test_retention_drops_exactly_the_expired_partitions_while_a_writer_keeps_writing(pconn, fresh):
    now = time.time()
    sink = Sink(pconn)
    days = [TODAY - k * DAY for k in range(1, 9)]  # the last 8 days, one batch each
    for d in days:
        sink.write(batch(d + 3600 + np.arange(50.0)))
    windows_before = names(pconn, "features")

    errors: list[BaseException] = []
    written = [0]
    stop = threading.Event()

    def writer() -> None:
        try:
            with connect(fresh) as c:
                s = Sink(c)
                while not stop.is_set():
                    written[0] += s.write(batch(time.time() - 1 + np.arange(200) * 1e-3))[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 10
        while written[0] < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        rep = maintain(pconn, PartitionPolicy(ahead_days=1, retention_days={"metrics": 5}), now=now)
        before = written[0]
        deadline = time.monotonic() + 10
        while written[0] < before + 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        th.join(30)
    assert errors == []
    cutoff = now - 5 * DAY
    expired = {partition_name("metrics", d) for d in days if d + DAY <= cutoff}
    assert set(rep.dropped) == expired and len(expired) >= 3
    assert not expired & names(pconn)
    assert {partition_name("metrics", d) for d in days if d + DAY > cutoff} <= names(pconn)
    assert names(pconn, "features") >= windows_before  # no retention set for it: nothing dropped
    kept = pconn.execute(
        "SELECT count(*) FROM metrics WHERE ts_event < to_timestamp(%s)", (TODAY,)
    ).fetchone()[0]
    assert kept == 50 * (8 - len(expired))
    assert written[0] >= before + 1000  # the writer went on after the drops
    assert (
        pconn.execute(
            "SELECT count(*) FROM metrics WHERE ts_event >= to_timestamp(%s)", (TODAY,)
        ).fetchone()[0]
        == written[0]
    )


def test_migration_converts_populated_tables_and_their_rows_still_deduplicate(fresh):
    c = connect(fresh, autocommit=True)
    try:
        migrate(c, upto="007_cross_metric_features")
        t0 = TODAY - 2 * DAY + 0.123456789
        ts = t0 + np.arange(300) * 600.0  # spans three days
        b = batch(ts, prefix="pre")
        c.execute(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event, unit, tags)"
            " SELECT e, 't1', 'h', 'm', v, to_timestamp(ts), 'u', '{\"dc\": \"eu1\"}'"
            " FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS u(e, v, ts)",
            (b.event_id.tolist(), b.value.tolist(), b.ts.tolist()),
        )
        c.execute(
            "INSERT INTO features (tenant_id, host, metric, window_start, window_end, count, mean)"
            " SELECT 't1', 'h', 'm', to_timestamp(%s + i * 60), to_timestamp(%s + i * 60 + 60),"
            " 1, i"
            " FROM generate_series(0, 99) i",
            (TODAY - DAY, TODAY - DAY),
        )
        c.execute(
            "INSERT INTO scores"
            " (tenant_id, host, metric, window_start, window_end, score, severity)"
            " SELECT 't1', 'h', 'm', to_timestamp(%s + i * 60), to_timestamp(%s + i * 60 + 60),"
            " 0.5, 'ok'"
            " FROM generate_series(0, 99) i",
            (TODAY - DAY, TODAY - DAY),
        )
        before = c.execute(
            "SELECT event_id, value, ts_event, tags FROM metrics ORDER BY event_id"
        ).fetchall()

        assert migrate(c, upto="008_time_partitions") == ["008_time_partitions"]
        after = c.execute(
            "SELECT event_id, value, ts_event, tags FROM metrics ORDER BY event_id"
        ).fetchall()
        assert after == before
        assert "metrics_default" not in where(c) and len(where(c)) == 3
        assert sum(where(c, "features").values()) == 100 and sum(where(c, "scores").values()) == 100
        assert (
            c.execute("SELECT relkind FROM pg_class WHERE relname = 'metrics'").fetchone()[0] == "p"
        )

        sink = Sink(c)
        assert sink.write(b)[0] == 0 and sink.collided.size == 0  # replay of pre-migration rows
        changed = batch(ts[:3], prefix="pre")
        changed.value[:] = 42.0
        assert sink.write(changed)[0] == 0
        assert sink.collided.tolist() == [0, 1, 2]  # same ids, different events
        assert sink.write(batch(ts[:3], tenant="t2", prefix="pre"))[0] == 3  # another tenant's
        assert c.execute("SELECT count(*) FROM metrics").fetchone()[0] == 303
        new_id = c.execute("SELECT max(id) FROM metrics").fetchone()[0]
        assert new_id > 300  # the id sequence carried over
    finally:
        c.close()


def test_a_partition_detached_but_not_dropped_is_dropped_by_the_next_pass(pconn):
    """A crash between retention's DETACH and its DROP leaves a marked table behind."""
    Sink(pconn).write(batch([TODAY - 20 * DAY + 5]))
    name = partition_name("metrics", TODAY - 20 * DAY)
    pconn.execute(f"ALTER TABLE metrics DETACH PARTITION {name}")
    pconn.execute(f"COMMENT ON TABLE {name} IS %s" % f"'{_DETACHED}'")
    pconn.execute("CREATE TABLE metrics_keep_me (LIKE metrics)")  # not marked: left alone
    rep = maintain(pconn, PartitionPolicy(ahead_days=0), now=TODAY + 60)
    assert rep.dropped == [name]
    left = {
        r[0]
        for r in pconn.execute(
            "SELECT relname FROM pg_class WHERE relname IN (%s, %s)", (name, "metrics_keep_me")
        )
    }
    assert left == {"metrics_keep_me"}
