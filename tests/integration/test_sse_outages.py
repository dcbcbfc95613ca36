"""The SSE broadcaster rides out outages (issue 8 item 3, "the same for the SSE broadcaster").

A private PostgreSQL and Kafka (``scripts/services.sh`` on free ports, in a temporary state
directory; the Kafka jars are reused from the session's services) are stopped and restarted
under a live API (Kafka mode) with streaming clients:

- Kafka restart: ``/readyz`` says the broadcaster is degraded, alerts stored meanwhile still
  reach the clients (feeds poll PostgreSQL), and after the restart the source reads again;
- PostgreSQL down: a stream rides out an outage shorter than ``EVENTOPS_SSE_DB_RETRY_S``; past
  it the stream ends with ``retry:`` + ``event: end`` (reason ``unavailable``), never a 500, and
  the client's resume with ``Last-Event-ID`` replays what it missed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from core.settings import REPO_ROOT
from pipeline import kafka as kq
from serving.config import ServingSettings
from storage.connect import connect
from storage.migrate import migrate
from storage.sink import Sink
from storage.tenants import create_tenant
from tests.integration.api_support import Api, alert_event, hdr, make_key
from tests.integration.conftest import SseClient, wait_for

pytestmark = pytest.mark.integration

SERVICES = REPO_ROOT / "scripts" / "services.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Private:
    """A PostgreSQL + Kafka of this module only."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {
            **os.environ,
            "EVENTOPS_STATE_DIR": str(state),
            "EVENTOPS_PG_PORT": str(free_port()),
            "EVENTOPS_KAFKA_PORT": str(free_port()),
            "EVENTOPS_KAFKA_CONTROLLER_PORT": str(free_port()),
            "EVENTOPS_ALERTMANAGER_PORT": str(free_port()),
            "EVENTOPS_PROMETHEUS_PORT": str(free_port()),
            "EVENTOPS_KAFKA_HEAP": "384m",
        }
        shared = Path(os.environ.get("EVENTOPS_STATE_DIR", REPO_ROOT / ".services")) / "kafka"
        if (shared / "libs.sha256").exists():  # no second download from Maven Central
            (state / "kafka").mkdir(parents=True)
            (state / "kafka" / "libs").symlink_to(shared / "libs")
            shutil.copy(shared / "libs.sha256", state / "kafka" / "libs.sha256")

    def run(self, cmd: str) -> None:
        out = subprocess.run(
            ["bash", str(SERVICES), cmd], env=self.env, capture_output=True, text=True, timeout=240
        )
        assert out.returncode == 0, f"services.sh {cmd}: {out.stderr[-2000:]}"


@pytest.fixture(scope="module")
def private(base_settings):
    # not under pytest's tmp dir: pytest (any session on the machine) resets its root to 0700,
    # and the postgres OS user must keep reaching the data directory
    state = Path(tempfile.mkdtemp(prefix="eventops-sse-outage-"))
    state.chmod(0o755)
    p = Private(state)
    try:
        p.run("up")
        s = base_settings.model_copy(
            update={
                "pg_port": int(p.env["EVENTOPS_PG_PORT"]),
                "pg_database": "eventops",
                "kafka_bootstrap": f"127.0.0.1:{p.env['EVENTOPS_KAFKA_PORT']}",
                "topic_partitions": 3,
                "sse_heartbeat_s": 0.5,
            }
        )
        with connect(s) as conn:
            migrate(conn)
        kq.wait_for_broker(s, timeout=60)
        yield p, s
    finally:
        p.run("down")
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def world(private):
    p, base = private
    sfx = uuid.uuid4().hex[:8]
    s = base.model_copy(update={"topic_alert": f"o-{sfx}-alert"})
    kq.create_topics(s, [s.topic_alert])
    conn = connect(s, autocommit=True)
    tenant = f"to{sfx}"
    create_tenant(conn, tenant)
    yield p, s, conn, tenant, make_key(conn, tenant)
    conn.close()


def store(s, tenant: str, n: int, publish: bool) -> list[int]:
    """``n`` transitions stored like the sink does; published to the alert topic (outbox) if
    asked."""
    ts = datetime.now(UTC)
    events = [
        alert_event(tenant, f"h{uuid.uuid4().hex[:6]}", ts=ts + timedelta(milliseconds=i))
        for i in range(n)
    ]
    from core.batch import MetricBatch

    with connect(s) as c:
        _, stored = Sink(c).write(MetricBatch.empty(), events)
        if publish:
            p = kq.producer(s)
            kq.produce_all(
                p,
                s.topic_alert,
                [kq.encode_alert(a) for a in stored],
                [a.partition_key for a in stored],
            )
            kq.flush(p)
            Sink(c).mark_published([a.seq for a in stored])
    return [a.seq for a in stored]


