"""A stage raising on one event costs that event only (stage_error), and leaves the stateful
detect stage as if the event had never been there; late events keep their original bytes and
source. Pure: the embedded runner's chain (``raw_chain`` + ``run_isolated``), no services."""

from __future__ import annotations

import math
import time

import numpy as np
import orjson
import pytest

from core.settings import REPO_ROOT
from models.rules import RulesFile
from pipeline.chain import StageOutput
from pipeline.embedded import raw_chain
from pipeline.isolation import DetectHistory, run_isolated
from pipeline.simulate import Simulator
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.enrich import Enricher
from pipeline.stages.normalize import NormalizeConfig, Normalizer

TENANT = "acme"
BOOM = "h-boom"


class FaultyDetect(DetectStage):
    """Detect that raises on a batch holding a marked host — after mutating its state (the
    worst case: a half-done call)."""

    def __call__(self, batch):
        out = super().__call__(batch)
        if len(batch) and (batch.host == BOOM).any():
            raise RuntimeError("injected detect fault")
        return out


class FaultyEnrich(Enricher):
    def __call__(self, batch):
        if len(batch) and (batch.host == BOOM).any():
            raise ValueError("injected enrich fault")
        return super().__call__(batch)


def sim_batches(now: float, n_batches: int = 16, per: int = 400) -> list[list[bytes]]:
    sim = Simulator(
        hosts=20, tenant=TENANT, seed=5, interval=10.0, start=now - 3600, anomaly_rate=0.05
    )
    flat = [e for evs in sim.events(ticks=n_batches * per // 80) for e in evs]
    return [flat[i : i + per] for i in range(0, len(flat), per)][:n_batches]


def boom_event(ts: float) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": TENANT,
            "host": BOOM,
            "metric": "cpu_load",
            "value": 1.0,
            "ts_event": ts,
            "unit": "%",
        }
    )


def stages(detect_cls=DetectStage, enrich_cls=Enricher):
    rules = RulesFile(REPO_ROOT / "pipeline" / "rules.default.toml").rules
    return (
        Normalizer(NormalizeConfig(known_tenants=frozenset({TENANT}), max_past_age_s=1e9)),
        enrich_cls(),
        detect_cls(rules, window_s=60.0, lateness_s=10.0),
    )


def drive(batches, norm, enr, det, history):
    """Feed batches like EmbeddedPipeline.feed; returns per-batch outputs and dead letters."""
    outs, seq = [], 0
    for raws in batches:
        run, letter = raw_chain(raws, "src", 0, seq, norm, enr, det)
        out = run_isolated(run, range(len(raws)), letter, det, history)
        seq += len(raws)
        outs.append(out)
    return outs


