"""Windows of quiet series close after an idle timeout in processing time, through the embedded
pipeline and a Kafka worker (real Kafka + PostgreSQL), and every scored window carries its band
and confidence into ``scores``, the API and SSE.

One host sends a few events and stops: no newer event will ever close its last window, yet
its score row appears within the timeout (``EVENTOPS_IDLE_CLOSE_WALL_S``). After a ``kill -9``
following that commit the restarted worker keeps the window closed: an event for it is
dead-lettered ``ts_too_old``, nothing is written twice.
"""

from __future__ import annotations

import math
import os
import signal
import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from pipeline import kafka as kq
from pipeline.embedded import EmbeddedPipeline
from storage.connect import count_rows
from tests.integration.api_support import hdr, make_key, raw_event
from tests.integration.conftest import consume_all, spawn_worker, wait_for

pytestmark = pytest.mark.integration

CHAIN = "normalize,enrich,detect,sink"
W, L = 5.0, 1.0  # short windows: the last one is due ~W + L after the last event at most


def quick(settings):
    return settings.model_copy(
        update={"window_s": W, "allowed_lateness_s": L, "idle_close_wall_s": 1.0}
    )


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def window_base() -> float:
    """A window start ~2 windows ago, so three events in two windows are all in the past."""
    return math.floor(time.time() / W) * W - 2 * W


def score_row(conn, tenant: str, host: str, start: float):
    return conn.execute(
        "SELECT score, confidence, warming, expected, typical_deviation FROM scores"
        " WHERE tenant_id = %s AND host = %s AND window_start = to_timestamp(%s)",
        (tenant, host, start),
    ).fetchone()


def test_embedded_quiet_host_gets_its_last_window_scored_by_processing_time(settings, conn, tenant):
    s = quick(settings)
    base = window_base()
    pipe = EmbeddedPipeline(s, source=f"idle-{tenant}")
    try:
        pipe.feed([raw_event(tenant, "quiet", v, ts=at(base + d)) for v, d in ((10, 1), (11, 6))])
        pipe.feed([raw_event(tenant, "quiet", 12, ts=at(base + 7))])
        # [base, base + 5) closed by the host's own clock; [base + 5, base + 10) waits
        assert score_row(conn, tenant, "quiet", base) is not None
        assert score_row(conn, tenant, "quiet", base + W) is None
        pipe.start_idle_close(every_s=0.2)
        row = wait_for(
            lambda: score_row(conn, tenant, "quiet", base + W),
            30,
            what="the last window's score, closed by processing time",
        )
        score, confidence, warming, _, _ = row
        assert 0 <= score <= 1 and warming is True and 0 <= confidence < 1
        assert pipe.stats.idle_closed == 1
        # the window is closed for good: an event for it now is late, the next window is open
        _, dead, _ = pipe.feed(
            [
                raw_event(tenant, "quiet", 13, ts=at(base + 9)),
                raw_event(tenant, "quiet", 14, ts=at(base + 11)),
            ]
        )
        assert [d.reason for d in dead] == ["ts_too_old"]
        assert count_rows(conn, "scores", "tenant_id = %s", (tenant,)) == 2
        wait_for(lambda: score_row(conn, tenant, "quiet", base + 2 * W), 30, what="next window")
    finally:
        pipe.close()
    assert count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 4


