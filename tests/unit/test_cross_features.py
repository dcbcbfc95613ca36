"""Per-host cross-metric features vs a slow per-row pure-Python reference; edge cases."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import features.cross
from features.cross import CROSS_FEATURES, DEVIATION_Z, Z_MAX, change_z, cross_metric_features


def ref_z(count, mean, std, change) -> float:
    """The module docstring's definition, one window at a time."""
    if not count >= 2:  # also False for NaN
        return 0.0
    cands = [x for x in (abs(mean), abs(mean - change)) if not math.isnan(x)]
    floor = 1e-9 * max(cands) if cands else math.nan
    if math.isnan(std):
        denom = floor
    elif math.isnan(floor):
        denom = std
    else:
        denom = max(std, floor)
    if math.isnan(denom) or not denom > 0:
        return 0.0
    z = abs(change) / denom
    if math.isnan(z):
        return 0.0
    return min(z, Z_MAX)


def reference(host, start, X, thr=DEVIATION_Z):
    n = len(host)
    z = [
        ref_z(float(X["count"][i]), float(X["mean"][i]), float(X["std"][i]), float(X["change"][i]))
        for i in range(n)
    ]
    out = {k: [] for k in CROSS_FEATURES}
    for i in range(n):
        group = [j for j in range(n) if host[j] == host[i] and start[j] == start[i]]
        others = [z[j] for j in group if j != i]
        out["host_metrics"].append(len(group))
        out["host_deviating"].append(sum(1 for v in others if v >= thr))
        out["host_max_z"].append(max(others) if others else 0.0)
        out["host_mean_z"].append(math.fsum(others) / len(others) if others else 0.0)
    return out


def random_windows(seed: int, n: int = 400):
    rng = np.random.default_rng(seed)
    host = rng.integers(0, 25, n)
    start = 60.0 * rng.integers(0, 6, n)
    X = {
        "count": rng.integers(0, 8, n),
        "mean": rng.normal(50, 30, n),
        "std": np.abs(rng.normal(0, 2, n)),
        "change": rng.normal(0, 4, n),
    }
    # awkward rows: constant windows, constant and moved, zero mean, NaN, inf
    k = rng.choice(n, 60, replace=False)
    X["std"][k[:15]] = 0.0
    X["change"][k[:5]] = 0.0
    X["mean"][k[15:20]] = 0.0
    X["change"][k[15:18]] = 0.0
    X["std"][k[20:25]] = np.nan
    X["change"][k[25:30]] = np.nan
    X["mean"][k[30:35]] = np.nan
    X["std"][k[35:38]] = np.inf
    X["change"][k[38:40]] = -np.inf
    X["change"][k[40:50]] *= 100  # far out
    return host, start, X


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_slow_per_row_reference(seed):
    host, start, X = random_windows(seed)
    got = cross_metric_features(host, start, X)
    want = reference(host.tolist(), start.tolist(), X)
    assert got["host_metrics"].dtype == got["host_deviating"].dtype == np.int64
    assert got["host_max_z"].dtype == got["host_mean_z"].dtype == np.float64
    np.testing.assert_array_equal(got["host_metrics"], want["host_metrics"])
    np.testing.assert_array_equal(got["host_deviating"], want["host_deviating"])
    np.testing.assert_array_equal(got["host_max_z"], want["host_max_z"])
    # a group sum minus the row's own z: equal up to rounding (Z_MAX rows are in the sums)
    np.testing.assert_allclose(got["host_mean_z"], want["host_mean_z"], rtol=1e-12, atol=1e-9)
    assert all(np.isfinite(got[k]).all() for k in CROSS_FEATURES)
    assert (got["host_mean_z"] >= 0).all() and (got["host_mean_z"] <= got["host_max_z"]).all()
    assert (got["host_deviating"] > 0).any() and (got["host_deviating"] == 0).any()
    # a stricter threshold counts fewer metrics, never more
    strict = cross_metric_features(host, start, X, threshold=10.0)
    np.testing.assert_array_equal(
        strict["host_deviating"],
        reference(host.tolist(), start.tolist(), X, 10.0)["host_deviating"],
    )
    assert (strict["host_deviating"] <= got["host_deviating"]).all()


def test_row_order_and_host_code_values_do_not_matter():
    host, start, X = random_windows(7)
    base = cross_metric_features(host, start, X)
    perm = np.random.default_rng(1).permutation(host.size)
    relabel = (host * 7919 + 13)[perm]  # other codes, same grouping
    out = cross_metric_features(relabel, start[perm], {k: v[perm] for k, v in X.items()})
    for k in CROSS_FEATURES:  # bit for bit: live and training see the same values
        np.testing.assert_array_equal(out[k], base[k][perm])


