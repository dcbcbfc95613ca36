"""Shadow scoring of a challenger model: stored beside the champion's results, never part of them.

The same simulated stream goes through a detect stage with a champion only and through one with
a champion and a challenger; every score, severity, component, explanation, record and alert
must come out identical, and only the second carries the challenger's ``shadow_*`` columns.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from core.batch import MetricBatch
from core.settings import REPO_ROOT
from models.batch import BatchModel
from models.rules import RuleSet, RulesFile
from pipeline.simulate import Simulator
from pipeline.stages.detect.stage import DetectOutput, DetectStage, calibrate_batch_score
from pipeline.stages.detect.window_rows import FEATURES, WindowRows
from pipeline.stages.normalize import NormalizeConfig, Normalizer

WINDOW_S = 60.0


def rules() -> RuleSet:
    return RulesFile(REPO_ROOT / "pipeline" / "rules.default.toml").rules


def stream(seed: int = 5, hosts: int = 6, ticks: int = 1500, chunk: int = 120) -> list[MetricBatch]:
    """Simulated telemetry (anomaly-rich) as normalized micro-batches over three partitions."""
    sim = Simulator(
        hosts=hosts,
        tenant="t1",
        seed=seed,
        interval=10.0,
        start=time.time() - ticks * 10.0 - 600,
        anomaly_rate=0.01,
    )
    norm = Normalizer(NormalizeConfig())
    out, raws, off = [], [], 0
    for evs in sim.events(ticks=ticks):
        raws.extend(evs)
        if len(raws) >= chunk * hosts * 4:
            out.append(_batch(norm, raws, off))
            off += len(raws)
            raws = []
    if raws:
        out.append(_batch(norm, raws, off))
    return out


def _batch(norm: Normalizer, raws: list[bytes], off: int) -> MetricBatch:
    b, dead = norm(raws, "raw", [0] * len(raws), range(off, off + len(raws)))
    assert not dead
    b.partition = np.array([int(h[-3:]) % 3 for h in b.host.tolist()], np.int64)  # host-NNN
    return b


def fit(batches: list[MetricBatch], seed: int, features: tuple[str, ...], **kw) -> BatchModel:
    """A batch model fitted on the closed windows of a model-less pass over the stream."""
    det = DetectStage(RuleSet([]), window_s=WINDOW_S)
    rows = WindowRows.concat([det(b).windows for b in batches] + [det.flush().windows])
    X = {**rows.features, "series": np.zeros(len(rows), np.int64)}
    return BatchModel.fit_isolation_forest(X, features=features, seed=seed, **kw)


@pytest.fixture(scope="module")
def data():
    batches = stream()
    champion = fit(batches, seed=0, features=FEATURES, n_estimators=50)
    challenger = fit(batches, seed=1, features=("mean", "std", "max", "change"), n_estimators=25)
    return batches, champion, challenger


def run(batches, model, shadow=None) -> tuple[DetectStage, list[DetectOutput]]:
    det = DetectStage(rules(), window_s=WINDOW_S, model=lambda: ("1", model), shadow=shadow)
    outs = [det(b) for b in batches]
    outs.append(det.flush())
    return det, outs


def assert_same_detection(a: list[DetectOutput], b: list[DetectOutput]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.alerts == y.alerts
        np.testing.assert_array_equal(x.late_idx, y.late_idx)
        if x.windows is None:
            assert y.windows is None
            continue
        np.testing.assert_array_equal(x.windows.score, y.windows.score)
        np.testing.assert_array_equal(x.windows.severity, y.windows.severity)
        assert x.windows.components == y.windows.components
        assert x.windows.explanation == y.windows.explanation
        assert x.windows.model_version == y.windows.model_version
        recs = y.windows.records()
        for r in recs:
            r.pop("shadow", None)
        assert x.windows.records() == recs


def test_challenger_never_changes_scores_or_alerts(data):
    batches, champion, challenger = data
    _, plain = run(batches, champion)
    det, shadowed = run(batches, champion, shadow=lambda: ("2", challenger))
    assert_same_detection(plain, shadowed)
    assert sum(len(o.alerts) for o in plain) > 0, "the stream should raise alerts"
    assert det.shadow_failures == 0
    rows = WindowRows.concat([o.windows for o in shadowed if o.windows is not None])
    assert rows.shadow_version == ["2"] * len(rows)
    # the challenger really scored, with the champion's calibration, and differently from it
    X = {**rows.features, "series": np.zeros(len(rows), np.int64)}
    raw = challenger.score_many(X)
    np.testing.assert_allclose(rows.shadow_raw, raw)
    np.testing.assert_allclose(rows.shadow_score, calibrate_batch_score(raw))
    batch = np.array([c["batch"] for c in rows.components])
    assert not np.allclose(batch, np.round(rows.shadow_score, 4))
    assert all(r["shadow"]["model_version"] == "2" for r in rows.records())


def test_failing_challenger_is_logged_and_skipped(data, caplog):
    batches, champion, _ = data

    class Broken:
        def score_many(self, X):
            raise RuntimeError("challenger exploded")

    _, plain = run(batches, champion)
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.detect.stage"):
        det, shadowed = run(batches, champion, shadow=lambda: ("2", Broken()))
    assert_same_detection(plain, shadowed)
    assert det.shadow_failures > 1
    assert all(o.windows is None or o.windows.shadow_version is None for o in shadowed)
    logged = [r for r in caplog.records if "challenger v2 failed" in r.getMessage()]
    assert len(logged) == 1, "one log line per version and minute, not one per batch"
    assert logged[0].exc_info is not None


def test_challenger_cannot_write_into_the_features(data):
    batches, champion, _ = data

    class Meddler:
        def score_many(self, X):
            X["mean"][:] = 0.0  # read-only view: raises, counted as a failure
            return np.zeros(len(X["series"]))

    _, plain = run(batches, champion)
    det, shadowed = run(batches, champion, shadow=lambda: ("2", Meddler()))
    assert_same_detection(plain, shadowed)
    assert det.shadow_failures > 0


def test_challenger_equal_to_the_champion_or_absent_is_not_scored(data):
    batches, champion, challenger = data
    for shadow in (lambda: ("1", challenger), lambda: (None, None), lambda: ("2", None)):
        _, outs = run(batches[:3], champion, shadow=shadow)
        assert all(o.windows is None or o.windows.shadow_version is None for o in outs)


def test_non_finite_challenger_scores_are_left_out(data):
    batches, champion, challenger = data

    class Partial:
        def score_many(self, X):
            s = challenger.score_many(X)
            s[::2] = np.nan
            return s

    _, outs = run(batches[:4], champion, shadow=lambda: ("2", Partial()))
    rows = WindowRows.concat([o.windows for o in outs if o.windows is not None])
    idx = rows.shadow_idx()
    assert 0 < idx.size < len(rows)
    assert np.isfinite(rows.shadow_score[idx]).all()
    assert sum(1 for r in rows.records() if "shadow" in r) == idx.size


def test_shadow_columns_survive_records_and_concat(data):
    batches, champion, challenger = data
    _, outs = run(batches[:4], champion, shadow=lambda: ("2", challenger))
    rows = WindowRows.concat([o.windows for o in outs if o.windows is not None])
    back = WindowRows.from_records(rows.records())
    assert back.shadow_version == rows.shadow_version
    np.testing.assert_allclose(back.shadow_score, rows.shadow_score)
    np.testing.assert_allclose(back.shadow_raw, rows.shadow_raw)
    # a part without shadow scores (e.g. a partition whose challenger call failed) concatenates
    _, plain = run(batches[:4], champion)
    other = WindowRows.concat([o.windows for o in plain if o.windows is not None])
    both = WindowRows.concat([rows, other])
    assert both.shadow_version == rows.shadow_version + [None] * len(other)
    assert np.isnan(both.shadow_score[len(rows) :]).all()
    np.testing.assert_array_equal(both.shadow_idx(), np.arange(len(rows)))
    # records without a shadow entry (older producers) read back without shadow columns
    assert WindowRows.from_records(other.records()).shadow_version is None