def same(a: object, b: object) -> bool:
    """Equal up to float rounding (a batch split changes summation order in the last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def canon(out: StageOutput) -> tuple:
    """Order-free view of an output (a bisected batch emits the same rows in slices)."""
    recs = sorted(
        out.windows.records() if out.windows is not None else [],
        key=lambda r: (r["tenant_id"], r["host"], r["metric"], r["window_start"]),
    )
    alerts = [a.to_dict() for a in sorted(out.alerts, key=lambda a: a.event_key)]
    return sorted(out.batch.event_id.tolist()), recs, alerts


def assert_same(a: StageOutput, b: StageOutput, what: str) -> None:
    ca, cb = canon(a), canon(b)
    assert ca[0] == cb[0], f"{what}: stored rows differ"
    assert same(ca[1], cb[1]), f"{what}: windows/scores differ"
    assert same(ca[2], cb[2]), f"{what}: alerts differ"


@pytest.mark.parametrize("where", [0, 137, 399])
def test_detect_fault_on_one_event_dead_letters_it_and_the_rest_scores_as_without_it(where):
    now = time.time()
    batches = sim_batches(now)
    k = 9  # a batch well after windows have started to close
    ts = orjson.loads(batches[k][where])["ts_event"]
    poisoned = [list(b) for b in batches]
    poisoned[k].insert(where, boom_event(ts))

    clean = drive(batches, *stages(), DetectHistory(max_events=1000))
    norm, enr, det = stages(FaultyDetect)
    got = drive(poisoned, norm, enr, det, DetectHistory(max_events=1000))

    dead = [d for o in got for d in o.dead]
    assert [(d.reason, d.stage, d.offset) for d in dead] == [
        ("stage_error", "detect", sum(map(len, poisoned[:k])) + where)
    ]
    assert dead[0].raw == boom_event(ts) and dead[0].topic == "src" and dead[0].partition == 0
    assert "injected detect fault" in dead[0].detail
    assert sum(len(o.batch) for o in got) == sum(len(b) for b in batches)
    # same rows, windows, scores and alerts as a run that never saw the event, batch by batch
    assert any(o.windows is not None for o in clean[: k + 1])
    for i, (a, b) in enumerate(zip(got, clean, strict=True)):
        assert_same(a, b, f"batch {i}")


def test_state_after_isolation_equals_state_without_the_event():
    now = time.time()
    batches = sim_batches(now)
    k = 7
    ts = orjson.loads(batches[k][50])["ts_event"]
    poisoned = [list(b) for b in batches]
    poisoned[k].insert(50, boom_event(ts))
    _, _, clean_det = stages()
    drive(batches, *stages()[:2], clean_det, DetectHistory())
    norm, enr, det = stages(FaultyDetect)
    drive(poisoned, norm, enr, det, DetectHistory(max_events=1500))
    a, b = det.flush(), clean_det.flush()
    assert_same(
        StageOutput(windows=a.windows, alerts=a.alerts),
        StageOutput(windows=b.windows, alerts=b.alerts),
        "flushed state",
    )
    assert sorted(det.parts) == sorted(clean_det.parts)
    assert det.parts[0].names == clean_det.parts[0].names  # no series of the failed attempt left


def test_enrich_fault_costs_its_event_only():
    now = time.time()
    batches = sim_batches(now, n_batches=3)
    raws = list(batches[1])
    raws[10:10] = [boom_event(now - 3000), boom_event(now - 2999)]
    norm, enr, det = stages(enrich_cls=FaultyEnrich)
    run, letter = raw_chain(raws, "src", 0, 1000, norm, enr, det)
    out = run_isolated(run, range(len(raws)), letter, det, DetectHistory())
    assert [(d.reason, d.stage, d.offset) for d in out.dead] == [
        ("stage_error", "enrich", 1010),
        ("stage_error", "enrich", 1011),
    ]
    assert len(out.batch) == len(batches[1])


def test_fault_on_every_event_dead_letters_each_and_does_not_raise():
    norm, enr, det = stages(FaultyDetect)
    raws = [boom_event(time.time() - i) for i in range(9)]
    run, letter = raw_chain(raws, "src", 2, 0, norm, enr, det)
    out = run_isolated(run, range(len(raws)), letter, det, DetectHistory())
    assert sorted(d.offset for d in out.dead) == list(range(9))
    assert {d.reason for d in out.dead} == {"stage_error"} and len(out.batch) == 0
    assert det.parts == {} or all(not ps.names for ps in det.parts.values())


def test_late_event_dead_letter_carries_original_bytes_and_offset():
    """ts_too_old used to carry a re-encoded body with source.topic "" and offset -1."""
    now = time.time()
    batches = sim_batches(now, n_batches=6)
    norm, enr, det = stages()
    drive(batches[:5], norm, enr, det, DetectHistory())
    first = orjson.loads(batches[0][0])
    late = orjson.dumps({**first, "event_id": "late-1"})  # its window closed long ago
    raws = list(batches[5]) + [late]
    run, letter = raw_chain(raws, "ingest.raw.agent", 0, 5000, norm, enr, det)
    out = run_isolated(run, range(len(raws)), letter, det, DetectHistory())
    late_dl = [d for d in out.dead if d.reason == "ts_too_old"]
    assert len(late_dl) == 1
    d = late_dl[0]
    assert d.raw == late and (d.topic, d.partition, d.offset) == (
        "ingest.raw.agent",
        0,
        5000 + len(raws) - 1,
    )
    assert d.stage == "detect"
    assert "late-1" not in out.batch.event_id.tolist()


def test_src_column_follows_rows_through_take_and_enrich():
    norm, enr, _ = stages()
    now = time.time()
    raws = [b"junk", boom_event(now), b"[]", boom_event(now - 1)]
    b, dead = norm(raws, "t", [0] * 4, [0, 1, 2, 3], now=now)
    assert b.src.tolist() == [1, 3]
    enr.update({(TENANT, BOOM): {"rack": "r1"}})
    e = enr(b)
    assert e.src.tolist() == [1, 3] and e.tags[0] == {"rack": "r1"}
    assert e.take(np.array([False, True])).src.tolist() == [3]