def test_kafka_worker_closes_a_quiet_partition_and_a_restart_keeps_it_closed(
    settings, conn, tenant, tmp_path
):
    s = quick(settings)
    base = window_base()
    key = f"{tenant}|quiet"
    p = kq.producer(s)
    raws = [raw_event(tenant, "quiet", v, ts=at(base + d)) for v, d in ((10, 1), (11, 6), (12, 7))]
    kq.produce_all(p, s.topic_raw, raws, [key] * 3)
    kq.flush(p)
    log = tmp_path / "worker.log"
    w = spawn_worker(s, CHAIN, log)
    try:
        wait_for(
            lambda: score_row(conn, tenant, "quiet", base + W) or w.poll() is not None,
            90,
            what="the last window's score, closed by processing time",
        )
        assert w.poll() is None, log.read_text()[-3000:]
        assert "windows closed by processing time" in log.read_text()
        # the idle close wrote its partition's checkpoint, at the offset after the 3 events
        cp = conn.execute(
            "SELECT partition, next_offset FROM checkpoints WHERE topic = %s", (s.topic_raw,)
        ).fetchall()
        assert [o for _, o in cp] == [3], cp
        os.kill(w.pid, signal.SIGKILL)  # right after that commit
        w.wait(10)
    finally:
        if w.poll() is None:
            w.kill()
    assert count_rows(conn, "scores", "tenant_id = %s", (tenant,)) == 2

    # a restart restores the advanced state: the closed window stays closed
    late, on_time = (
        raw_event(tenant, "quiet", 13, ts=at(base + 9)),
        raw_event(tenant, "quiet", 14, ts=at(base + 11)),
    )
    kq.produce_all(p, s.topic_raw, [late, on_time], [key] * 2)
    kq.flush(p)
    w = spawn_worker(s, CHAIN, log)
    try:
        wait_for(
            lambda: (
                count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 4
                or w.poll() is not None
            ),
            90,
            what="the on-time event stored",
        )
        assert w.poll() is None, log.read_text()[-3000:]
        (letter,) = consume_all(s, s.topic_dlq, 1, timeout=30)
        headers = dict(letter.headers())
        assert headers["reason"] == b"ts_too_old" and letter.value() == late
        wait_for(lambda: score_row(conn, tenant, "quiet", base + 2 * W), 60, what="next window")
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(30)
    rows = conn.execute(
        "SELECT extract(epoch FROM window_start)::float8 - %s, count(*) FROM scores"
        " WHERE tenant_id = %s GROUP BY 1 ORDER BY 1",
        (base, tenant),
    ).fetchall()
    assert rows == [(0.0, 1), (W, 1), (2 * W, 1)]  # each window once
    recs = [orjson.loads(m.value()) for m in consume_all(s, s.topic_score, 3, timeout=30)]
    assert {"typical_deviation", "confidence", "warming"} <= set(recs[0])


def test_scores_api_serves_band_confidence_and_warming_for_every_window(
    settings, conn, tenant, api_server
):
    """Every scored window with an expected value has a band (``lower``/``upper`` from the
    stored typical deviation, not only alerting windows), and the latest score's warming state
    reaches ``/series`` and ``/hosts``."""
    from pipeline.simulate import Simulator

    sim = Simulator(
        hosts=1, tenant=tenant, seed=4, interval=10, start=time.time() - 1800, anomaly_rate=0.0
    )
    pipe = EmbeddedPipeline(settings)
    try:
        for evs in sim.events(ticks=150):
            pipe.feed(evs)
    finally:
        pipe.close()
    host = sim.names[0]
    api = api_server()
    h = hdr(make_key(conn, tenant))
    r = httpx.get(f"{api.url}/series/{host}/cpu_load/scores", headers=h)
    assert r.status_code == 200, r.text
    rows = r.json()
    assert len(rows) >= 20
    assert all(0 <= x["confidence"] <= 1 and x["warming"] is (x["confidence"] < 1) for x in rows)
    banded = [x for x in rows if x["expected"] is not None and x["typical_deviation"] is not None]
    assert banded, "no window with an expected value and typical deviation"
    for x in banded:
        assert x["lower"] == pytest.approx(x["expected"] - 3 * x["typical_deviation"])
        assert x["upper"] == pytest.approx(x["expected"] + 3 * x["typical_deviation"])
    assert any(not x["explanation"] for x in banded)  # ok windows too, not only alerting ones
    stored = count_rows(
        conn, "scores", "tenant_id = %s AND typical_deviation IS NOT NULL", (tenant,)
    )
    assert stored >= len(banded)
    series = httpx.get(f"{api.url}/series/{host}/cpu_load", headers=h).json()
    assert series["score_warming"] is True and 0 <= series["score_confidence"] < 1
    (hst,) = [x for x in httpx.get(f"{api.url}/hosts", headers=h).json() if x["host"] == host]
    assert hst["warming"] == 4 and hst["confidence"] == pytest.approx(
        min(
            m["score_confidence"]
            for m in httpx.get(f"{api.url}/hosts/{host}", headers=h).json()["metrics"]
        )
    )
