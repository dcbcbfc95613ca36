"""Notifications end to end: the real Alertmanager, signed webhooks with retries, silences."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import REPO_ROOT
from core.silences import new_silence
from notify.channels import ChannelSpec
from storage import notify as repo
from tests.integration.conftest import settings_env, wait_for
from tests.integration.notify_support import (
    Receiver,
    WorkerThread,
    am_alerts,
    cpu_incident,
    resolve_cpu,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def nsettings(settings):
    return settings.model_copy(
        update={
            "notify_poll_s": 0.05,
            "notify_refresh_s": 0.0,
            "notify_backoff_s": 0.05,
            "notify_backoff_max_s": 0.4,
            "notify_timeout_s": 5.0,
        }
    )


def channel(conn, tenant, name, kind, url, filter_=None) -> ChannelSpec:
    spec = ChannelSpec.check(name, kind, url, filter_)
    assert (
        repo.add_channel(conn, tenant, spec.name, spec.kind, spec.url, spec.secret, spec.filter)
        is not None
    )
    return spec


def states(conn, tenant) -> list[tuple]:
    return conn.execute(
        "SELECT d.kind, d.state, d.attempts, a.host FROM deliveries d JOIN alerts a USING"
        " (alert_id) WHERE d.tenant_id = %s ORDER BY d.seq",
        (tenant,),
    ).fetchall()


def test_alertmanager_gets_the_alert_its_resolution_and_nothing_silenced(nsettings, conn, tenant):
    am = nsettings.alertmanager_url
    channel(conn, tenant, "am", "alertmanager", am)
    now = time.time()
    w = WorkerThread(nsettings)
    try:
        t_bad = cpu_incident(nsettings, tenant, "web-1", start=now - 60, resolve=False)
        got = wait_for(lambda: am_alerts(am, tenant), 30, what="the alert in Alertmanager")
        (a,) = got
        assert a["labels"] == {
            "tenant": tenant,
            "host": "web-1",
            "metric": "cpu_load",
            "severity": "critical",
            "alertname": "cpu_high",
        } or (a["labels"]["alertname"] and a["labels"]["host"] == "web-1")
        assert {"tenant", "host", "metric", "severity", "alertname"} <= set(a["labels"])
        assert a["labels"]["severity"] == "critical" and a["labels"]["tenant"] == tenant
        ann = a["annotations"]
        assert "97" in ann["description"] and "threshold 90" in ann["description"]
        assert ann["dashboard"].endswith(f"#alert={ann['alert_id']}") and ann["summary"]
        assert {"score", "model_version", "alert_id"} <= set(ann)
        assert a["status"]["state"] == "active"
        assert abs(_epoch(a["startsAt"]) - t_bad) < 1.0
        assert _epoch(a["endsAt"]) > time.time() + 60  # kept firing by re-sends

        resolve_cpu(nsettings, tenant, "web-1", now - 50)
        wait_for(
            lambda: all(_epoch(x["endsAt"]) < time.time() for x in am_alerts(am, tenant)),
            30,
            what="the resolution in Alertmanager",
        )

        # a silence created in EventOps: the matching alert is stored, marked, never sent
        s = new_silence(
            tenant,
            ["host=web-2"],
            now=time.time(),
            duration_s=3600,
            author="test",
            comment="deploy",
        )
        repo.add_silence(conn, s)
        cpu_incident(nsettings, tenant, "web-2", start=now - 40, resolve=False)
        cpu_incident(nsettings, tenant, "web-3", start=now - 40, resolve=False)
        wait_for(
            lambda: any(x["labels"]["host"] == "web-3" for x in am_alerts(am, tenant)),
            30,
            what="the unsilenced alert",
        )
        rows = states(conn, tenant)
        web2 = [r for r in rows if r[3] == "web-2"]
        assert web2 and all(r[1] == "silenced" for r in web2), rows
        assert not any(x["labels"]["host"] == "web-2" for x in am_alerts(am, tenant))
        silenced_by = conn.execute(
            "SELECT silenced_by FROM deliveries WHERE tenant_id = %s AND state = 'silenced'",
            (tenant,),
        ).fetchone()[0]
        assert silenced_by == [s.id]

        # the silence ends while web-2 still fires: it is notified then
        repo.expire_silence(conn, tenant, s.id)
        wait_for(
            lambda: any(x["labels"]["host"] == "web-2" for x in am_alerts(am, tenant)),
            30,
            what="the alert released when its silence ended",
        )
    finally:
        w.stop()


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_webhook_failing_three_times_is_accepted_exactly_once(nsettings, conn, tenant):
    rx = Receiver(answer=lambda n: 500 if n <= 3 else 204)
    spec = channel(conn, tenant, "hook", "webhook", rx.url)
    rx.secret = spec.secret
    w = WorkerThread(nsettings)
    try:
        now = time.time()
        for i in range(3):
            cpu_incident(nsettings, tenant, f"db-{i}", start=now - 100 + i * 10)
        # 3 alerts x (open + resolve)
        wait_for(lambda: len(rx.accepted) == 6, 30, what="6 accepted webhook messages")
        time.sleep(0.3)  # nothing more arrives (a delivered message is not sent again)
        assert len(rx.accepted) == 6
        ids = [r["id"] for r in rx.accepted]
        assert len(set(ids)) == 6
        assert rx.bad_signatures == 0
        for mid in ids:  # every retry of a message carried its id
            tries = [r for r in rx.requests if r["id"] == mid]
            assert [r["status"] for r in tries] == [500, 500, 500, 204]
        # per-endpoint order: transitions arrive in the order they were stored
        seqs = [r["body"]["data"]["seq"] for r in rx.accepted]
        assert seqs == sorted(seqs)
        kinds = [r["body"]["type"] for r in rx.accepted]
        assert kinds.count("alert.open") == 3 and kinds.count("alert.resolve") == 3
        rows = states(conn, tenant)
        assert all(r[1] == "delivered" and r[2] == 4 for r in rows), rows
        n_attempts = conn.execute(
            "SELECT count(*) FROM delivery_attempts t JOIN deliveries d ON d.id = t.delivery_id"
            " WHERE d.tenant_id = %s",
            (tenant,),
        ).fetchone()[0]
        assert n_attempts == 24
    finally:
        w.stop()
        rx.close()


def test_kill_9_of_the_worker_mid_retry_loses_no_delivery(nsettings, conn, tenant, tmp_path):
    rx = Receiver(answer=lambda n: 503 if n <= 4 else 200)
    spec = channel(conn, tenant, "hook", "webhook", rx.url)
    rx.secret = spec.secret
    s = nsettings.model_copy(update={"notify_backoff_s": 0.3, "notify_backoff_max_s": 0.6})
    now = time.time()
    for i in range(4):
        cpu_incident(s, tenant, f"app-{i}", start=now - 100 + i * 10)
    log = tmp_path / "notify.log"

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "notify"],
            env=settings_env(s),
            cwd=REPO_ROOT,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )

    p = spawn()
    try:
        wait_for(lambda: len(rx.requests) >= 3, 60, what="the first failing attempts")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        before = len(rx.accepted)
        assert before < 8
        p = spawn()
        wait_for(
            lambda: len({r["id"] for r in rx.accepted}) == 8,
            60,
            what="every delivery accepted after the restart",
        )
        rows = states(conn, tenant)
        assert len(rows) == 8 and all(r[1] == "delivered" for r in rows), rows
        # duplicates (a kill between the answer and its record) carry the same id
        assert len({r["id"] for r in rx.accepted}) == 8
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        rx.close()
    assert "Traceback" not in Path(log).read_text()


def test_gives_up_after_the_cap_keeps_it_and_replays(nsettings, conn, tenant):
    rx = Receiver(answer=lambda n: 500)
    spec = channel(conn, tenant, "hook", "webhook", rx.url)
    rx.secret = spec.secret
    s = nsettings.model_copy(update={"notify_max_attempts": 3})
    w = WorkerThread(s)
    try:
        cpu_incident(s, tenant, "q-1", start=time.time() - 60, resolve=False)
        wait_for(
            lambda: [r[1] for r in states(conn, tenant)] == ["failed"],
            30,
            what="the delivery marked failed",
        )
        assert len(rx.requests) == 3
        (err,) = conn.execute(
            "SELECT last_error FROM deliveries WHERE tenant_id = %s", (tenant,)
        ).fetchone()
        assert err.startswith("HTTP 500")
        rx.answer = lambda n: 200
        assert repo.replay(conn, tenant) == 1
        wait_for(
            lambda: [r[1] for r in states(conn, tenant)] == ["delivered"],
            30,
            what="the replayed delivery",
        )
        assert len({r["id"] for r in rx.requests}) == 1  # the replay kept its webhook-id
    finally:
        w.stop()
        rx.close()


def test_a_slow_endpoint_does_not_delay_another(nsettings, conn, tenant):
    slow = Receiver(delay_s=3.0)
    fast = Receiver()
    slow.secret = channel(conn, tenant, "slow", "webhook", slow.url).secret
    fast.secret = channel(conn, tenant, "fast", "webhook", fast.url).secret
    w = WorkerThread(nsettings)
    try:
        t0 = time.time()
        for i in range(3):
            cpu_incident(nsettings, tenant, f"s-{i}", start=t0 - 100 + i * 10)
        wait_for(lambda: len(fast.accepted) == 6, 30, what="the fast endpoint's deliveries")
        assert time.time() - t0 < 3.0  # all six before the slow one answered its first
        assert len(slow.accepted) <= 1
    finally:
        w.stop()
        slow.close()
        fast.close()


def test_channel_filters_severity_and_matchers(nsettings, conn, tenant):
    rx = Receiver()
    rx.secret = channel(
        conn,
        tenant,
        "prod-critical",
        "webhook",
        rx.url,
        {"min_severity": "critical", "matchers": ["host=~web-.*"]},
    ).secret
    w = WorkerThread(nsettings)
    try:
        now = time.time()
        cpu_incident(nsettings, tenant, "web-9", start=now - 100)
        cpu_incident(nsettings, tenant, "db-9", start=now - 90)
        wait_for(lambda: len(rx.accepted) == 2, 30, what="web-9's open and resolve")
        time.sleep(0.3)
        hosts = {r["body"]["data"]["host"] for r in rx.accepted}
        assert hosts == {"web-9"}
    finally:
        w.stop()
        rx.close()


def test_maintenance_windows_are_not_learnt_live_nor_trained_on(nsettings, conn, tenant):
    from pipeline.embedded import EmbeddedPipeline
    from tests.integration.notify_support import event
    from training.replay import Events

    now = time.time()
    mw = new_silence(
        tenant,
        ["host=mw-1"],
        now=now,
        starts_at=now - 86400,
        schedule="0 * * * *",
        duration_s=3600,
        comment="always",
    )
    repo.add_silence(conn, mw)
    start = now - 1800
    evs = [
        event(tenant, h, "cpu_load", 20.0 + (i % 5), start + i * 10)
        for i in range(120)
        for h in ("mw-1", "ok-1")
    ]
    pipe = EmbeddedPipeline(nsettings)
    try:
        _, dead, _ = pipe.feed(evs)
        assert not dead
        det = pipe.stages.detect
        assert tenant in det.maintenance.windows
        n_mw = det.maintenance_windows
        assert n_mw >= 15  # mw-1's closed windows (20 min of them), scored and not learnt
        scored = conn.execute(
            "SELECT host, count(*) FROM scores WHERE tenant_id = %s GROUP BY host ORDER BY host",
            (tenant,),
        ).fetchall()
        assert dict(scored).get("mw-1", 0) >= n_mw  # still scored and stored
    finally:
        pipe.close()
    ev = Events.from_postgres(nsettings, tenant)
    assert set(ev.host.tolist()) == {"ok-1"}


def test_a_second_worker_stands_by_and_takes_over(nsettings, conn, tenant):
    rx = Receiver()
    rx.secret = channel(conn, tenant, "hook", "webhook", rx.url).secret
    w1 = WorkerThread(nsettings)
    wait_for(lambda: w1.w._lock_conn is not None, 10, what="the first worker leading")
    w2 = WorkerThread(nsettings)
    try:
        wait_for(lambda: w2.w._standing_by, 10, what="the second worker standing by")
        now = time.time()
        for i in range(3):
            cpu_incident(nsettings, tenant, f"ha-{i}", start=now - 100 + i * 10)
        wait_for(lambda: len(rx.accepted) == 6, 30, what="six deliveries")
        assert w2.w.stats.delivered == 0 and len(rx.requests) == 6
        w1.stop()
        cpu_incident(nsettings, tenant, "ha-9", start=now - 50)
        wait_for(lambda: len(rx.accepted) == 8, 30, what="the second worker delivering")
        assert w2.w.stats.delivered == 2 and len({r["id"] for r in rx.requests}) == 8
    finally:
        w1.stop()
        w2.stop()
        rx.close()
