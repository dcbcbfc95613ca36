"""Live detection through Kafka: windows, features and scores stored and published; detect state
checkpointed per partition so a kill -9 leaves exactly the tables of an uninterrupted run."""

from __future__ import annotations

import os
import signal

import orjson
import pytest

from storage.connect import connect, count_rows
from storage.migrate import migrate
from storage.tenants import create_tenant
from tests.integration.conftest import consume_all, group_lag, produce_sim, spawn_worker, wait_for

CHAIN = "normalize,enrich,detect,sink"


def test_windows_scores_and_anomaly_alerts_flow_to_postgres_and_score_topic(
    settings, conn, tenant, start_worker
):
    # 20 s windows: the default ensemble scores a series once it has ~100 windows of history
    settings = settings.model_copy(update={"window_s": 20.0, "allowed_lateness_s": 10.0})
    sim, n = produce_sim(settings, tenant, hosts=6, ticks=720, anomaly_rate=0.01)
    start_worker(CHAIN, settings)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == n, 60, what="metrics"
    )
    # 720 ticks of 10 s = 360 windows of 20 s per series; all but the still-open last ones close
    nwin = wait_for(
        lambda: (
            count_rows(conn, "scores", "tenant_id = %s", (tenant,)) >= 6 * 4 * 358
            and count_rows(conn, "scores", "tenant_id = %s", (tenant,))
        ),
        60,
        what="scores",
    )
    assert count_rows(conn, "features", "tenant_id = %s", (tenant,)) == nwin
    row = conn.execute(
        "SELECT count, mean, std, min, max FROM features"
        " WHERE tenant_id = %s AND metric = 'cpu_load'"
        " ORDER BY window_start LIMIT 1 OFFSET 30",
        (tenant,),
    ).fetchone()  # past the partial first windows
    assert row[0] == 2 and row[3] <= row[1] <= row[4] and row[2] >= 0
    assert conn.execute(
        "SELECT min(score) >= 0 AND max(score) <= 1 FROM scores WHERE tenant_id = %s", (tenant,)
    ).fetchone()[0]
    # injected anomalies (after the warm-up) reach the warning level; normal windows rarely do
    metric_of = {
        "cpu_spike": "cpu_load",
        "latency_spike": "latency_p99",
        "traffic_drop": "req_rate",
        "memory_leak": "mem_used_pct",
    }
    late = [a for a in sim.anomalies if a.start > sim.start + 120 * 20]
    assert late, "the simulator injected no anomaly after the warm-up"
    hits = [
        conn.execute(
            "SELECT max(score) FROM scores WHERE tenant_id = %s AND host = %s AND metric = %s"
            " AND window_end > to_timestamp(%s) AND window_start < to_timestamp(%s)",
            (tenant, a.host, metric_of[a.kind], a.start, a.end),
        ).fetchone()[0]
        or 0.0
        for a in late
    ]
    assert max(hits) >= 0.5, hits
    noisy = conn.execute(
        "SELECT avg((score >= 0.5)::int) FROM scores"
        " WHERE tenant_id = %s AND window_start > to_timestamp(%s)",
        (tenant, sim.start + 120 * 20),
    ).fetchone()[0]
    assert noisy < 0.05
    opened = conn.execute(
        "SELECT host, metric FROM alerts WHERE tenant_id = %s AND rule = 'anomaly:ensemble'",
        (tenant,),
    ).fetchall()
    assert set(opened) & {(a.host, metric_of[a.kind]) for a in sim.anomalies}
    recs = consume_all(settings, settings.topic_score, nwin, timeout=30)
    r = orjson.loads(recs[0].value())
    assert {"window_start", "features", "score", "severity", "model_version"} <= set(r)


def _snapshot(c):
    scores = c.execute(
        "SELECT host, metric, window_start, round(score::numeric, 9), severity, components::text"
        " FROM scores ORDER BY 1, 2, 3"
    ).fetchall()
    alerts = c.execute(
        "SELECT alert_id, host, metric, rule, severity, state, value, ts_event, opened_at,"
        " resolved_at"
        " FROM alerts ORDER BY 1"
    ).fetchall()
    events = c.execute("SELECT event_key, kind FROM alert_events ORDER BY 1").fetchall()
    return scores, alerts, events


