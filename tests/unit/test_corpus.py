"""The synthetic evaluation corpus (training/corpus.py): deterministic, well-formed, labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.corpus import KINDS, SENSORS, write_corpus
from training.evaluate import load_windows

SCALE = 0.2


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=3, scale=SCALE)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, corpus):
    again = _files(write_corpus(tmp_path / "again", seed=3, scale=SCALE))
    assert again == _files(corpus)
    other = _files(write_corpus(tmp_path / "other", seed=4, scale=SCALE))
    assert other.keys() == again.keys()
    differ = [k for k in again if k.endswith(".csv") and again[k] != other[k]]
    # every series with noise differs (the flat constant line is the same for any seed)
    assert len(differ) >= len(again) - 3


def test_files_parse_and_windows_lie_inside_their_series(corpus):
    windows = load_windows(corpus / "windows.json")
    csvs = sorted(
        p.relative_to(corpus / "data").as_posix() for p in (corpus / "data").rglob("*.csv")
    )
    assert sorted(windows) == csvs
    for rel, wins in windows.items():
        df = pd.read_csv(corpus / "data" / rel)
        assert list(df.columns) == ["timestamp", "value"], rel
        ts = pd.to_datetime(df["timestamp"], format="%Y-%m-%d %H:%M:%S")
        assert ts.is_monotonic_increasing and ts.is_unique, rel
        assert np.isfinite(df["value"]).all() and len(df) >= 200, rel
        prev_end = None
        for a, b in wins:
            a, b = pd.Timestamp(a), pd.Timestamp(b)
            assert ts.iloc[0] <= a <= b <= ts.iloc[-1], (rel, a, b)
            assert prev_end is None or a > prev_end, f"{rel}: windows overlap or are unsorted"
            prev_end = b
            # NAB's format, microseconds included
        assert all(len(x) == len("2014-04-01 00:00:00.000000") for w in wins for x in w), rel


def test_every_kind_is_labelled_and_has_every_anomaly_type(corpus):
    windows = load_windows(corpus / "windows.json")
    anomalies = json.loads((corpus / "anomalies.json").read_text())
    assert sorted({k.split("/")[0] for k in windows}) == sorted(KINDS)
    for kind in KINDS:
        assert any(w for k, w in windows.items() if k.startswith(kind + "/")), kind
    types = {a["type"] for v in anomalies.values() for a in v}
    for t in ("level_shift", "spike", "ramp", "variance", "surge", "drop", "incident", "stuck"):
        assert t in types, t
    assert {"bearing_wear", "valve_leak", "blockage", "cavitation"} & types
    # the cloud kinds carry a series without anomaly (benign bursts, periodic jobs)
    for kind in ("cloudCPU", "cloudNetwork", "cloudDisk", "cloudLatency", "burstyCounts"):
        assert any(not w for k, w in windows.items() if k.startswith(kind + "/")), kind


def test_each_anomaly_starts_inside_a_window_of_its_file(corpus):
    windows = load_windows(corpus / "windows.json")
    anomalies = json.loads((corpus / "anomalies.json").read_text())
    for rel, items in anomalies.items():
        spans = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in windows[rel]]
        assert bool(items) == bool(spans), rel
        for a in items:
            start = pd.Timestamp(a["start"])
            assert any(lo <= start <= hi for lo, hi in spans), (rel, a)


def test_nab_window_length_is_a_tenth_of_the_rows_per_anomaly(corpus):
    windows = load_windows(corpus / "windows.json")
    df = pd.read_csv(
        corpus / "data" / "cloudCPU" / "cpu_level_shift.csv", parse_dates=["timestamp"]
    )
    ((a, b),) = windows["cloudCPU/cpu_level_shift.csv"]
    inside = int(((df.timestamp >= pd.Timestamp(a)) & (df.timestamp <= pd.Timestamp(b))).sum())
    assert abs(inside - 0.1 * len(df)) <= 2


def test_machine_faults_are_their_own_windows_on_several_sensors(corpus):
    windows = load_windows(corpus / "windows.json")
    anomalies = json.loads((corpus / "anomalies.json").read_text())
    machines = {k.split("/")[1].split(".")[0] for k in windows if k.startswith("machineSensors/")}
    assert len(machines) == 3
    for m in machines:
        names = sorted(k for k in windows if k.startswith(f"machineSensors/{m}."))
        assert [n.split(".")[1] for n in names] == sorted(SENSORS)
        starts: dict[str, int] = {}
        for n in names:
            assert [list(w) for w in windows[n]] == [
                [a["start"] + ".000000", a["end"] + ".000000"] for a in anomalies[n]
            ]
            for a in anomalies[n]:
                starts[a["start"]] = starts.get(a["start"], 0) + 1
                span = pd.Timestamp(a["end"]) - pd.Timestamp(a["start"])
                assert pd.Timedelta(seconds=10) <= span <= pd.Timedelta(minutes=20)
        assert starts and all(c >= 3 for c in starts.values()), (m, starts)


def test_cpu_is_bounded_and_full_size_fits_the_budget(tmp_path):
    root = write_corpus(tmp_path, seed=0)
    rows = 0
    for p in (root / "data").rglob("*.csv"):
        v = pd.read_csv(p)["value"]
        rows += len(v)
        if p.parent.name == "cloudCPU":
            assert v.between(0, 100).all()
    assert 100_000 <= rows <= 160_000  # ~10 s of backtest


def test_scale_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        write_corpus(tmp_path, scale=0)
