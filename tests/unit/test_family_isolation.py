"""A tenant's values never reach another tenant's detector state (metric families per tenant)."""

from __future__ import annotations

import numpy as np

from core.batch import MetricBatch
from models.rules import RuleSet
from pipeline.stages.detect.stage import DetectStage


def _batch(rows: list[tuple[str, str, float, float]]) -> MetricBatch:
    n = len(rows)

    def obj(xs):
        a = np.empty(n, dtype=object)
        a[:] = xs
        return a

    return MetricBatch(
        obj([f"e{i}-{r[0]}" for i, r in enumerate(rows)]),
        obj([r[0] for r in rows]),
        obj([r[1] for r in rows]),
        obj(["cpu_load"] * n),
        np.asarray([r[3] for r in rows]),
        np.asarray([r[2] for r in rows]),
        obj(["percent"] * n),
        obj([None] * n),
        np.zeros(n, np.int64),
    )


def _b_windows(with_a: bool) -> list[tuple[float, dict, float]]:
    """(score, components, expected) of tenant B's windows, 150 minutes, with a level shift at
    minute 140; optionally with tenant A sending 1e300-sized (finite) ``cpu_load`` readings on
    the same partition for the first 120 minutes."""
    det = DetectStage(RuleSet([]), window_s=60.0, lateness_s=0.0)
    t0 = 1_700_000_000.0
    out = []
    for k in range(150):
        rows = []
        for j in range(6):
            ts = t0 + k * 60 + j * 10
            rows.append(("b", "hb", ts, 20.0 + (k % 3) + (30.0 if k == 140 else 0.0)))
            if with_a and k < 120:
                rows.append(("a", "ha", ts, 1e300 * (1 + (k % 5))))
        o = det(_batch(rows))
        if o.windows is not None and len(o.windows):
            w = o.windows
            out += [
                (float(w.score[i]), w.components[i], float(w.expected[i]))
                for i in np.flatnonzero(w.tenant_id == "b")
            ]
    return out


def test_another_tenants_extreme_values_do_not_change_a_tenants_scores():
    """Regression: metric families were keyed by metric name alone, so tenant A's 1e300-sized
    ``cpu_load`` readings overflowed the family prior of the slow EWMA that tenant B's young
    ``cpu_load`` series lean on (17 of B's 150 windows scored differently)."""
    with np.errstate(over="ignore", invalid="ignore"):
        alone, mixed = _b_windows(with_a=False), _b_windows(with_a=True)
    assert len(alone) == len(mixed) == 150
    for (s0, c0, e0), (s1, c1, e1) in zip(alone, mixed, strict=True):
        assert (s0, c0) == (s1, c1)
        assert (e0 == e1) or (np.isnan(e0) and np.isnan(e1))
