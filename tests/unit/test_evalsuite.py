"""eventops eval (training/evalsuite.py): leave-one-kind-out logic, the sets, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.presets import DEFAULTS
from training.backtest import BacktestConfig, run_backtest
from training.evalsuite import SETS, _pooled_run, _Runs, loko_select, run_eval, write_simulated
from training.evaluate import PROFILES, LabelledSeries, auc_scores, evaluate, load_windows

TS = pd.date_range("2024-01-01", periods=400, freq="5min").to_numpy()


def _series(name: str, hit: float, windows=True) -> LabelledSeries:
    sc = np.zeros(TS.size)
    sc[200] = hit
    return LabelledSeries(name, TS, sc, [(TS[195], TS[230])] if windows else [])


def test_loko_chooses_by_the_other_kinds_only():
    # X detects the anomalies of kinds a and b and misses c's; Y does the opposite
    x = evaluate([_series("a/1.csv", 0.9), _series("b/1.csv", 0.9), _series("c/1.csv", 0.0),
                  _series("quiet/1.csv", 0.0, windows=False)])  # fmt: skip
    y = evaluate([_series("a/1.csv", 0.0), _series("b/1.csv", 0.0), _series("c/1.csv", 0.9),
                  _series("quiet/1.csv", 0.95, windows=False)])  # fmt: skip
    sel = loko_select({"X": x, "Y": y})
    folds = {f["kind"]: f for f in sel["folds"]}
    assert sorted(folds) == ["a", "b", "c"]  # a kind without windows is no fold
    c = folds["c"]
    # chosen on a + b, where X is clearly better, although Y is perfect on c
    assert c["candidate"] == "X" and c["train"]["X"] > 90 > c["train"]["Y"]
    assert c["test"]["standard"] == 0.0 and set(c["test_by_candidate"]) == {"X", "Y"}
    assert c["no_anomaly_series"] == 1 and c["no_anomaly_fp"]["standard"] == 0
    # fold a: trained on b + c, where X hits b and Y hits c but also fires on quiet/1
    assert folds["a"]["train"]["X"] > folds["a"]["train"]["Y"]
    assert folds["a"]["candidate"] == "X" and folds["a"]["test"]["standard"] > 90
    assert sel["mean"]["standard"] == pytest.approx(
        np.mean([f["test"]["standard"] for f in folds.values()])
    )
    # pooled: the left-out kinds as one corpus (2 of 3 windows hit at the same place)
    assert sel["pooled"]["standard"] == pytest.approx(2 / 3 * folds["a"]["test"]["standard"])
    fixed = loko_select({"X": x, "Y": y}, fixed="Y")
    assert {f["candidate"] for f in fixed["folds"]} == {"Y"}
    # Y's training thresholds on folds a and b must fire on quiet/1 (0.95): counted apart
    assert {f["kind"]: f["no_anomaly_fp"]["standard"] for f in fixed["folds"]}["b"] == 1


def test_auc_uses_belief_when_given_and_none_for_one_class():
    sc = np.zeros(TS.size)
    belief = np.zeros(TS.size)
    belief[195:231] = 0.7  # the window, as a sustained belief
    s = LabelledSeries("a/1.csv", TS, sc, [(TS[195], TS[230])], belief=belief)
    r = auc_scores([s])
    assert (r["roc"], r["pr"], r["signal"]) == (1.0, 1.0, "belief")
    assert r["positives"] == 36 and r["rows"] == TS.size - int(0.15 * TS.size)
    flat = auc_scores([_series("a/1.csv", 0.0)])
    assert flat["roc"] == 0.5 and flat["signal"] == "scores"
    assert auc_scores([_series("q/1.csv", 0.3, windows=False)])["roc"] is None
    with pytest.raises(ValueError, match="belief"):
        LabelledSeries("x", TS, sc, [], belief=np.zeros(3))


def _write_kind(root: Path, kind: str, name: str, v: np.ndarray, windows: list) -> dict:
    ts = pd.date_range("2024-01-01", periods=v.size, freq="5min")
    (root / "data" / kind).mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": np.round(v, 4)}).to_csv(
        root / "data" / kind / name, index=False
    )
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return {f"{kind}/{name}": [[ts[a].strftime(fmt), ts[b].strftime(fmt)] for a, b in windows]}


@pytest.fixture(scope="module")
def tiny_nab(tmp_path_factory) -> Path:
    """Three labelled kinds and a kind without anomalies, 1000 rows per series."""
    root = tmp_path_factory.mktemp("nab")
    rng = np.random.default_rng(5)
    n = 1000
    w: dict = {}
    for j in range(2):  # alpha: clear spikes
        v = rng.normal(10, 1, n)
        v[600 + 50 * j] += 40
        w |= _write_kind(root, "alpha", f"a{j}.csv", v, [(550 + 50 * j, 650 + 50 * j)])
    v = rng.normal(50, 2, n)  # beta: a level shift
    v[700:] += 30
    w |= _write_kind(root, "beta", "b0.csv", v, [(650, 750)])
    # trap: heavy-tailed noise whose window holds nothing: detecting costs, silence is best
    v = 20 + rng.standard_t(2, n) * 3
    w |= _write_kind(root, "trap", "t0.csv", v, [(500, 600)])
    w |= _write_kind(root, "quiet", "q0.csv", rng.normal(5, 0.5, n), [])
    (root / "windows.json").write_text(json.dumps(w))
    return root


def test_run_eval_loko_on_a_tiny_nab_dir(tmp_path, tiny_nab):
    deaf = {"weights": {c: 0.0 for c in DEFAULTS["components"]}}  # scores 0 everywhere
    res = run_eval(tiny_nab, tmp_path, configs={"default": {}, "deaf": deaf}, sets=("loko",))
    lk = res["loko"]
    assert lk["kinds"] == ["alpha", "beta", "quiet", "trap"]
    assert lk["folds_kinds"] == ["alpha", "beta", "trap"]
    folds = {f["kind"]: f for f in lk["selected"]["folds"]}
    for f in folds.values():
        best = max(f["train"], key=lambda c: f["train"][c])
        assert f["candidate"] == best
        assert f["train"]["deaf"] == 0.0 and f["no_anomaly_series"] == 1
    # on trap the deaf candidate would have done better; it was not chosen, trap was left out
    trap = folds["trap"]
    assert trap["candidate"] == "default"
    assert trap["test_by_candidate"]["deaf"] >= trap["test_by_candidate"]["default"]
    # the fold's training score is the score of a backtest of the other kinds alone
    other = tmp_path / "other"
    for p in (tiny_nab / "data").rglob("*.csv"):
        if p.parent.name != "trap":
            dest = other / "data" / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())
    windows = load_windows(tiny_nab / "windows.json")
    (other / "windows.json").write_text(
        json.dumps({k: v for k, v in windows.items() if not k.startswith("trap/")})
    )
    rep = run_backtest([other / "data"], other / "windows.json", tmp_path / "bt",
                       BacktestConfig(progress=False, write_csv=False))  # fmt: skip
    assert trap["train"]["default"] == pytest.approx(rep["evaluation"]["nab"]["standard"]["score"])
    d = lk["default"]
    assert d["name"] == "default"
    assert set(d["in_sample"]["nab"]) == set(PROFILES)
    assert {f["candidate"] for f in d["loko"]["folds"]} == {"default"}
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["loko"]["folds_kinds"] == lk["folds_kinds"]


def test_nab_dir_and_synthetic_are_also_scored_as_one_set_at_one_threshold(tmp_path, tiny_nab):
    res = run_eval(tiny_nab, tmp_path, configs={"default": {}}, sets=("loko", "synthetic"),
                   quick=True)  # fmt: skip
    nab, syn, pooled = res["loko"]["default"]["in_sample"], res["synthetic"], res["pooled"]
    assert pooled["series"] == nab["series"] + syn["series"]
    assert pooled["windows"] == nab["windows"] + syn["windows"]
    # every labelled window of both counts once, found or missed, at the one threshold
    assert pooled["events"]["tp"] + pooled["events"]["fn"] == pooled["windows"]
    assert set(pooled["per_kind"]) >= {"alpha", "machineSensors"}
    assert json.loads((tmp_path / "eval.json").read_text())["pooled"]["series"] == pooled["series"]
    # a series in both sets is refused, not silently overwritten
    with pytest.raises(ValueError, match="series also in"):
        _pooled_run(_Runs(tmp_path / "x"), tmp_path / "x", tiny_nab, tiny_nab)


def test_run_eval_quick_sets_and_ablation(tmp_path):
    res = run_eval(None, tmp_path, sets=SETS, quick=True, ablation=True)
    assert "no NAB-layout data" in res["skipped"]["loko"] and "loko" not in res
    for name in ("synthetic", "simulator"):
        r = res[name]
        assert set(r["nab"]) == set(PROFILES)
        assert {"precision", "recall", "f1"} <= set(r["events"])
        assert {"roc", "pr"} <= set(r["auc"]) and r["windows"] > 0
        assert all("fp_per_series_day" in k for k in r["per_kind"].values())
    assert "machineSensors" in res["synthetic"]["per_kind"]
    assert set(res["simulator"]["per_kind"]) == {"cpu_load", "latency_p99", "mem_used_pct",
                                                 "req_rate"}  # fmt: skip
    assert "default" in res["ablation"] and len(res["ablation"]) >= 2
    assert set(res["ablation"]["default"]) == {"overrides", "synthetic", "simulator"}
    # the default row reuses the runs of the sets
    assert (
        res["ablation"]["default"]["synthetic"]["standard"]
        == res["synthetic"]["nab"]["standard"]["score"]
    )
    assert json.loads((tmp_path / "eval.json").read_text())["sets"] == list(SETS)
    with pytest.raises(ValueError, match="unknown sets"):
        run_eval(None, tmp_path, sets=("bogus",))
    with pytest.raises(FileNotFoundError, match="NAB-layout"):
        run_eval(tmp_path / "missing", tmp_path, sets=("loko",))


def test_simulated_windows_cover_the_injected_anomalies(tmp_path):
    from pipeline.simulate import Simulator

    root = write_simulated(tmp_path / "a", seeds=(101,), hosts=2, days=1.0)
    again = write_simulated(tmp_path / "b", seeds=(101,), hosts=2, days=1.0)
    assert (root / "windows.json").read_bytes() == (again / "windows.json").read_bytes()
    windows = load_windows(root / "windows.json")
    assert len(windows) == 8 and all(k.split("/")[1].startswith("s101-host-") for k in windows)
    sim = Simulator(hosts=2, tenant="eval", seed=101, interval=60.0,
                    start=pd.Timestamp("2024-03-04").timestamp())  # fmt: skip
    for k in range(1440):
        sim.values(sim.start + 60.0 * k)
    assert sim.anomalies
    metric = {"cpu_spike": "cpu_load", "latency_spike": "latency_p99",
              "traffic_drop": "req_rate", "memory_leak": "mem_used_pct"}  # fmt: skip
    first = pd.Timestamp("2024-03-04")
    for a in sim.anomalies:
        t0 = pd.Timestamp(a.start, unit="s")
        padded = max(t0 - pd.Timedelta(minutes=5), first)
        spans = windows[f"{metric[a.kind]}/s101-{a.host}.csv"]
        assert any(pd.Timestamp(lo) <= padded and t0 <= pd.Timestamp(hi) for lo, hi in spans)
