"""One contract suite over every detector (River's check_estimator idea)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from models.baselines import EWMAZScore, RobustMAD, SeasonalProfile
from models.batch import BatchModel
from models.context import ContextNovelty
from models.online import FamilyHalfSpaceTrees


def make_stream(seed: int = 0, n: int = 400, n_series: int = 3):
    """Windows of ``n_series`` daily-seasonal series (hourly windows) with injected spikes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 3600.0
    cols = {k: [] for k in ("series", "start", "mean", "std", "change", "max")}
    labels = []
    for s in range(n_series):
        base = 10 * (s + 1) + 3 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 0.3, n)
        y = np.zeros(n, bool)
        idx = rng.choice(np.arange(n // 3, n), 8, replace=False)
        base[idx] += rng.choice([-1, 1], 8) * rng.uniform(4, 8, 8)
        y[idx] = True
        cols["series"].append(np.full(n, s, np.int64))
        cols["start"].append(t)
        cols["mean"].append(base)
        cols["std"].append(np.abs(rng.normal(0.3, 0.05, n)))
        cols["change"].append(np.r_[0.0, np.diff(base)])
        cols["max"].append(base + 0.5)
        labels.append(y)
    X = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(X["start"], kind="stable")  # interleave series in time order
    return {k: v[order] for k, v in X.items()}, np.concatenate(labels)[order]


def _iforest():
    X, _ = make_stream(1)
    return BatchModel(
        IsolationForest(n_estimators=50, random_state=0).fit(
            np.column_stack([X["change"], X["std"]])
        ),
        features=("change", "std"),
    )


FACTORIES = {
    "ewma": lambda: EWMAZScore(alpha=0.05, warmup=10),
    "ewma_diff": lambda: EWMAZScore(alpha=0.05, diff=True, warmup=10),
    "seasonal": lambda: SeasonalProfile(alpha=0.2),
    "mad": lambda: RobustMAD(size=32),
    "context": lambda: ContextNovelty(min_count=10),
    "hst": lambda: FamilyHalfSpaceTrees(n_trees=5, height=5, window_size=50, seed=3),
    "batch": _iforest,
}
SLOW = {"hst"}  # per-window Python objects: use a shorter stream


def take(X, idx):
    return {k: v[idx] for k, v in X.items()}


def trained(name, n=None):
    X, y = make_stream(0)
    if name in SLOW:
        X, y = take(X, np.arange(600)), y[:600]
    det = FACTORIES[name]()
    det.learn_many(take(X, np.arange(len(y) // 2)))
    return det, take(X, np.arange(len(y) // 2, len(y))), y[len(y) // 2 :]


@pytest.fixture(params=sorted(FACTORIES))
def name(request):
    return request.param


def test_score_range(name):
    det, X, _ = trained(name)
    s = det.score_many(X)
    assert s.shape == (len(X["series"]),) and s.dtype == np.float64
    assert np.all((s >= 0) & (s <= 1))


def test_score_many_equals_score_one(name):
    det, X, _ = trained(name)
    sub = take(X, np.arange(40))
    many = det.score_many(sub)
    one = [det.score_one({k: v[i].item() for k, v in sub.items()}) for i in range(40)]
    np.testing.assert_allclose(many, one, rtol=1e-12, atol=1e-12)


def test_learn_many_equals_learn_one(name):
    X, _ = make_stream(2, n=60)
    a, b = FACTORIES[name](), FACTORIES[name]()
    a.learn_many(X)
    for i in range(len(X["series"])):
        b.learn_one({k: v[i].item() for k, v in X.items()})
    probe = take(X, np.arange(10))
    np.testing.assert_allclose(a.score_many(probe), b.score_many(probe), atol=1e-12)


def test_scoring_does_not_mutate(name):
    det, X, _ = trained(name)
    before = pickle.dumps(det.to_state())
    det.score_many(X)
    det.score_one({k: v[0].item() for k, v in X.items()})
    assert pickle.dumps(det.to_state()) == before


def test_state_round_trip_and_pickle(name):
    det, X, _ = trained(name)
    ref = det.score_many(X)
    clone = type(det).from_state(pickle.loads(pickle.dumps(det.to_state())))
    np.testing.assert_array_equal(clone.score_many(X), ref)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_many(X), ref)
    # both continue identically
    det.learn_many(take(X, np.arange(20)))
    clone.learn_many(take(X, np.arange(20)))
    np.testing.assert_array_equal(clone.score_many(X), det.score_many(X))


def test_seeded_determinism(name):
    a, X, _ = trained(name)
    b, _, _ = trained(name)
    np.testing.assert_array_equal(a.score_many(X), b.score_many(X))


def test_roc_auc_on_injected_anomalies(name):
    det, X, y = trained(name)
    scores = np.empty(len(y))
    for i in range(len(y)):  # prequential: score, then learn
        xi = take(X, np.array([i]))
        scores[i] = det.score_many(xi)[0]
        det.learn_many(xi)
    assert roc_auc_score(y, scores) >= 0.5


def test_bad_config_raises():
    with pytest.raises(ValueError):
        EWMAZScore(alpha=0.0)
    with pytest.raises(ValueError):
        SeasonalProfile(bucket_s=0)
    with pytest.raises(ValueError):
        RobustMAD(size=2)
    with pytest.raises(TypeError):
        BatchModel(object(), ("mean",))
    with pytest.raises(ValueError):
        ContextNovelty(n_bins=1)


def test_ensemble_state_round_trip():
    from models.ensemble import Ensemble
    from models.presets import default_ensemble

    X, _ = make_stream(0)
    ens = default_ensemble(components=("ewma_value", "seasonal", "mad"))
    ens.process(take(X, np.arange(600)))
    clone = Ensemble.from_state(pickle.loads(pickle.dumps(ens.to_state())))
    rest = take(X, np.arange(600, 1200))
    a, b = ens.process(rest), clone.process(rest)
    np.testing.assert_array_equal(a.score, b.score)
    assert set(a.explain(0)) >= {"fired", "actual", "expected", "severity", "top"}


def test_default_ensemble_state_round_trip_keeps_calibration():
    """The shipped default (calibrated, with cooldown) resumes identically from a checkpoint."""
    from models.ensemble import Ensemble
    from models.presets import default_ensemble

    X, _ = make_stream(0, n=800)
    ens = default_ensemble()
    assert ens.calibrate
    ens.process(take(X, np.arange(1200)))
    clone = Ensemble.from_state(pickle.loads(pickle.dumps(ens.to_state())))
    rest = take(X, np.arange(1200, 2400))
    a, b = ens.process(rest), clone.process(rest)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.score.max() > 0  # calibration has warmed up: scores are not all zero


def test_score_likelihood_calibrates_per_series():
    """The same raw score is unusual on a quiet series and usual on a noisy one."""
    from models.likelihood import ScoreLikelihood

    rng = np.random.default_rng(0)
    lk = ScoreLikelihood(min_windows=20)
    s = np.array([0, 1])
    for _ in range(300):
        lk.learn(s, np.array([rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.9)]))
    quiet, noisy = lk.score(s, np.array([0.7, 0.7]))
    assert quiet > 0.5 > noisy
    before = lk.state.copy()
    lk.score(s, np.array([1.0, 1.0]))
    np.testing.assert_array_equal(before, lk.state)  # scoring does not mutate
    with pytest.raises(ValueError):
        ScoreLikelihood(alpha=0.0)


def test_default_ensemble_is_independent_of_batch_split_and_checkpoints():
    """Regression pin for the live worker's kill -9 test: [w1..wN] in one call equals the same
    windows split into arbitrary batches, with a to_state/from_state round trip in between."""
    from models.ensemble import Ensemble
    from models.presets import default_ensemble

    X, _ = make_stream(3, n=700)  # interleaved series, injected spikes
    n = len(X["series"])
    whole = default_ensemble().process(X)
    assert whole.score.max() > 0.5  # calibration, record gate and cooldown all take part
    ens = default_ensemble()
    parts = []
    for lo, hi in [(0, 40), (40, 41), (41, 977), (977, 1500), (1500, n)]:
        parts.append(ens.process(take(X, np.arange(lo, hi))).score)
        ens = Ensemble.from_state(pickle.loads(pickle.dumps(ens.to_state())))
    np.testing.assert_array_equal(np.concatenate(parts), whole.score)


def test_record_gate_damps_spikes_smaller_than_the_series_record():
    """After a series produced 12-sigma spikes, an 8-sigma one is damped; a new record is not."""
    from models.baselines import EWMAZScore
    from models.ensemble import Ensemble

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 3000)
    x[1000:2500:400] += 12
    x[2600] += 8
    x[2900] += 40
    X = {"series": np.zeros(x.size, np.int64), "mean": x}
    sc = {}
    for half in (0.0, 8000.0):
        ens = Ensemble({"ewma": EWMAZScore(alpha=0.01)}, calibrate=True, record_halflife=half)
        sc[half] = ens.process(X).score
    assert sc[8000.0][1000] == sc[0.0][1000] > 0.5  # the first spike is a record
    assert sc[8000.0][2600] < sc[0.0][2600] - 0.05  # smaller than the record: damped
    assert sc[8000.0][2900] == sc[0.0][2900] > 0.5  # a new record keeps its score
    with pytest.raises(ValueError):
        Ensemble({"ewma": EWMAZScore()}, record_halflife=-1)
