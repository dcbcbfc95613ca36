import numpy as np
import pytest

from core.batch import MetricBatch
from core.records import OpenAlert
from models.rules import ConfigError, RuleSet, RulesFile, parse_duration
from pipeline.stages.detect.rule_alerts import RuleAlerts

RULES = """
[[rule]]
metric = "cpu_load"
warning = 80
critical = 90
hysteresis = 5

[[rule]]
metric = "mem"
warning = 90
for = "2m"

[[rule]]
metric = "free_disk"
warning = 10
critical = 5
direction = "below"

[[rule]]
metric = "cpu_load"
tenant = "strict"
warning = 50
critical = 60
"""


def batch(rows):
    """rows: (tenant, host, metric, value, ts)"""
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    t, h, m, v, ts = zip(*rows, strict=True)
    n = len(rows)
    return MetricBatch(
        obj([f"e{i}" for i in range(n)]),
        obj(t),
        obj(h),
        obj(m),
        np.array(v, float),
        np.array(ts, float),
        obj([""] * n),
        obj([None] * n),
    )


def kinds(out):
    return [(e.kind, e.severity) for e in out.events]


def test_mvp_sample_event_opens_critical_alert():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    out = d(batch([("acme", "host-a", "cpu_load", 92, 1000.0)]))
    assert kinds(out) == [("open", "critical")]
    e = out.events[0]
    assert e.tenant_id == "acme" and e.value == 92 and e.threshold == 90
    assert e.state == "open" and e.alert_id


def test_escalate_hysteresis_and_resolve():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    rows = [
        ("a", "h", "cpu_load", v, float(i))
        for i, v in enumerate([50, 85, 86, 92, 88, 86, 84, 76, 74])
    ]
    out = d(batch(rows))
    # 85 warn opens, 92 escalates, 88 stays critical (hysteresis 5: clears below 85),
    # 84 -> warning, 76 stays warning (clears below 75), 74 resolves
    assert kinds(out) == [
        ("open", "warning"),
        ("escalate", "critical"),
        ("deescalate", "warning"),
        ("resolve", "warning"),
    ]
    assert len({e.alert_id for e in out.events}) == 1


def test_state_carries_across_batches_and_healthy_series_are_forgotten():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    assert kinds(d(batch([("a", "h", "cpu_load", 95, 1.0)]))) == [("open", "critical")]
    assert kinds(d(batch([("a", "h", "cpu_load", 94, 2.0)]))) == []
    assert kinds(d(batch([("a", "h", "cpu_load", 10, 3.0)]))) == [("resolve", "critical")]
    assert d.series == {}


def test_for_duration_holds_before_firing():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    out = d(batch([("a", "h", "mem", 95, t) for t in (0.0, 60.0, 119.0)]))
    assert kinds(out) == []
    out = d(batch([("a", "h", "mem", 95, 120.0)]))
    assert kinds(out) == [("open", "warning")]


def test_for_duration_resets_when_value_drops():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    out = d(
        batch(
            [
                ("a", "h", "mem", 95, 0.0),
                ("a", "h", "mem", 50, 60.0),
                ("a", "h", "mem", 95, 90.0),
                ("a", "h", "mem", 95, 180.0),
            ]
        )
    )
    assert kinds(out) == []


def test_direction_below_and_tenant_override():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    out = d(
        batch(
            [
                ("a", "h", "free_disk", 4, 0.0),
                ("strict", "h", "cpu_load", 61, 0.0),
                ("other", "h", "cpu_load", 61, 0.0),
            ]
        )
    )
    assert sorted(kinds(out)) == [("open", "critical"), ("open", "critical")]
    assert {e.tenant_id for e in out.events} == {"a", "strict"}


def test_out_of_order_events_in_a_batch_are_sorted_by_event_time():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    out = d(batch([("a", "h", "cpu_load", 10, 5.0), ("a", "h", "cpu_load", 95, 1.0)]))
    assert kinds(out) == [("open", "critical"), ("resolve", "critical")]


def test_replay_gives_same_event_keys():
    rows = [("a", "h", "cpu_load", v, float(i)) for i, v in enumerate([50, 95, 10])]
    k1 = [e.event_key for e in RuleAlerts(RuleSet.from_toml(RULES))(batch(rows)).events]
    k2 = [e.event_key for e in RuleAlerts(RuleSet.from_toml(RULES))(batch(rows)).events]
    assert k1 == k2 and len(k1) == 2


def test_restore_rearms_open_alert():
    d = RuleAlerts(RuleSet.from_toml(RULES))
    d.restore(
        [
            OpenAlert(
                alert_id="x",
                tenant_id="a",
                host="h",
                metric="cpu_load",
                severity="critical",
                opened_at=1.0,
                last_ts=1.0,
                rule="cpu_load",
            )
        ]
    )
    assert kinds(d(batch([("a", "h", "cpu_load", 95, 2.0)]))) == []
    out = d(batch([("a", "h", "cpu_load", 10, 3.0)]))
    assert kinds(out) == [("resolve", "critical")] and out.events[0].alert_id == "x"


@pytest.mark.parametrize(
    "text",
    [
        "[[rule]]\nwarning=1",
        '[[rule]]\nmetric="m"',
        '[[rule]]\nmetric="m"\nwarning=10\ncritical=5',
        '[[rule]]\nmetric="m"\nwarning=1\nfor="soon"',
        '[[rule]]\nmetric="m"\nwarning=1\nbogus=1',
        '[[rule]]\nmetric="m"\nwarning=1\n[[rule]]\nmetric="m"\nwarning=2',
        "not toml ===",
    ],
)
def test_bad_rules_raise(text):
    with pytest.raises(ConfigError):
        RuleSet.from_toml(text)


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("1h") == 3600 and parse_duration(0) == 0


def test_rules_file_hot_reload(tmp_path):
    p = tmp_path / "rules.toml"
    p.write_text('[[rule]]\nmetric="m"\nwarning=1\n')
    rf = RulesFile(p)
    assert not rf.poll()
    import os

    p.write_text('[[rule]]\nmetric="m"\nwarning=5\n')
    os.utime(p, ns=(rf._mtime + 10**9, rf._mtime + 10**9))
    assert rf.poll() and rf.rules.rules[0].warning == 5
    p.write_text("broken ===")
    os.utime(p, ns=(rf._mtime + 2 * 10**9, rf._mtime + 2 * 10**9))
    with pytest.raises(ConfigError):
        rf.poll()


def test_default_rules_file_loads():
    from core.settings import Settings

    rs = RuleSet.load(Settings().rules_path)
    cpu = [r for r in rs.rules if r.metric == "cpu_load"][0]
    assert (cpu.warning, cpu.critical, cpu.for_s) == (80, 90, 0)
