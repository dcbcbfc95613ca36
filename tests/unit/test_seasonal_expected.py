"""Regression: the seasonal profile's expected value of a series it never learned."""

import numpy as np

from models.baselines import SeasonalProfile


def test_seasonal_expected_of_an_unlearned_series_does_not_depend_on_other_series_learning():
    # found by the fault suite: series 0's first window had expected 0.0 when series 1 had
    # learned before it (its row allocated with fill values) and NaN in an uninterrupted run
    # where both windows were scored in one batch
    X0 = {"series": np.array([0]), "start": np.array([3600.0]), "mean": np.array([5.0])}
    alone = SeasonalProfile()
    after_other = SeasonalProfile()
    after_other.learn_many(
        {"series": np.array([1]), "start": np.array([0.0]), "mean": np.array([7.0])}
    )
    e_alone, _ = alone.expected_many(X0)
    e_after, _ = after_other.expected_many(X0)
    assert np.isnan(e_alone[0]) and np.isnan(e_after[0])
    # once learned, the bucket has its expectation
    after_other.learn_many({**X0, "start": np.array([0.0])})
    assert after_other.expected_many({**X0, "start": np.array([0.0])})[0][0] == 5.0