def readyz(api: Api) -> dict:
    try:
        return httpx.get(api.url + "/readyz", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def alert_ids(c: SseClient) -> list[int]:
    return [int(e["id"]) for e in c.events if e["event"] == "alert"]


def test_broadcaster_survives_a_kafka_restart_and_alerts_keep_flowing(world):
    p, s, conn, tenant, key = world
    api = Api(s, serving=ServingSettings(rate_limit_rps=0, auth_cache_s=0.5, _env_file=None))
    try:
        c = SseClient(api.url + "/alerts/stream", headers=hdr(key))
        assert c.connected.wait(10)
        first = store(s, tenant, 5, publish=True)
        wait_for(lambda: len(alert_ids(c)) == 5, 15, what="alerts before the outage")

        p.run("kafka-down")
        wait_for(
            lambda: readyz(api).get("checks", {}).get("broadcaster", "").startswith("degraded"),
            30,
            interval=0.5,
            what="/readyz to show the broadcaster degraded",
        )
        body = readyz(api)
        assert body["status"] == "degraded" and body["checks"]["postgres"] == "ok"
        during = store(s, tenant, 5, publish=False)  # the outbox holds them; streams still see them
        wait_for(lambda: len(alert_ids(c)) == 10, 15, what="alerts stored while Kafka is down")

        p.run("kafka-up")
        wait_for(
            lambda: readyz(api).get("status") == "ok",
            60,
            interval=0.5,
            what="/readyz ok after the broker is back",
        )
        after = store(s, tenant, 5, publish=True)
        wait_for(lambda: len(alert_ids(c)) == 15, 30, what="alerts after the restart")
        time.sleep(0.5)  # nothing more (no duplicate) arrives
        c.close()
        assert alert_ids(c) == first + during + after
        assert c.thread.is_alive() or c.error is None
    finally:
        api.stop()


def test_stream_rides_out_a_short_postgres_outage_and_closes_with_a_retry_hint_past_the_limit(
    world,
):
    p, s, conn, tenant, key = world
    api = Api(
        s,
        serving=ServingSettings(
            rate_limit_rps=0,
            auth_cache_s=0.5,
            sse_db_retry_s=60,
            sse_auth_check_s=0.5,
            _env_file=None,
        ),
    )
    brief = Api(
        s,
        serving=ServingSettings(
            rate_limit_rps=0,
            auth_cache_s=0.5,
            sse_db_retry_s=2,
            sse_auth_check_s=0.5,
            _env_file=None,
        ),
    )
    try:
        patient = SseClient(api.url + "/alerts/stream", headers=hdr(key))
        hasty = SseClient(brief.url + "/alerts/stream", headers=hdr(key))
        assert patient.connected.wait(10) and hasty.connected.wait(10)
        first = store(s, tenant, 3, publish=True)
        wait_for(
            lambda: len(alert_ids(patient)) == 3 and len(alert_ids(hasty)) == 3,
            15,
            what="alerts before the outage",
        )
        conn.close()

        p.run("pg-down")
        t0 = time.monotonic()
        # past EVENTOPS_SSE_DB_RETRY_S=2 the stream says so and closes (no 500, no broken frame)
        wait_for(
            lambda: not hasty.thread.is_alive(), 20, what="the stream to close with a retry hint"
        )
        assert (
            hasty.events[-1]["event"] == "end"
            and hasty.events[-1]["data"]["reason"] == "unavailable"
        )
        assert hasty.error is None
        closed_after = time.monotonic() - t0
        # new streams and readiness answer 503 while PostgreSQL is down, never 500
        r = httpx.get(
            brief.url + "/alerts/stream",
            headers={**hdr(key), "Last-Event-ID": str(first[-1])},
            timeout=30,
        )
        assert r.status_code == 503, (r.status_code, r.text)
        assert httpx.get(api.url + "/readyz", timeout=30).status_code == 503

        p.run("pg-up")
        down_s = time.monotonic() - t0
        wait_for(
            lambda: readyz(api).get("status") == "ok", 60, interval=0.5, what="/readyz ok again"
        )
        more = store(s, tenant, 4, publish=True)
        wait_for(
            lambda: len(alert_ids(patient)) == 7, 30, what="the patient stream after the outage"
        )
        assert alert_ids(patient) == first + more
        assert patient.thread.is_alive(), "the stream should have ridden out the outage"
        patient.close()

        # the closed client resumes from its Last-Event-ID and misses nothing
        resumed = SseClient(
            brief.url + "/alerts/stream", headers={**hdr(key), "Last-Event-ID": str(first[-1])}
        )
        wait_for(lambda: len(alert_ids(resumed)) == 4, 15, what="the resumed stream")
        resumed.close()
        assert alert_ids(resumed) == more
        print(
            f"PostgreSQL down {down_s:.1f}s; the 2 s-limit stream closed after {closed_after:.1f}s"
        )
    finally:
        api.stop()
        brief.stop()
