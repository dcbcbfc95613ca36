"""Worker health state, the outage retry policy, the health endpoints and error classification."""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from confluent_kafka import KafkaError
from psycopg_pool import PoolTimeout

from core.errors import ServiceError
from pipeline.health import Backoff, Health, HealthServer
from pipeline.outages import kafka_transient, pg_unavailable
from serving.health import DatabaseUnavailable, is_outage


def test_backoff_grows_exponentially_with_jitter_and_every_wait_is_capped():
    b = Backoff(0.2, 5.0, rng=random.Random(7))
    waits = [b.next() for _ in range(12)]
    assert all(0.1 <= w <= 5.0 for w in waits)
    assert waits[0] <= 0.2 and waits[3] >= 0.8  # 0.2 * 2**3 / 2
    assert all(2.5 <= w <= 5.0 for w in waits[6:])  # capped, still jittered
    assert len({round(w, 6) for w in waits[6:]}) > 1
    b.reset()
    assert b.next() <= 0.2


def test_backoff_refuses_a_cap_below_the_first_wait():
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


def test_health_logs_each_state_change_once_not_each_retry(caplog):
    h = Health()
    assert h.status == "starting" and h.readiness()["checks"]["kafka"] == "starting"
    h.set_ready()
    assert h.status == "ok"
    with caplog.at_level(logging.INFO, logger="pipeline.health"):
        for _ in range(50):
            h.degraded("postgres", "sink write: AdminShutdown")
        assert h.status == "degraded" and h.is_degraded("postgres") and not h.is_degraded("kafka")
        body = h.readiness()
        assert body["checks"] == {"postgres": "degraded: sink write: AdminShutdown", "kafka": "ok"}
        assert body["degraded_for_s"] >= 0
        took = h.recovered("postgres")
        assert took is not None and took >= 0 and h.status == "ok"
        assert h.recovered("postgres") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if m.startswith("degraded:")]) == 1
    assert len([m for m in lines if m.startswith("recovered:")]) == 1
    assert "(50 retries)" in [m for m in lines if m.startswith("recovered:")][0]
    assert [s for _, s in h.transitions] == ["starting", "ok", "degraded", "ok"]


def test_health_server_serves_liveness_and_readiness():
    h = Health(stall_s=0.5)
    srv = HealthServer(h, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{srv.port}"

    def get(path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(url + path, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        assert get("/readyz") == (
            503,
            {"status": "starting", "checks": {"postgres": "ok", "kafka": "starting"}},
        )
        h.set_ready()
        assert get("/readyz")[0] == 200
        h.degraded("kafka", "offset commit: _WAIT_COORD")
        code, body = get("/readyz")
        assert code == 503 and body["status"] == "degraded"
        assert body["checks"]["kafka"] == "degraded: offset commit: _WAIT_COORD"
        h.beat()
        assert get("/healthz")[0] == 200
        time.sleep(0.6)  # longer than stall_s without a beat
        assert get("/healthz") == (
            503,
            {"status": "stalled", "loop_age_s": pytest.approx(0.6, abs=0.5)},
        )
        assert get("/nope")[0] == 404
    finally:
        srv.stop()


def test_postgres_errors_that_are_outages_and_those_that_are_not():
    assert pg_unavailable(psycopg.errors.AdminShutdown("terminating connection"))
    assert pg_unavailable(psycopg.OperationalError("connection refused"))
    assert pg_unavailable(psycopg.InterfaceError("the connection is closed"))
    try:
        raise ServiceError("PostgreSQL not reachable") from psycopg.OperationalError("refused")
    except ServiceError as e:
        assert pg_unavailable(e)
    assert not pg_unavailable(ServiceError("Kafka delivery failed"))
    assert not pg_unavailable(psycopg.errors.UniqueViolation("duplicate key"))
    assert not pg_unavailable(psycopg.errors.InvalidTextRepresentation("bad input"))
    assert pg_unavailable(psycopg.errors.DiskFull("no space left"))
    assert pg_unavailable(psycopg.errors.DeadlockDetected("deadlock"))
    assert pg_unavailable(psycopg.errors.CannotConnectNow("starting up"))
    # same input, same failure: not waited out forever
    assert not pg_unavailable(psycopg.errors.ProgramLimitExceeded("index row size exceeds"))
    assert not pg_unavailable(ValueError("a bug"))


def test_kafka_errors_waited_out_and_those_raised():
    assert kafka_transient(KafkaError(KafkaError._WAIT_COORD))
    assert kafka_transient(KafkaError(KafkaError._TRANSPORT))
    assert kafka_transient(KafkaError(KafkaError.NOT_COORDINATOR))
    assert not kafka_transient(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    assert not kafka_transient(KafkaError(KafkaError._WAIT_COORD, fatal=True))
    assert not kafka_transient(None)


def test_api_trips_its_breaker_on_connection_loss_not_on_a_failed_statement():
    assert is_outage(PoolTimeout("couldn't get a connection"))
    assert is_outage(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_outage(psycopg.OperationalError("connection refused"))  # no SQLSTATE: client side
    assert not is_outage(psycopg.errors.QueryCanceled("statement timeout"))
    assert not is_outage(psycopg.errors.DeadlockDetected("deadlock"))
    assert not is_outage(DatabaseUnavailable("already known"))
    assert not is_outage(ValueError("x"))


def test_health_server_serves_the_prometheus_exposition():
    srv = HealthServer(Health(), "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert b"eventops_build_info{" in r.read()
    finally:
        srv.stop()
