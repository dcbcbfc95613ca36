"""A real Prometheus (scripts/services.sh prom-up) scrapes an exporter this test runs and
remote-writes what it scraped into EventOps (``POST /api/v1/write``): the samples arrive in
``metrics`` as the test's gauges and counter rates, in the key's tenant.
"""

from __future__ import annotations

import socket
import uuid

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pipeline.embedded import Bus
from storage.tenants import create_tenant
from tests.integration.api_support import Api, make_key
from tests.integration.conftest import wait_for
from tests.integration.test_prometheus import prometheus  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_remote_writes_scraped_samples_into_eventops(settings, conn, prometheus):  # noqa: F811
    prom_url, prom_conf = prometheus
    tenant = f"rw{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    key = make_key(conn, tenant, "ingest")
    reg = CollectorRegistry()
    temp = Gauge("rwtest_temperature_celsius", "a gauge", ["sensor"], registry=reg)
    temp.labels("s1").set(21.5)
    served = Counter("rwtest_requests", "a counter", registry=reg)  # exposed as _total
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    api = Api(settings, bus=Bus())
    job = f"rwtest-{uuid.uuid4().hex[:8]}"
    try:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            ],
            "remote_write": [
                {
                    "url": f"{api.url}/api/v1/write",
                    "authorization": {"credentials": key},
                    "queue_config": {"batch_send_deadline": "1s", "max_backoff": "1s"},
                    "remote_timeout": "5s",
                    "write_relabel_configs": [
                        {"source_labels": ["job"], "regex": job, "action": "keep"}
                    ],
                }
            ],
        }
        prom_conf.write_text(orjson.dumps(config).decode())  # JSON is YAML
        httpx.post(f"{prom_url}/-/reload", timeout=10).raise_for_status()

        def rows(metric: str) -> list[tuple]:
            return conn.execute(
                "SELECT host, value, tags FROM metrics WHERE tenant_id = %s AND metric = %s",
                (tenant, metric),
            ).fetchall()

        def counted() -> bool:
            served.inc(5)  # the counter keeps rising between scrapes
            return len(rows("rwtest_requests_total:rate")) >= 2

        got = wait_for(lambda: rows("rwtest_temperature_celsius"), 60, 0.5, "remote-written gauge")
        host, value, tags = got[0]
        assert host == f"127.0.0.1:{port}" and value == 21.5
        assert tags["job"] == job and tags["sensor"] == "s1"
        assert wait_for(counted, 60, 0.5, "the counter's rates")
        assert all(v >= 0 for _, v, _ in rows("rwtest_requests_total:rate"))
        # Prometheus' own series of the scrape (up, scrape_duration_seconds) came too
        assert wait_for(lambda: rows("up"), 30, 0.5, "the up series")
        # nothing of the test's tenant was dead-lettered (remote-write counts them per request)
        assert not conn.execute(
            "SELECT count(*) FROM dead_letters WHERE position(%s::bytea in raw) > 0",
            (tenant.encode(),),
        ).fetchone()[0]
    finally:
        # no more remote-write before the API goes: a reload stops the queue only once it has
        # flushed (or its flush deadline passed), which needs the receiver still up
        prom_conf.write_text(orjson.dumps({"scrape_configs": []}).decode())
        httpx.post(f"{prom_url}/-/reload", timeout=90).raise_for_status()
        api.stop()
        server.shutdown()
