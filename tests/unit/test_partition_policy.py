"""Partition arithmetic of storage.partitions (no database) and the partition settings'
validation."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from pydantic import ValidationError

from core.settings import Settings
from storage import partitions
from storage.partitions import Partition, PartitionPolicy, Partitions, uncovered


def test_partitions_doctests():
    assert doctest.testmod(partitions).failed == 0


def test_buckets_of_a_column_cover_its_min_max_and_every_value_between():
    p = Partitions(PartitionPolicy(interval_s=3600))
    assert p.buckets(np.array([7200.5, 7300.0])) == [2]
    assert p.buckets(np.array([3599.0, 3600.0])) == [0, 1]
    # far apart: only the buckets that hold values, not the whole span
    assert p.buckets(np.array([0.0, 10 * 3600.0, 3600.0 * 1e6])) == [0, 10, 1_000_000]
    assert p.buckets(np.array([])) == []


def test_uncovered_pieces_never_overlap_existing_partitions():
    parts = [Partition("a", 0, 86400), Partition("b", 86400 + 6 * 3600, 2 * 86400)]
    assert uncovered(86400, 2 * 86400, parts) == [(86400, 86400 + 6 * 3600)]
    assert uncovered(0, 86400, parts) == []


@pytest.mark.parametrize("hours", [5, 7, 25, 36])
def test_partition_interval_must_divide_a_day_or_be_whole_days(hours):
    with pytest.raises(ValidationError, match="partition_interval_hours"):
        Settings(_env_file=None, partition_interval_hours=hours)


def test_policy_from_settings():
    s = Settings(_env_file=None, partition_interval_hours=6, retention_scores_days=3)
    p = PartitionPolicy.from_settings(s)
    assert p.interval_s == 6 * 3600 and p.retention_days["scores"] == 3
    assert p.retention_days["metrics"] == 14