@pytest.mark.parametrize(
    ("interruption", "checkpoint_s"),
    [
        ("kill -9", 0.5),
        ("pause past the session timeout", 0.5),
        # only the checkpoint that goes with each partition's first commit: a restart must never
        # find committed offsets without detect state
        ("kill -9", 3600.0),
    ],
)
def test_interrupted_detect_worker_gives_tables_of_an_uninterrupted_run(
    settings, two_dbs, tmp_path, interruption, checkpoint_s
):
    """kill -9 mid-replay and restart; or SIGSTOP the worker until the group evicts it, then
    SIGCONT (its commits are refused, it rejoins and resumes from its checkpoints)."""
    tenant = "replay"
    runs = {}
    for label, dbname in zip(("clean", "killed"), two_dbs, strict=True):
        s = settings.model_copy(
            update={
                "pg_database": dbname,
                "checkpoint_interval_s": checkpoint_s,
                "batch_max_events": 1500,
                "consumer_group_prefix": f"{settings.consumer_group_prefix}-{label}",
            }
        )
        with connect(s, autocommit=True) as c:
            migrate(c)
            create_tenant(c, tenant)
        runs[label] = s
    s0 = runs["clean"]
    _, n = produce_sim(s0, tenant, hosts=20, ticks=360, seed=5, anomaly_rate=0.01)  # 28.8k events

    def count(s, table="metrics"):
        with connect(s, autocommit=True) as c:
            return count_rows(c, table)

    def run_to_end(s, log, kill_at=None):
        w = spawn_worker(s, CHAIN, log)
        try:
            if kill_at is not None:
                wait_for(
                    lambda: (
                        (count(s) >= kill_at and count(s, "checkpoints")) or w.poll() is not None
                    ),
                    90,
                    what="rows and a checkpoint before the kill",
                )
                assert w.poll() is None, log.read_text()[-2000:]
                if interruption == "kill -9":
                    os.kill(w.pid, signal.SIGKILL)
                    w.wait(10)
                    return
                os.kill(w.pid, signal.SIGSTOP)
                # paused past session.timeout.ms: the coordinator drops the silent member
                wait_for(
                    lambda: _members(s) == 0, 60, interval=0.5, what="the paused member evicted"
                )
                os.kill(w.pid, signal.SIGCONT)
            wait_for(
                lambda: count(s) >= n or w.poll() is not None, 120, interval=0.3, what="all rows"
            )
            assert w.poll() is None, log.read_text()[-2000:]
            # drained: every record of the input topic is committed by this group
            wait_for(
                lambda: group_lag(s, CHAIN) == 0 or w.poll() is not None,
                30,
                what="offsets committed",
            )
            assert w.poll() is None, log.read_text()[-3000:]
        finally:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(30)

    run_to_end(runs["clean"], tmp_path / "clean.log")
    if interruption == "kill -9":
        run_to_end(runs["killed"], tmp_path / "k1.log", kill_at=n // 3)
        with connect(runs["killed"], autocommit=True) as c:
            assert count_rows(c, "checkpoints") > 0
            mid = count_rows(c, "metrics")
            if checkpoint_s > 60:  # one checkpoint per partition, written with its first commit
                first = c.execute("SELECT min(next_offset) FROM checkpoints").fetchone()[0]
                assert first <= 1500
        assert mid < n
        run_to_end(runs["killed"], tmp_path / "k2.log")
    else:
        run_to_end(runs["killed"], tmp_path / "k1.log", kill_at=n // 3)
        assert "offset commit refused" in (tmp_path / "k1.log").read_text()

    with (
        connect(runs["clean"], autocommit=True) as a,
        connect(runs["killed"], autocommit=True) as b,
    ):
        sa, sb = _snapshot(a), _snapshot(b)
        assert count_rows(a, "metrics") == count_rows(b, "metrics") == n
    assert len(sa[0]) > 20 * 4 * 50
    assert sa[0] == sb[0], "scores differ"
    assert sa[1] == sb[1], "alerts differ: " + repr(
        [(x, y) for x, y in zip(sa[1], sb[1], strict=False) if x != y][:3]
    )
    assert sa[2] == sb[2], "alert transitions differ"
    assert sa[1], "no alert at all: the comparison would be empty"


def _members(s) -> int:
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    group = f"{s.consumer_group_prefix}-{CHAIN.replace(',', '-')}"
    return len(a.describe_consumer_groups([group])[group].result(10).members)


def test_a_checkpoint_ahead_of_the_groups_commit_is_committed_on_restore(
    settings, two_dbs, tmp_path
):
    """Rows and checkpoint written, commit lost (kill -9 between them, or an expired membership):
    the next owner resumes at the checkpoint and, with no input after it, still commits it."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    s = settings.model_copy(
        update={
            "pg_database": two_dbs[0],
            "checkpoint_interval_s": 0.5,
            "consumer_group_prefix": f"{settings.consumer_group_prefix}-ahead",
        }
    )
    with connect(s, autocommit=True) as c:
        migrate(c)
        create_tenant(c, "ahead")
    _, n = produce_sim(s, "ahead", hosts=4, ticks=60, seed=3)

    def drain(log):
        w = spawn_worker(s, CHAIN, log)
        try:
            wait_for(
                lambda: group_lag(s, CHAIN) == 0 or w.poll() is not None,
                60,
                what="offsets committed",
            )
            assert w.poll() is None, log.read_text()[-3000:]
        finally:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
            assert w.wait(30) == 0, log.read_text()[-3000:]

    drain(tmp_path / "w1.log")
    with connect(s, autocommit=True) as c:
        cps = dict(c.execute("SELECT partition, next_offset FROM checkpoints").fetchall())
        assert count_rows(c, "metrics") == n
    assert cps, "no checkpoint written"
    # the commits are lost: the group's offsets go back to the start, the checkpoints stay
    group = f"{s.consumer_group_prefix}-{CHAIN.replace(',', '-')}"
    parts = [TopicPartition(s.topic_raw, p, 0) for p in cps]
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, parts)])[group].result(
        30
    )
    assert group_lag(s, CHAIN) == n
    drain(tmp_path / "w2.log")
    assert "committing restored checkpoint offsets" in (tmp_path / "w2.log").read_text()
    with connect(s, autocommit=True) as c:
        assert count_rows(c, "metrics") == n
        assert dict(c.execute("SELECT partition, next_offset FROM checkpoints").fetchall()) == cps
