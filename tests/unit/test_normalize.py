import json
import time

import numpy as np
import pytest

from pipeline.stages.normalize import NormalizeConfig, Normalizer

NOW = 1_780_000_000.0


def ev(**kw):
    base = {
        "tenant_id": "acme",
        "host": "host-a",
        "metric": "cpu_load",
        "value": 92,
        "ts_event": "2026-05-28T20:26:40Z",
        "unit": "%",
        "tags": {"env": "prod"},
    }
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def run(raws, **cfg):
    n = Normalizer(NormalizeConfig(**{"known_tenants": frozenset({"acme"}), **cfg}))
    return n(raws, "ingest.raw.agent", [0] * len(raws), list(range(100, 100 + len(raws))), now=NOW)


def test_good_event_becomes_columns():
    b, dead = run([ev()])
    assert dead == []
    assert len(b) == 1
    assert b.tenant_id[0] == "acme" and b.host[0] == "host-a" and b.metric[0] == "cpu_load"
    assert b.value.dtype == np.float64 and b.value[0] == 92.0
    assert b.unit[0] == "percent"
    assert b.tags[0] == {"env": "prod"}
    assert b.ts[0] == pytest.approx(NOW)


def test_event_id_is_deterministic_from_offset_or_agent_id():
    b, _ = run([ev(), ev(event_id="agent-1")])
    assert list(b.event_id) == ["ingest.raw.agent:0:100", "agent-1"]
    b2, _ = run([ev(), ev(event_id="agent-1")])
    assert list(b2.event_id) == list(b.event_id)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe\x00garbage", "bad_encoding"),
        (b"[1,2,3]", "not_object"),
        (ev(value=...), "missing_field"),
        (ev(host=...), "missing_field"),
        (ev(value="92"), "bad_type"),
        (ev(value=True), "bad_type"),
        (ev(host=7), "bad_type"),
        (ev(ts_event="yesterday"), "bad_type"),
        (ev(ts_event="2026-05-28T20:26:40"), "bad_type"),
        (
            b'{"tenant_id":"acme","host":"h","metric":"m","value":NaN,"ts_event":1780000000}',
            "non_finite",
        ),
        (
            b'{"tenant_id":"acme","host":"h","metric":"m","value":Infinity,"ts_event":1780000000}',
            "non_finite",
        ),
        (
            b'{"tenant_id":"acme","host":"h","metric":"m","value":-Infinity,"ts_event":1780000000}',
            "non_finite",
        ),
        (ev(ts_event=NOW + 365 * 86400), "ts_out_of_range"),
        (ev(ts_event=NOW - 365 * 86400), "ts_out_of_range"),
        (ev(tenant_id="evil"), "unknown_tenant"),
        (ev(host=""), "bad_field"),
        (ev(host="a b"), "bad_field"),
        (ev(host="a b\n"), "bad_text"),  # a control character is bad_text before the name check
        (ev(tags={"blob": "x" * 100_000}), "tag_too_large"),
        (ev(tags=["a"]), "bad_tags"),
        (ev(tags={"nested": {"a": 1}}), "bad_tags"),
        (ev(tags={f"k{i}": i for i in range(100)}), "too_many_tags"),
        (ev(event_id=12), "bad_event_id"),
        (b"x" * 1_000_001, "too_large"),
    ],
)
def test_bad_input_is_dead_lettered_with_reason(raw, reason):
    good = ev(host="host-good")
    b, dead = run([good, raw, good], max_message_bytes=1_000_000)
    assert [d.reason for d in dead] == [reason]
    assert dead[0].raw == raw
    assert dead[0].offset == 101 and dead[0].topic == "ingest.raw.agent"
    assert dead[0].detail
    assert list(b.host) == ["host-good", "host-good"]


def test_metric_and_unit_normalisation():
    b, dead = run(
        [
            ev(metric="CPU-Load", unit="%"),
            ev(metric="latency p99", value=250, unit="ms"),
            ev(metric="mem", value=2, unit="GiB"),
        ]
    )
    assert dead == []
    assert list(b.metric) == ["cpu_load", "latency_p99", "mem"]
    assert list(b.unit) == ["percent", "s", "bytes"]
    assert b.value.tolist() == [92.0, 0.25, 2 * 1024**3]


def test_epoch_seconds_and_millis_accepted():
    b, dead = run([ev(ts_event=NOW), ev(ts_event=int(NOW * 1000))])
    assert dead == []
    assert b.ts.tolist() == [NOW, NOW]


def test_no_allowlist_accepts_any_tenant():
    n = Normalizer(NormalizeConfig(known_tenants=None))
    b, dead = n([ev(tenant_id="whoever", ts_event=time.time())])
    assert dead == [] and b.tenant_id[0] == "whoever"
