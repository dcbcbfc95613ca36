"""The pipeline object: parsing a chain, what it reads and writes, and the one result of a run.

Pure (no services): the stages run over :class:`Records` built here, as the runners build them
from Kafka messages or from raw bytes fed in memory.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import orjson
import pytest

from core.records import AlertEvent
from core.settings import REPO_ROOT, Settings
from models.rules import RulesFile
from pipeline.chain import STAGES, Chain, Records, StageFailure, StageName, StageOutput, parse_chain
from pipeline.codec import encode_metrics
from pipeline.simulate import Simulator
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.enrich import Enricher
from pipeline.stages.normalize import NormalizeConfig, Normalizer

TENANT = "acme"
NAMES = [n.value for n in STAGES]


@dataclass
class Objects:
    """Stage objects as a runner's stage set holds them."""

    normalize: Normalizer
    enricher: Enricher
    detect: DetectStage
    s: Settings


def objects(s: Settings) -> Objects:
    rules = RulesFile(REPO_ROOT / "pipeline" / "rules.default.toml").rules
    return Objects(
        Normalizer(NormalizeConfig(known_tenants=frozenset({TENANT}), max_past_age_s=1e9)),
        Enricher({(TENANT, "host-000"): {"rack": "r1"}}),
        DetectStage(rules, window_s=60.0, lateness_s=10.0),
        s,
    )


def settings() -> Settings:
    return Settings(_env_file=None)


def raw_records(raws: list[bytes], topic: str = "ingest.raw.agent", first: int = 0) -> Records:
    n = len(raws)
    return Records(raws, [topic] * n, [0] * n, list(range(first, first + n)))


def sim_raws(now: float, n: int = 2400) -> list[bytes]:
    sim = Simulator(
        hosts=10, tenant=TENANT, seed=3, interval=10.0, start=now - 3600, anomaly_rate=0.05
    )
    return [e for evs in sim.events(ticks=n // 40) for e in evs][:n]


def event(host: str, ts: float, value: float = 1.0, **extra) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": TENANT,
            "host": host,
            "metric": "cpu_load",
            "value": value,
            "ts_event": ts,
            "unit": "%",
            **extra,
        }
    )


# -- parsing ---------------------------------------------------------------------------------


def contiguous(names: tuple[str, ...]) -> bool:
    idx = [NAMES.index(n) for n in names]
    return idx == list(range(idx[0], idx[0] + len(idx)))


@pytest.mark.parametrize(
    "names", [p for k in range(1, 5) for p in itertools.permutations(NAMES, k)]
)
def test_every_contiguous_run_in_order_parses_and_nothing_else(names):
    spec = ",".join(names)
    if contiguous(names):
        c = parse_chain(spec)
        assert [n.value for n in c.names] == list(names) and str(c) == spec
        assert parse_chain(list(names)) == c and parse_chain(c) is c
    else:
        with pytest.raises(
            ValueError, match="contiguous and in order normalize,enrich,detect,sink"
        ):
            parse_chain(spec)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", r"unknown stages \[\]; choose a chain of normalize,enrich,detect,sink"),
        (" , ", r"unknown stages \[\]"),
        ("normalize,bogus", r"unknown stages \['bogus'\]"),
        ("Normalize", r"unknown stages \['Normalize'\]"),
        ("normalize,normalize", "contiguous and in order"),
    ],
)
def test_bad_chains_are_refused_with_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_chain(spec)


def test_spaces_around_names_are_allowed():
    assert parse_chain(" enrich , detect ").names == (StageName.ENRICH, StageName.DETECT)


# -- what a chain is -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,inputs,output",
    [
        ("normalize", ["topic_raw"], "topic_metric"),
        ("normalize,enrich", ["topic_raw"], "topic_enriched"),
        ("normalize,enrich,detect", ["topic_raw"], "topic_enriched"),
        ("normalize,enrich,detect,sink", ["topic_raw"], None),
        ("enrich", ["topic_metric"], "topic_enriched"),
        ("enrich,detect,sink", ["topic_metric"], None),
        ("detect", ["topic_enriched"], "topic_enriched"),
        ("detect,sink", ["topic_enriched"], None),
        ("sink", ["topic_enriched", "topic_alert", "topic_score"], None),
    ],
)
def test_topics_read_and_written(spec, inputs, output):
    s, c = settings(), parse_chain(spec)
    assert c.inputs(s) == [getattr(s, t) for t in inputs]
    assert c.output(s) == (getattr(s, output) if output else None)
    assert c.ends_in_sink == (output is None)


def test_questions_a_runner_asks():
    c = parse_chain("enrich,detect,sink")
    assert (c.first, c.last) == (StageName.ENRICH, StageName.SINK)
    assert (c.has_normalize, c.has_enrich, c.has_detect, c.ends_in_sink) == (
        False,
        True,
        True,
        True,
    )
    assert c.slug == "enrich-detect-sink"
    assert not parse_chain("normalize,enrich").has_detect


