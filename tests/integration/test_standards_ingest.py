"""OTLP/HTTP and Prometheus remote-write into EventOps (issue 12): a real OpenTelemetry SDK
exporting into the API, remote-write bodies built as Prometheus builds them, both modes
(embedded: stored before the answer; Kafka: validated, then the raw topic and the DLQ), and
bad input through both endpoints — 4xx with a message or a dead letter with a reason, never a
5xx, nothing lost.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import time
import uuid
from collections import Counter

import cramjam
import httpx
import pytest

from pipeline.adapters import remote_write as rw
from pipeline.embedded import Bus
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, hdr, make_key
from tests.integration.conftest import consume_all, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def w(base_settings, test_db):
    # short windows closed by the idle clock, so a test sees its points scored within seconds
    s = base_settings.model_copy(
        update={
            "pg_database": test_db,
            "window_s": 2.0,
            "allowed_lateness_s": 5.0,
            "idle_close_wall_s": 1.0,
        }
    )
    conn = connect(s, autocommit=True)
    tenant = f"std{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    api = Api(s, bus=Bus())
    api.s, api.conn, api.tenant = s, conn, tenant
    api.ingest, api.read = make_key(conn, tenant, "ingest"), make_key(conn, tenant, "read")
    api.c = httpx.Client(base_url=api.url, timeout=60)
    yield api
    api.c.close()
    api.stop()
    conn.close()


def _rows(w, sql: str, *args):
    return w.conn.execute(sql, args).fetchall()


def _dead(w, since: int):
    return _rows(
        w,
        "SELECT reason, raw FROM dead_letters WHERE id > %s ORDER BY id",
        since,
    )


def _last_dead(w) -> int:
    return _rows(w, "SELECT coalesce(max(id), 0) FROM dead_letters")[0][0]


# --- OTLP: the real OpenTelemetry SDK -----------------------------------------------------------


def test_otel_sdk_gauges_counters_and_a_histogram_arrive_are_scored_and_a_spike_alerts(w):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    host = f"otel-{uuid.uuid4().hex[:6]}"
    exporter = OTLPMetricExporter(
        endpoint=w.url + "/v1/metrics",
        headers={"Authorization": f"Bearer {w.ingest}"},
        compression=Compression.Gzip,
        timeout=30,
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"host.name": host, "service.name": "checkout"}),
    )
    meter = provider.get_meter("eventops-test")
    cpu = meter.create_gauge("cpu_load", unit="%")
    requests = meter.create_counter("http.requests", unit="{request}")
    latency = meter.create_histogram("http.duration", unit="ms")
    try:
        for i in range(6):  # six exports, one every ~0.5 s: a normal level, then a spike
            cpu.set(95.0 if i == 5 else 20.0 + i, {"core": "0"})
            requests.add(10 + i, {"route": "/pay"})
            for v in (5, 7, 9, 12, 40):
                latency.record(v + i, {"route": "/pay"})
            assert provider.force_flush(30_000)
            time.sleep(0.5)  # spaces the exports' timestamps (the rates need time to pass)
    finally:
        provider.shutdown()

    got = dict(
        _rows(
            w,
            "SELECT metric, count(*) FROM metrics WHERE tenant_id = %s AND host = %s "
            "GROUP BY metric",
            w.tenant,
            host,
        )
    )
    # one point per export (shutdown exports once more: the gauge's last value, no new
    # observations, so no quantile for that interval)
    exports = got.get("cpu_load", 0)
    assert exports in (6, 7), got
    # the cumulative counter as a rate: the first export has its start time, so every export
    assert got.get("http.requests:rate") == exports, got
    for m in ("http.duration:count_rate", "http.duration:sum_rate"):
        assert got.get(m) == exports, (m, got)
    for m in ("http.duration:p50", "http.duration:p90", "http.duration:p99"):
        assert got.get(m) == 6, (m, got)
    tags = _rows(
        w,
        "SELECT tags FROM metrics WHERE tenant_id = %s AND host = %s AND metric = 'cpu_load' "
        "LIMIT 1",
        w.tenant,
        host,
    )[0][0]
    assert tags["service.name"] == "checkout" and tags["core"] == "0" and "host.name" not in tags
    p50 = [
        r[0]
        for r in _rows(
            w,
            "SELECT value FROM metrics WHERE tenant_id = %s AND host = %s "
            "AND metric = 'http.duration:p50' ORDER BY ts_event",
            w.tenant,
            host,
        )
    ]
    assert all(0.005 <= v <= 0.02 for v in p50), p50  # ms scaled to seconds by normalize

    # the spike opened the cpu_load rule's alert
    def alert():
        return _rows(
            w,
            "SELECT severity FROM alerts WHERE tenant_id = %s AND host = %s "
            "AND metric = 'cpu_load'",
            w.tenant,
            host,
        )

    assert wait_for(lambda: alert(), timeout=30), "no alert for the spike"
    assert alert()[0][0] == "critical"

    # and the series' windows are scored (closed by the idle clock)
    def scored():
        return _rows(
            w,
            "SELECT count(*) FROM scores WHERE tenant_id = %s AND host = %s "
            "AND metric = 'cpu_load'",
            w.tenant,
            host,
        )[0][0]

    assert wait_for(lambda: scored() > 0, timeout=30), "the cpu_load windows were not scored"


def _otlp_json(host: str, points: list[dict], name="temp", kind="gauge") -> bytes:
    data = {"dataPoints": points}
    if kind == "sum":
        data |= {"aggregationTemporality": 2, "isMonotonic": True}
    return json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {
                        "attributes": [{"key": "host.name", "value": {"stringValue": host}}]
                    },
                    "scopeMetrics": [{"metrics": [{"name": name, "unit": "1", kind: data}]}],
                }
            ]
        }
    ).encode()


def _now_ns() -> int:
    return time.time_ns()


def test_otlp_json_partial_success_counts_the_dead_lettered_points(w):
    host = f"oj-{uuid.uuid4().hex[:6]}"
    t = _now_ns()
    far = t + 10 * 86400 * 10**9  # ten days ahead: beyond the accepted skew
    body = _otlp_json(
        host,
        [
            {"timeUnixNano": str(t), "asDouble": 1.5},
            {"timeUnixNano": str(t + 10**9), "asDouble": "NaN"},
            {"timeUnixNano": str(far), "asDouble": 2.0},
            {
                "timeUnixNano": str(t + 2 * 10**9),
                "asDouble": 3.0,
                "attributes": [
                    {"key": f"k{i}", "value": {"stringValue": "v"}} for i in range(10_000)
                ],
            },
        ],
    )
    before = _last_dead(w)
    r = w.c.post(
        "/v1/metrics",
        content=body,
        headers={**hdr(w.ingest), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    ps = r.json()["partialSuccess"]
    assert int(ps["rejectedDataPoints"]) == 3, ps
    assert "non_finite" in ps["errorMessage"] and "ts_out_of_range" in ps["errorMessage"]
    assert "too_many_tags" in ps["errorMessage"]
    n = _rows(w, "SELECT count(*) FROM metrics WHERE tenant_id = %s AND host = %s", w.tenant, host)[
        0
    ][0]
    dead = _dead(w, before)
    assert n == 1 and sorted(d[0] for d in dead) == [
        "non_finite",
        "too_many_tags",
        "ts_out_of_range",
    ]
    assert all(host.encode() in bytes(d[1]) for d in dead)  # the event is the letter's bytes


def test_otlp_retry_of_the_same_request_stores_each_point_once(w):
    host = f"or-{uuid.uuid4().hex[:6]}"
    t = _now_ns()
    body = gzip.compress(
        _otlp_json(
            host,
            [
                {"timeUnixNano": str(t - 10**9), "asInt": "5"},
                {"timeUnixNano": str(t), "asInt": "9"},
            ],
        )
    )
    for _ in range(2):
        r = w.c.post(
            "/v1/metrics",
            content=body,
            headers={
                **hdr(w.ingest),
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
        )
        assert r.status_code == 200 and "partialSuccess" not in r.json(), r.text
    vals = _rows(
        w,
        "SELECT value FROM metrics WHERE tenant_id = %s AND host = %s ORDER BY ts_event",
        w.tenant,
        host,
    )
    assert [v[0] for v in vals] == [5.0, 9.0]


@pytest.mark.parametrize(
    ("ctype", "encoding", "body", "status"),
    [
        ("application/x-protobuf", None, b"\xff\xff\xff\xff\x0f", 400),
        ("application/json", None, b"{not json", 400),
        ("application/json", None, b'{"resourceMetrics": 7}', 400),
        ("application/x-protobuf", "gzip", b"not gzip at all", 400),
        ("application/x-protobuf", "br", b"", 415),
        ("text/plain", None, b"x", 415),
        ("application/x-protobuf", "gzip", gzip.compress(b"\0" * 20_000_000), 413),
    ],
)
def test_otlp_bad_bodies_are_4xx_with_a_status_message(w, ctype, encoding, body, status):
    headers = {**hdr(w.ingest), "Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
    r = w.c.post("/v1/metrics", content=body, headers=headers)
    assert r.status_code == status, r.text
    if ctype == "application/json":
        assert r.json()["message"] and r.json()["code"]
    else:
        assert r.content  # a google.rpc.Status with the message
        assert b"\x12" in r.content[:3] or r.status_code == 415


def test_otlp_without_an_ingest_key_is_refused(w):
    r = w.c.post(
        "/v1/metrics",
        content=_otlp_json("x", []),
        headers={**hdr(w.read), "Content-Type": "application/json"},
    )
    assert r.status_code == 403
    r = w.c.post("/v1/metrics", content=b"", headers={"Content-Type": "application/json"})
    assert r.status_code == 401


# --- remote-write --------------------------------------------------------------------------------


def _write_request(series: list[tuple[dict, list[tuple[float, int]]]]) -> bytes:
    req = rw.WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for k in sorted(labels):
            lb = ts.labels.add()
            lb.name, lb.value = k, labels[k]
        for v, t in samples:
            s = ts.samples.add()
            s.value, s.timestamp = v, t
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def _post_write(w, body: bytes, ctype="application/x-protobuf", encoding="snappy"):
    headers = {**hdr(w.ingest), "Content-Type": ctype, "X-Prometheus-Remote-Write-Version": "0.1.0"}
    if encoding:
        headers["Content-Encoding"] = encoding
    return w.c.post("/api/v1/write", content=body, headers=headers)


def test_remote_write_gauges_and_counters_as_rates(w):
    inst = f"rw-{uuid.uuid4().hex[:6]}:9100"
    ms = int(time.time() * 1000) - 60_000
    body = _write_request(
        [
            (
                {"__name__": "node_load1", "instance": inst, "job": "node"},
                [(0.5, ms), (0.7, ms + 15_000)],
            ),
            (
                {
                    "__name__": "node_network_receive_bytes_total",
                    "instance": inst,
                    "device": "eth0",
                },
                [(1000.0, ms), (4000.0, ms + 15_000), (100.0, ms + 30_000)],  # then a reset
            ),
        ]
    )
    r = _post_write(w, body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["accepted"], got["skipped"], got["stored"], got["dead_lettered"]) == (5, 1, 4, 0)
    rows = _rows(
        w,
        "SELECT metric, value, tags FROM metrics WHERE tenant_id = %s AND host = %s "
        "ORDER BY metric, ts_event",
        w.tenant,
        inst,
    )
    assert [(m, round(v, 3)) for m, v, _ in rows] == [
        ("node_load1", 0.5),
        ("node_load1", 0.7),
        ("node_network_receive_bytes_total:rate", 200.0),
        ("node_network_receive_bytes_total:rate", round(100.0 / 15, 3)),
    ]
    assert rows[0][2] == {"job": "node"} and rows[2][2] == {"device": "eth0"}


def test_remote_write_bad_samples_are_dead_lettered_with_reasons(w):
    inst = f"rwbad-{uuid.uuid4().hex[:6]}"
    ms = int(time.time() * 1000)
    stale = struct.unpack("<d", struct.pack("<Q", rw.STALE_NAN))[0]
    many = {f"l{i}": "v" for i in range(10_000)}
    body = _write_request(
        [
            ({"__name__": "ok_gauge", "instance": inst}, [(1.0, ms)]),
            ({"__name__": "nan_gauge", "instance": inst}, [(math.nan, ms), (stale, ms + 1)]),
            ({"__name__": "future_gauge", "instance": inst}, [(1.0, ms + 86_400_000 * 30)]),
            ({"__name__": "wide", "instance": inst, **many}, [(1.0, ms)]),
            ({"instance": inst}, [(1.0, ms)]),  # no metric name
        ]
    )
    before = _last_dead(w)
    r = _post_write(w, body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["skipped"] == 1 and got["stored"] == 1 and got["dead_lettered"] == 4, got
    assert got["reasons"] == {
        "non_finite": 1,
        "ts_out_of_range": 1,
        "too_many_tags": 1,
        "missing_field": 1,
    }
    assert len(_dead(w, before)) == 4


@pytest.mark.parametrize(
    ("body", "ctype", "encoding", "status"),
    [
        (b"\x00\x01\x02 corrupt snappy", "application/x-protobuf", "snappy", 400),
        (bytes(cramjam.snappy.compress_raw(b"\xff" * 50)), "application/x-protobuf", "snappy", 400),
        (b"", "application/json", "snappy", 415),
        (b"", "application/x-protobuf", None, 415),
        (
            bytes(cramjam.snappy.compress_raw(b"\0" * 20_000_000)),
            "application/x-protobuf",
            "snappy",
            413,
        ),
    ],
)
def test_remote_write_bad_bodies_are_4xx_with_a_message(w, body, ctype, encoding, status):
    r = _post_write(w, body, ctype=ctype, encoding=encoding)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


# --- Kafka mode -----------------------------------------------------------------------------------


def test_kafka_mode_validates_then_queues_valid_points_and_dead_letters_the_rest(
    api_server, settings, conn, tenant
):
    api = api_server()  # no bus: Kafka mode
    key = make_key(conn, tenant, "ingest")
    ms = int(time.time() * 1000)
    body = _write_request(
        [
            ({"__name__": "q_gauge", "instance": "kq-1"}, [(1.0, ms), (2.0, ms + 1000)]),
            ({"__name__": "q_nan", "instance": "kq-1"}, [(math.nan, ms)]),
        ]
    )
    r = httpx.post(
        api.url + "/api/v1/write",
        content=body,
        timeout=60,
        headers={
            **hdr(key),
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
        },
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["mode"], got["queued"], got["dead_lettered"]) == ("kafka", 2, 1), got
    raw = consume_all(settings, settings.topic_raw, 2)
    assert sorted(json.loads(m.value())["value"] for m in raw) == [1.0, 2.0]
    assert {m.key() for m in raw} == {f"{tenant}|kq-1".encode()}
    dlq = consume_all(settings, settings.topic_dlq, 1)
    assert dict(dlq[0].headers())["reason"] == b"non_finite"
    assert b"q_nan" in dlq[0].value()


# --- the class of bad input: mutated bodies ------------------------------------------------------


def _otlp_protobuf(host: str) -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    kv = rm.resource.attributes.add()
    kv.key, kv.value.string_value = "host.name", host
    sm = rm.scope_metrics.add()
    t = _now_ns()
    g = sm.metrics.add(name="fz.gauge", unit="%")
    p = g.gauge.data_points.add(time_unix_nano=t, as_double=3.5)
    a = p.attributes.add()
    a.key, a.value.int_value = "core", 1
    c = sm.metrics.add(name="fz.count")
    c.sum.aggregation_temporality, c.sum.is_monotonic = 2, True
    c.sum.data_points.add(start_time_unix_nano=t - 10**10, time_unix_nano=t, as_int=42)
    h = sm.metrics.add(name="fz.hist", unit="ms")
    h.histogram.aggregation_temporality = 1
    h.histogram.data_points.add(
        start_time_unix_nano=t - 10**10,
        time_unix_nano=t,
        count=6,
        sum=30.0,
        bucket_counts=[1, 2, 3],
        explicit_bounds=[1.0, 10.0],
    )
    s = sm.metrics.add(name="fz.summary")
    sp = s.summary.data_points.add(time_unix_nano=t, count=3, sum=9.0)
    q = sp.quantile_values.add()
    q.quantile, q.value = 0.99, 7.0
    return req.SerializeToString()


def _mutations(body: bytes, seed: int, n: int):
    import random

    rnd = random.Random(seed)
    for _ in range(n):
        b = bytearray(body)
        kind = rnd.randrange(4)
        if kind == 0:  # flip bytes
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif kind == 1:  # truncate
            b = b[: rnd.randrange(len(b))]
        elif kind == 2:  # insert junk
            i = rnd.randrange(len(b))
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        else:  # duplicate a slice (repeated fields, odd lengths)
            i, j = sorted(rnd.randrange(len(b)) for _ in range(2))
            b[i:i] = b[i:j]
        yield bytes(b)


def test_mutated_otlp_and_remote_write_bodies_never_answer_5xx_and_lose_nothing(w):
    host = f"fz-{uuid.uuid4().hex[:6]}"
    proto = _otlp_protobuf(host)
    ok = w.c.post(
        "/v1/metrics",
        content=proto,
        headers={**hdr(w.ingest), "Content-Type": "application/x-protobuf"},
    )
    assert ok.status_code == 200 and ok.content == b"", ok.content  # all accepted: empty message
    statuses: Counter = Counter()
    for body in _mutations(proto, 7, 150):
        r = w.c.post(
            "/v1/metrics",
            content=body,
            headers={**hdr(w.ingest), "Content-Type": "application/x-protobuf"},
        )
        statuses[r.status_code] += 1
        assert r.status_code in (200, 400), (r.status_code, r.content[:300])
    ms = int(time.time() * 1000)
    raw = rw.WriteRequest()
    ts = raw.timeseries.add()
    for k, v in (("__name__", "fz_total"), ("instance", host), ("job", "fz")):
        lb = ts.labels.add()
        lb.name, lb.value = k, v
    for i in range(5):
        s = ts.samples.add()
        s.value, s.timestamp = 10.0 * i, ms + i * 1000
    plain = raw.SerializeToString()
    for body in _mutations(plain, 11, 150):
        r = _post_write(w, bytes(cramjam.snappy.compress_raw(body)))
        statuses[r.status_code] += 1
        assert r.status_code in (200, 400), (r.status_code, r.text[:300])
        if r.status_code == 200:
            got = r.json()
            # every sample is accounted for: stored, dead-lettered, skipped by rule or already
            # stored under its id (a mutation can repeat an earlier body's sample)
            parts = ("stored", "dead_lettered", "skipped", "duplicates")
            assert got["accepted"] == sum(got[k] for k in parts), got
    for body in _mutations(bytes(cramjam.snappy.compress_raw(plain)), 13, 100):
        r = _post_write(w, body)
        statuses[r.status_code] += 1
        assert r.status_code in (200, 400, 413), (r.status_code, r.text[:300])
    assert statuses[200] and statuses[400], statuses


def test_otlp_json_with_odd_values_is_dead_lettered_and_lone_surrogates_are_400(w):
    host = f"sg-{uuid.uuid4().hex[:6]}"
    t = str(_now_ns())
    attrs = [
        {"key": "bad", "value": {"stringValue": "nul\u0000inside"}},
        {"key": "nested", "value": {"kvlistValue": {"values": [{"key": "x", "value": {}}]}}},
        {"key": "arr", "value": {"arrayValue": {"values": [{"doubleValue": "Infinity"}]}}},
        {"key": "bytes", "value": {"bytesValue": "AAEC"}},
    ]
    body = json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {
                        "attributes": [{"key": "host.name", "value": {"stringValue": host}}]
                    },
                    "scopeMetrics": [
                        {
                            "metrics": [
                                {
                                    "name": "odd",
                                    "gauge": {
                                        "dataPoints": [
                                            {"timeUnixNano": t, "asDouble": 1, "attributes": attrs},
                                            {"timeUnixNano": t, "asDouble": 2},
                                        ]
                                    },
                                },
                                {
                                    "name": "bad.hist",
                                    "histogram": {
                                        "aggregationTemporality": 1,
                                        "dataPoints": [
                                            {
                                                "startTimeUnixNano": str(int(t) - 10**10),
                                                "timeUnixNano": t,
                                                "count": "3",
                                                "bucketCounts": ["1", "1", "1"],
                                                "explicitBounds": [1.0],
                                            }
                                        ],
                                    },
                                },
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    before = _last_dead(w)
    r = w.c.post(
        "/v1/metrics", content=body, headers={**hdr(w.ingest), "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert int(r.json()["partialSuccess"]["rejectedDataPoints"]) == 2, r.text
    reasons = sorted(d[0] for d in _dead(w, before))
    assert reasons == ["bad_text", "bad_type"], reasons
    assert b"bucket counts" in next(bytes(d[1]) for d in _dead(w, before) if d[0] == "bad_type")
    # a lone surrogate is not JSON protobuf takes: the whole body is 400 with the place named
    r = w.c.post(
        "/v1/metrics",
        content=body.replace(b"nul\\u0000inside", b"\\ud800"),
        headers={**hdr(w.ingest), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "surrogate" in r.json()["message"], r.text


def test_a_busy_api_answers_503_with_retry_after_and_takes_the_retry(base_settings, test_db):
    """Past EVENTOPS_INGEST_MAX_INFLIGHT requests at once, the next is 503 + Retry-After (both
    senders retry it), and the same body sent again once the API is free is stored."""
    import threading

    from serving import ingest
    from serving.config import ServingSettings

    s = base_settings.model_copy(update={"pg_database": test_db})
    conn = connect(s, autocommit=True)
    tenant = f"bp{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    key = make_key(conn, tenant, "ingest")
    serving = ServingSettings(rate_limit_rps=0, ingest_max_inflight=1, _env_file=None)
    api = Api(s, bus=Bus(), serving=serving)
    ms = int(time.time() * 1000)
    first = _write_request([({"__name__": "bp_a", "instance": "bp"}, [(1.0, ms)])])
    second = _write_request([({"__name__": "bp_b", "instance": "bp"}, [(2.0, ms)])])
    headers = {**hdr(key), "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}
    answers: list = []
    try:
        with ingest._feed_lock:  # the pipeline is busy: the first request waits for it
            t = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(
                        api.url + "/api/v1/write", content=first, headers=headers, timeout=60
                    )
                )
            )
            t.start()
            wait_for(lambda: getattr(api.app.state, "ingest_inflight", 0) == 1, 30)
            busy = httpx.post(
                api.url + "/api/v1/write", content=second, headers=headers, timeout=60
            )
            assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1, busy.text
            otlp = httpx.post(
                api.url + "/v1/metrics",
                content=_otlp_json("bp", []),
                headers={**hdr(key), "Content-Type": "application/json"},
                timeout=60,
            )
            assert otlp.status_code == 503 and otlp.headers["Retry-After"], otlp.text
            assert otlp.json()["code"] == 14  # UNAVAILABLE, retryable by the OTLP spec
        t.join(60)
        assert answers and answers[0].status_code == 200, answers
        again = httpx.post(api.url + "/api/v1/write", content=second, headers=headers, timeout=60)
        assert again.status_code == 200 and again.json()["stored"] == 1, again.text
        got = conn.execute(
            "SELECT metric FROM metrics WHERE tenant_id = %s ORDER BY metric", (tenant,)
        ).fetchall()
        assert [m for (m,) in got] == ["bp_a", "bp_b"]
    finally:
        api.stop()
        conn.close()
