"""A real Prometheus server (scripts/services.sh prom-up) scrapes the API's exposition.

Events go in through ``POST /ingest`` (embedded pipeline) so windows get scored; Prometheus is
pointed at ``/prometheus/metrics`` and ``/prometheus/scores`` (bearer key of one tenant) by
rewriting its config and ``POST /-/reload``; its query API then returns that tenant's scored
series, never another tenant's, and the API's request counters by route template.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.embedded import Bus
from storage.tenants import create_tenant
from tests.integration.api_support import Api, alert_event, hdr, make_key, store_alerts
from tests.integration.conftest import wait_for

HOSTS = ("web-1", "web-2")
METRICS = ("cpu_load", "mem_used")


@pytest.fixture
def prometheus() -> tuple[str, Path]:
    url = os.environ.get("EVENTOPS_PROMETHEUS_URL")
    conf = os.environ.get("EVENTOPS_PROMETHEUS_CONFIG")
    if not url or not conf:
        pytest.fail("EVENTOPS_PROMETHEUS_URL/CONFIG not set: `make services-up` starts Prometheus")
    try:
        httpx.get(f"{url}/-/ready", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        pytest.fail(f"Prometheus not ready at {url} ({e}); scripts/services.sh prom-up")
    path = Path(conf)
    original = path.read_text()
    yield url, path
    path.write_text(original)
    httpx.post(f"{url}/-/reload", timeout=10).raise_for_status()


def _events(tenant: str, n: int = 50) -> list[dict]:
    """``n`` samples 10 s apart per series, ending now: closed, scored windows."""
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for i in range(n):
        ts = (now - timedelta(seconds=10 * (n - 1 - i))).isoformat().replace("+00:00", "Z")
        for h in HOSTS:
            for m in METRICS:
                out.append(
                    {
                        "tenant_id": tenant,
                        "host": h,
                        "metric": m,
                        "value": 40 + (i % 5),
                        "ts_event": ts,
                        "unit": "percent",
                    }  # fmt: skip
                )
    return out


def _ingest(api: Api, key: str, events: list[dict]) -> dict:
    r = httpx.post(
        f"{api.url}/ingest",
        content=orjson.dumps(events),
        headers={**hdr(key), "content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    return r.json()


def _samples(body: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]


def _query(url: str, q: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": q}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_health_and_the_callers_scores(settings, conn, prometheus):
    prom_url, prom_conf = prometheus
    mine, other = f"tn{uuid.uuid4().hex[:8]}", f"tn{uuid.uuid4().hex[:8]}"
    for t in (mine, other):
        create_tenant(conn, t)
    read_mine, read_other = make_key(conn, mine), make_key(conn, other)
    api = Api(settings, bus=Bus())
    try:
        for t in (mine, other):
            got = _ingest(api, make_key(conn, t, "ingest"), _events(t))
            assert got["stored"] == len(HOSTS) * len(METRICS) * 50, got
        # an open alert of mine (as the detect stage would have stored it)
        store_alerts(settings, [alert_event(mine, "web-1", "cpu_load")])

        # the endpoints themselves: no key for health, the key's tenant only for scores
        health = httpx.get(f"{api.url}/prometheus/metrics", timeout=10)
        assert health.status_code == 200 and health.headers["content-type"].startswith("text/plain")
        assert _samples(health.text, "eventops_events_stored_total")
        assert httpx.get(f"{api.url}/prometheus/scores", timeout=10).status_code == 401
        # the MVP's data routes are still there
        assert httpx.get(f"{api.url}/metrics/latest", timeout=10).status_code in (401, 422)
        r = httpx.get(f"{api.url}/prometheus/scores", headers=hdr(read_mine), timeout=10)
        assert r.status_code == 200, r.text
        scores = _samples(r.text, "eventops_anomaly_score")
        want = {(h, m) for h in HOSTS for m in METRICS}
        assert {(s.labels["host"], s.labels["metric"]) for s in scores} == want
        assert {s.labels["tenant"] for s in scores} == {mine}
        assert all(0 <= s.value <= 1 for s in scores)
        assert other not in r.text
        theirs = httpx.get(f"{api.url}/prometheus/scores", headers=hdr(read_other), timeout=10)
        assert {s.labels["tenant"] for s in _samples(theirs.text, "eventops_anomaly_score")} == {
            other
        }
        assert mine not in theirs.text  # not even my open alert
        opened = _samples(r.text, "eventops_alert_open")
        assert [(s.labels["host"], s.labels["severity"], s.value) for s in opened] == [
            ("web-1", "critical", 1)
        ]
        counts = {s.labels["severity"]: s.value for s in _samples(r.text, "eventops_alerts_open")}
        assert counts == {"critical": 1, "warning": 0}
        assert _samples(r.text, "eventops_anomaly_score_series_truncated")[0].value == 0
        # a request with path parameters, to find under its route template
        assert (
            httpx.get(
                f"{api.url}/series/web-1/cpu_load/scores", headers=hdr(read_mine), timeout=10
            ).status_code
            == 200
        )

        # the real Prometheus scrapes both, every second
        job = f"eventops-{uuid.uuid4().hex[:8]}"
        target = f"127.0.0.1:{api.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"{job}-health",
                    "metrics_path": "/prometheus/metrics",
                    "static_configs": [{"targets": [target]}],
                },
                {
                    "job_name": f"{job}-scores",
                    "metrics_path": "/prometheus/scores",
                    "authorization": {"credentials": read_mine},
                    "static_configs": [{"targets": [target]}],
                },
            ],
        }
        prom_conf.write_text(orjson.dumps(config).decode())  # JSON is YAML
        httpx.post(f"{prom_url}/-/reload", timeout=10).raise_for_status()

        def scored() -> list[dict]:
            res = _query(prom_url, f'eventops_anomaly_score{{job="{job}-scores"}}')
            return res if len(res) == len(want) else []

        res = wait_for(scored, 60, 0.5, "Prometheus to return the scored series")
        assert {(x["metric"]["host"], x["metric"]["metric"]) for x in res} == want
        assert {x["metric"]["tenant"] for x in res} == {mine}
        assert not _query(prom_url, f'eventops_anomaly_score{{tenant="{other}"}}')
        assert wait_for(
            lambda: _query(prom_url, f'eventops_alert_open{{job="{job}-scores",tenant="{mine}"}}'),
            30,
            0.5,
            "the open alert in Prometheus",
        )

        def requests_counted() -> list[dict]:
            return _query(
                prom_url,
                f'eventops_http_requests_total{{job="{job}-health",'
                f'route="/series/{{host}}/{{metric}}/scores",method="GET",status="200"}}',
            )

        assert wait_for(requests_counted, 30, 0.5, "eventops_http_requests_total in Prometheus")
        assert _query(
            prom_url,
            f'eventops_events_stored_total{{job="{job}-health",runner="embedded"}}',
        )
        # the targets are healthy (the bearer key was accepted)
        targets = httpx.get(f"{prom_url}/api/v1/targets", timeout=10).json()["data"]
        mine_t = [t for t in targets["activeTargets"] if t["labels"]["job"].startswith(job)]
        assert len(mine_t) == 2 and all(t["health"] == "up" for t in mine_t), mine_t
    finally:
        api.stop()


def test_sse_clients_are_counted_while_connected(settings, conn, tenant):
    key = make_key(conn, tenant)
    api = Api(settings, bus=Bus())

    def clients() -> float:
        body = httpx.get(f"{api.url}/prometheus/metrics", timeout=10).text
        return sum(s.value for s in _samples(body, "eventops_sse_clients"))

    try:
        base = clients()
        with httpx.Client(timeout=10) as c:
            streams = [
                c.stream("GET", f"{api.url}/alerts/stream?key={key}"),
                c.stream("GET", f"{api.url}/alerts/stream", headers=hdr(key)),
            ]
            frames = []  # kept: a dropped iterator closes its response (a disconnect)
            for st in streams:
                r = st.__enter__()
                assert r.status_code == 200
                frames.append(r.iter_bytes())
                assert b"connected" in next(frames[-1])  # the stream runs: its first frame
            wait_for(lambda: clients() == base + 2, 10, 0.1, "2 SSE clients counted")
            for st in streams:
                st.__exit__(None, None, None)
        wait_for(lambda: clients() == base, 30, 0.2, "the SSE clients gone from the gauge")
    finally:
        api.stop()