@pytest.mark.parametrize(
    "spec,steps",
    [
        ("normalize,enrich,detect,sink", ["normalize", "enrich", "detect"]),
        ("enrich,detect", ["enrich", "enrich", "detect"]),  # decode the metric stream, then enrich
        ("detect", ["detect", "detect"]),
        ("sink", ["sink"]),
    ],
)
def test_the_sink_is_not_a_step_and_the_entry_reads_the_records(spec, steps):
    assert [st.name for st in parse_chain(spec).steps] == steps


# -- one run, one result ---------------------------------------------------------------------


def test_run_gives_batch_dead_letters_windows_and_alerts_with_their_sources():
    now = time.time()
    s = settings()
    obj = objects(s)
    c = parse_chain("normalize,enrich,detect")
    first = sim_raws(now)
    c.run(obj, raw_records(first))  # windows open; the next events close some
    late = event("host-001", now - 3600, event_id="late-1")  # its window closed long ago
    raws = [b"not json", *sim_raws(now + 1200, 1200)[400:], late, event("host-000", now, 99.0)]
    out = c.run(obj, raw_records(raws, first=5000))

    assert isinstance(out, StageOutput)
    assert len(out.batch) == len(raws) - 2 and out.batch.src.tolist() == list(
        range(1, len(raws) - 2)
    ) + [len(raws) - 1]
    by_reason = {d.reason: d for d in out.dead}
    assert sorted(by_reason) == ["bad_json", "ts_too_old"]
    d = by_reason["ts_too_old"]
    assert (d.raw, d.topic, d.partition, d.offset, d.stage) == (
        late,
        s.topic_raw,
        0,
        5000 + len(raws) - 2,
        "detect",
    )
    assert by_reason["bad_json"].offset == 5000 and by_reason["bad_json"].stage == "normalize"
    assert out.windows is not None and len(out.windows)
    assert out.batch.tags[-1] == {"rack": "r1"}  # enriched
    assert any(a.host == "host-000" and a.kind == "open" for a in out.alerts)
    assert out.detect_input is not None and out.alerts_in == []


def test_a_stage_that_raises_is_named():
    class Broken(Enricher):
        def __call__(self, batch):
            raise KeyError("inventory")

    obj = objects(settings())
    obj.enricher = Broken()
    raws = [event("h1", time.time())]
    with pytest.raises(StageFailure) as e:
        parse_chain("normalize,enrich").run(obj, raw_records(raws))
    assert e.value.stage == "enrich" and isinstance(e.value.__cause__, KeyError)
    d = e.value.letter(raw_records(raws).origin(0))
    assert (d.raw, d.reason, d.stage, d.offset) == (raws[0], "stage_error", "enrich", 0)
    assert str(d.detail).startswith("enrich: KeyError")


def test_a_split_chain_gives_what_the_whole_chain_gives():
    """normalize,enrich → the enriched topic's records → detect, as two workers would."""
    now = time.time()
    s = settings()
    raws = sim_raws(now)
    whole = parse_chain("normalize,enrich,detect").run(objects(s), raw_records(raws))
    o = objects(s)
    head = parse_chain("normalize,enrich").run(o, raw_records(raws))
    assert head.windows is None and head.alerts == []
    vals, _ = encode_metrics(head.batch)
    n = len(vals)
    tail = parse_chain("detect").run(
        o, Records(vals, [s.topic_enriched] * n, [0] * n, list(range(n)))
    )
    assert tail.batch.event_id.tolist() == whole.batch.event_id.tolist()
    assert tail.windows.records() == whole.windows.records()
    assert tail.alerts == whole.alerts


def test_a_sink_first_chain_splits_its_three_topics():
    s = settings()
    metric = orjson.dumps(
        {
            "event_id": "e1",
            "tenant_id": TENANT,
            "host": "h",
            "metric": "m",
            "value": 1.0,
            "ts": 100.0,
            "unit": "",
            "tags": None,
        }
    )
    ev = AlertEvent(
        alert_id="a1",
        kind="open",
        tenant_id=TENANT,
        host="h",
        metric="m",
        value=1.0,
        severity="warning",
        ts=100.0,
        opened_at=100.0,
        rule="r",
        threshold=0.5,
        message="m on h",
        score=0.6,
        explanation={},
        model_version=None,
        event_id="e0",
    )
    alert = orjson.dumps(ev.to_dict())
    values = [alert, b"{broken", metric, b"[1, 2", metric.replace(b"e1", b"e2")]
    topics = [s.topic_alert, s.topic_score, s.topic_enriched, s.topic_enriched, s.topic_enriched]
    out = parse_chain("sink").run(
        objects(s), Records(values, topics, [1] * 5, [10, 11, 12, 13, 14])
    )
    assert out.batch.event_id.tolist() == ["e1", "e2"]
    assert out.batch.src.tolist() == [2, 4]  # indices among all records of the micro-batch
    assert out.alerts_in == [ev] and out.windows is None
    assert [(d.reason, d.topic, d.offset, d.stage) for d in out.dead] == [
        ("bad_record", s.topic_score, 11, "sink"),
        ("bad_record", s.topic_enriched, 13, "sink"),
    ]


def test_a_chain_is_a_value():
    assert parse_chain("detect,sink") == Chain((StageName.DETECT, StageName.SINK))
    assert len({parse_chain("detect"), parse_chain(["detect"])}) == 1
    assert NAMES == ["normalize", "enrich", "detect", "sink"]
