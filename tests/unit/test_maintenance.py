"""Maintenance windows: windows inside one are scored but not learnt, so a deploy does not
become the series' new normal; silences and matchers as Alertmanager's."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from core.records import iso_z
from core.silences import Silence, new_silence, parse_matcher
from models.rules import RuleSet
from pipeline.stages.detect.stage import DetectStage, Maintenance
from pipeline.stages.normalize import NormalizeConfig, Normalizer

T0 = 1_780_000_000.0 - (1_780_000_000.0 % 3600)


def batch(values, start=T0, step=10.0, host="web-1"):
    raws = [
        orjson.dumps(
            {
                "tenant_id": "acme",
                "host": host,
                "metric": "latency_ms",
                "value": v,
                "ts_event": iso_z(start + i * step, "milliseconds"),
                "unit": "ms",
                "tags": {},
            }
        )
        for i, v in enumerate(values)
    ]
    b, dead = Normalizer(NormalizeConfig(max_past_age_s=1e12))(
        raws, "raw", [0] * len(raws), range(len(raws))
    )
    assert not dead
    b.partition = np.zeros(len(b), np.int64)
    return b


def run(maint: Maintenance | None):
    """6 h of a noisy level ~50, then 1 h at ~400 (the deploy) and 3 more hours at ~50; then
    one more hour at ~400: is it still anomalous?"""
    rng = np.random.default_rng(3)
    st = DetectStage(RuleSet([]), window_s=60.0, lateness_s=0.0)
    if maint is not None:
        st.maintenance = maint
    n = 360 * 6
    vals = np.r_[50 + rng.normal(0, 3, n), 400 + rng.normal(0, 3, 360), 50 + rng.normal(0, 3, 1080)]
    for lo in range(0, vals.size, 360):
        st(batch(vals[lo : lo + 360].round(3).tolist(), start=T0 + lo * 10.0))
    t_again = T0 + vals.size * 10.0
    out = st(batch((400 + rng.normal(0, 3, 120)).round(3).tolist(), start=t_again))
    again = out.windows.score if len(out.windows) else np.zeros(0)
    count = st.partition(0).ensemble._count.sum()
    return st, float(np.max(again)) if again.size else 0.0, count


def test_windows_in_a_maintenance_window_are_scored_but_not_learnt():
    deploy_start = T0 + 360 * 6 * 10.0
    w = Silence(
        "mw", "acme", (parse_matcher("metric=latency_ms"),), deploy_start, deploy_start + 3600.0
    )
    plain, score_plain, n_plain = run(None)
    maint, score_maint, n_maint = run(Maintenance({"acme": (w,)}))
    assert maint.maintenance_windows >= 59 and plain.maintenance_windows == 0
    assert n_plain - n_maint == maint.maintenance_windows
    # the deploy's level was never learnt, so seeing it again still scores high
    assert score_maint > score_plain
    assert score_maint >= 0.5


def test_a_window_of_another_tenant_or_series_is_learnt():
    w = Silence("mw", "other", (), T0, T0 + 10 * 86400)
    st, _, _ = run(Maintenance({"other": (w,)}))
    assert st.maintenance_windows == 0
    w = Silence("mw", "acme", (parse_matcher("host=db-1"),), T0, T0 + 10 * 86400)
    st, _, _ = run(Maintenance({"acme": (w,)}))
    assert st.maintenance_windows == 0


@pytest.mark.parametrize(
    "text, labels, hit",
    [
        ("host=web-1", {"host": "web-1"}, True),
        ("host!=web-1", {"host": "web-1"}, False),
        ("host=~web-.*", {"host": "web-12"}, True),
        ("host=~web", {"host": "web-12"}, False),  # anchored, as Alertmanager's
        ("host!~db-.*", {"host": "web-1"}, True),
        ("env=prod", {"host": "x"}, False),  # a missing label is ""
        ("env!=prod", {"host": "x"}, True),
        ('env="prod"', {"env": "prod"}, True),
    ],
)
def test_matchers(text, labels, hit):
    assert parse_matcher(text).matches(labels) is hit


@pytest.mark.parametrize("bad", ["host", "=x", "host=~(", "9x=1", "ho st=x"])
def test_bad_matchers_say_why(bad):
    with pytest.raises(ValueError, match="matcher"):
        parse_matcher(bad)


def test_recurring_window_and_states():
    # every Saturday 02:00 UTC for 2 h
    w = new_silence("acme", [], now=T0, schedule="0 2 * * 6", duration_s=7200)
    iv = w.intervals(T0, T0 + 15 * 86400)
    assert len(iv) == 2 and all(b - a == 7200 for a, b in iv.tolist())
    assert w.state(float(iv[0][0]) + 60) == "active"
    assert w.state(float(iv[0][1]) + 60) == "scheduled"
    s = new_silence("acme", [], now=T0, duration_s=60)
    assert s.state(T0 + 30) == "active" and s.state(T0 + 61) == "expired"
    with pytest.raises(ValueError, match="cron"):
        new_silence("acme", [], now=T0, schedule="0 2 * *", duration_s=60)
    with pytest.raises(ValueError, match="past"):
        new_silence("acme", [], now=T0, ends_at=T0 - 1)
