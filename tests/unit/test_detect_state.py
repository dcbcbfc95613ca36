"""Detect checkpoints across the move of the detect stage into ``pipeline/stages/detect/``.

``tests/data/detect_state_v1_alerts.pkl`` is ``DetectStage.snapshot(0)`` written by the code of
main@b94ecf9 (``pipeline.stages.anomaly``; partition state version 1, the rule tracker's series
pickled as ``pipeline.stages.detect.SeriesAlert``) after the first 660 ticks, in batches of 12,
of ``Simulator(hosts=3, tenant="t1", seed=11, interval=10.0, start=1_780_000_000.0,
anomaly_rate=0.03)`` with the rules in ``detect_state_v1_alerts.json`` (window 60 s, lateness
30 s): threshold alerts open and pending and a score alert open at the cut. The ``.json`` holds
the alert events the current code emits after the cut (their stored payloads) and the SHA-256 of
the payloads of all events of the run (one JSON object a line), regenerated when detection
changes on purpose (issue 16: alert openings by the opening gate, confidence in explanations).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.presets import default_ensemble
from models.rules import RuleSet
from pipeline.simulate import Simulator
from pipeline.stages.detect.partition import STATE_VERSION, load_state
from pipeline.stages.detect.rule_alerts import SeriesAlert
from pipeline.stages.detect.stage import DetectStage
from pipeline.stages.detect.window_rows import WindowRows
from pipeline.stages.normalize import NormalizeConfig, Normalizer

DATA = Path(__file__).resolve().parent.parent / "data"
META = orjson.loads((DATA / "detect_state_v1_alerts.json").read_bytes())
BLOB = (DATA / "detect_state_v1_alerts.pkl").read_bytes()
TICKS, CUT, STEP = META["ticks"], META["cut"], META["step"]


@pytest.fixture(scope="module")
def batches():
    sim = Simulator(
        hosts=3, tenant="t1", seed=11, interval=10.0, start=1_780_000_000.0, anomaly_rate=0.03
    )
    ticks = list(sim.events(ticks=TICKS))
    norm = Normalizer(NormalizeConfig(max_past_age_s=1e12))
    out = {}
    for lo in range(0, TICKS, STEP):
        raws = [e for evs in ticks[lo : lo + STEP] for e in evs]
        b, dead = norm(raws, "raw", [0] * len(raws), range(len(raws)))
        assert not dead
        b.partition = np.zeros(len(b), np.int64)
        out[lo] = b
    return out


def stage() -> DetectStage:
    return DetectStage(RuleSet.from_toml(META["rules"]), window_s=60.0, lateness_s=30.0)


def run(det: DetectStage, batches, lo: int, hi: int, flush: bool = True):
    outs = [det(batches[t]) for t in range(lo, hi, STEP)]
    if flush:
        outs.append(det.flush())
    alerts = [a for o in outs for a in o.alerts]
    return alerts, WindowRows.concat([o.windows for o in outs if o.windows is not None])


def records(rows: WindowRows) -> list[dict]:
    return sorted(rows.records(), key=lambda r: (r["host"], r["metric"], r["window_start"]))


def test_a_version_1_checkpoint_restores_its_open_and_pending_alerts_and_continues(batches):
    st = load_state(BLOB)
    assert "version" not in st  # version 1
    assert all(isinstance(s, SeriesAlert) for s in st["rule_alerts"].values())
    det = stage()
    det.restore(0, BLOB)
    ps = det.partition(0)
    assert any(s.level for s in ps.rule_alerts.series.values())
    assert any(s.pending for s in ps.rule_alerts.series.values())
    assert (ps.score_alerts.level > 0).any()

    alerts, windows = run(det, batches, CUT, TICKS)
    # the pinned payloads of what this state continues with, byte for byte
    assert [orjson.dumps(a.to_dict()) for a in alerts] == [
        orjson.dumps(p) for p in META["after_cut"]
    ]
    assert {a.rule for a in alerts} >= {"anomaly:ensemble", "threshold:cpu_load"}
    # and the windows an uninterrupted run scores after the cut, with the detector settings the
    # checkpoint carries (written before the score cooldown moved to the alert layer and before
    # the host correlation component, the seasonal cap and the calibration floor of 0.02)
    assert ps.ensemble.cooldown == 100
    fresh = DetectStage(
        RuleSet.from_toml(META["rules"]),
        window_s=60.0,
        lateness_s=30.0,
        ensemble_factory=lambda: default_ensemble(
            cooldown=100, components=("seasonal", "ewma_slow"), seasonal_cap=0.0, calib_floor=0.05
        ),
    )
    run(fresh, batches, 0, CUT, flush=False)
    _, want = run(fresh, batches, CUT, TICKS)
    assert records(windows) == records(want)


def test_alert_payloads_are_pinned(batches):
    """Every alert event of the run: the stored payload (``to_dict``) is byte for byte the pinned
    one (rule and score alerts, all four kinds); a change of detection shows here."""
    alerts, _ = run(stage(), batches, 0, TICKS)
    assert {a.kind for a in alerts} == {"open", "escalate", "deescalate", "resolve"}
    lines = b"\n".join(orjson.dumps(a.to_dict()) for a in alerts)
    assert len(alerts) == META["events"]
    assert hashlib.sha256(lines).hexdigest() == META["sha256"]


PROJECT = ("core", "features", "models", "pipeline", "storage", "registry", "training", "serving")


def classes_of(blob: bytes) -> set[str]:
    """Modules of the classes (and functions) a pickle refers to."""
    seen: set[str] = set()

    class Spy(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            seen.add(module)
            return super().find_class(module, name)

    Spy(io.BytesIO(blob)).load()
    return seen


def test_a_checkpoint_now_is_version_2_of_plain_data_and_continues_exactly(batches):
    det = stage()
    run(det, batches, 0, CUT, flush=False)
    blob = det.snapshot(0)
    assert pickle.loads(blob)["version"] == STATE_VERSION == 2
    assert not {m for m in classes_of(blob) if m.split(".")[0] in PROJECT}, classes_of(blob)
    again = stage()
    again.restore(0, blob)
    assert again.partition(0).rule_alerts.series == det.partition(0).rule_alerts.series
    alerts, windows = run(again, batches, CUT, TICKS)
    want_alerts, want_windows = run(det, batches, CUT, TICKS)
    assert alerts == want_alerts
    assert {a.rule for a in alerts} >= {"anomaly:ensemble"}
    assert records(windows) == records(want_windows)


def test_a_checkpoint_of_a_newer_version_is_refused():
    det = stage()
    st = pickle.loads(det.snapshot(0))
    st["version"] = STATE_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        det.restore(0, pickle.dumps(st))