def test_single_metric_host_and_other_windows_of_the_same_host():
    X = {
        "count": np.array([6, 6, 6]),
        "mean": np.array([1.0, 2.0, 3.0]),
        "std": np.array([1.0, 1.0, 1.0]),
        "change": np.array([50.0, 50.0, 0.0]),
    }
    # host 1 alone; host 2 has two windows at *different* starts: never grouped together
    out = cross_metric_features(np.array([1, 2, 2]), np.array([0.0, 0.0, 60.0]), X)
    assert out["host_metrics"].tolist() == [1, 1, 1]
    assert out["host_deviating"].tolist() == [0, 0, 0]
    assert out["host_max_z"].tolist() == [0.0, 0.0, 0.0]
    assert out["host_mean_z"].tolist() == [0.0, 0.0, 0.0]


def test_zero_std_constant_metric_that_moves_deviates_and_one_that_stays_does_not():
    X = {
        "count": np.array([6, 6, 6, 6]),
        "mean": np.array([40.0, 7.0, 0.0, 5.0]),
        "std": np.array([0.0, 0.0, 0.0, 1.0]),
        "change": np.array([10.0, 0.0, 0.0, 0.5]),
    }
    z = change_z(X["count"], X["mean"], X["std"], X["change"])
    assert z.tolist() == [Z_MAX, 0.0, 0.0, 0.5]
    out = cross_metric_features(np.zeros(4, np.int64), np.zeros(4), X)
    assert out["host_metrics"].tolist() == [4] * 4
    assert out["host_deviating"].tolist() == [0, 1, 1, 1]  # only the jumping constant counts
    assert out["host_max_z"].tolist() == [0.5, Z_MAX, Z_MAX, Z_MAX]
    np.testing.assert_allclose(
        out["host_mean_z"], [0.5 / 3, (Z_MAX + 0.5) / 3, (Z_MAX + 0.5) / 3, Z_MAX / 3]
    )


def test_nan_inf_and_single_sample_windows_give_finite_output():
    X = {
        "count": np.array([1, 6, 6, 6, 6, 6]),
        "mean": np.array([5.0, np.nan, 5.0, 5.0, 5.0, np.nan]),
        "std": np.array([0.0, 1.0, np.nan, 1.0, np.inf, np.nan]),
        "change": np.array([9.0, 4.0, 4.0, np.nan, 4.0, np.nan]),
    }
    z = change_z(X["count"], X["mean"], X["std"], X["change"])
    # one sample: no spread to judge by; NaN mean: std alone; NaN std: the relative floor
    assert z.tolist() == [0.0, 4.0, Z_MAX, 0.0, 0.0, 0.0]
    out = cross_metric_features(np.zeros(6, np.int64), np.zeros(6), X)
    assert all(np.isfinite(v).all() for v in out.values())
    assert out["host_metrics"].tolist() == [6] * 6  # a NaN window still was reported
    assert out["host_deviating"].tolist() == [2, 1, 1, 2, 2, 2]


def test_ties_at_the_top_and_threshold_is_inclusive():
    X = {
        "count": np.full(3, 6),
        "mean": np.full(3, 10.0),
        "std": np.ones(3),
        "change": np.array([3.0, 3.0, 1.0]),
    }
    out = cross_metric_features(np.zeros(3, np.int64), np.zeros(3), X)
    assert out["host_max_z"].tolist() == [3.0, 3.0, 3.0]
    assert out["host_mean_z"].tolist() == [2.0, 2.0, 3.0]
    assert out["host_deviating"].tolist() == [1, 1, 2]


def test_empty_input_and_bad_arguments():
    e = {k: np.empty(0) for k in ("count", "mean", "std", "change")}
    out = cross_metric_features(np.empty(0, np.int64), np.empty(0), e)
    assert [out[k].dtype for k in CROSS_FEATURES] == [np.int64, np.int64, np.float64, np.float64]
    assert all(out[k].size == 0 for k in CROSS_FEATURES)
    X = {k: np.ones(2) for k in ("count", "mean", "std", "change")}
    with pytest.raises(ValueError):
        cross_metric_features(np.zeros(3, np.int64), np.zeros(3), X)
    with pytest.raises(TypeError):
        cross_metric_features(np.zeros(2), np.zeros(2), X)
    with pytest.raises(ValueError):
        cross_metric_features(np.zeros(2, np.int64), np.zeros(2), X, threshold=0.0)


def test_docstring_examples():
    res = doctest.testmod(features.cross)
    assert res.attempted >= 3 and res.failed == 0
