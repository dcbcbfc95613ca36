"""The records that cross layers (``core.records``, ``core.reasons``): alert events and their
JSON payload, dead-letter reasons and the tables that document them."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from core.batch import DeadLetter
from core.reasons import DlqReason
from core.records import AlertEvent, alert_id, iso_z
from pipeline.stages import normalize

ROOT = Path(__file__).resolve().parents[2]

#: the keys of ``alert_events.payload``, the alert topic's records and SSE frames (+ ``seq``)
PAYLOAD_KEYS = [
    "event_key",
    "alert_id",
    "kind",
    "state",
    "tenant_id",
    "host",
    "metric",
    "value",
    "severity",
    "ts_event",
    "opened_at",
    "rule",
    "threshold",
    "message",
    "score",
    "explanation",
    "model_version",
    "event_id",
]


def event(**kw) -> AlertEvent:
    ts = kw.pop("ts", 1_780_000_123.456789)
    base = dict(
        alert_id=alert_id("acme", "web-1", "cpu", "cpu_high", ts),
        kind="open",
        tenant_id="acme",
        host="web-1",
        metric="cpu",
        value=97.5,
        severity="critical",
        ts=ts,
        opened_at=ts,
        rule="cpu_high",
        threshold=90,
        message="cpu on web-1 is 97.5",
        score=1.0,
        explanation={"components": ["threshold"], "actual": 97.5},
        model_version=None,
        event_id="e1",
    )
    return AlertEvent(**{**base, **kw})


def test_payload_has_the_stored_keys_in_order_and_seq_once_stored():
    ev = event()
    assert list(ev.to_dict()) == PAYLOAD_KEYS
    assert list(ev.stored(42).to_dict()) == [*PAYLOAD_KEYS, "seq"]
    d = ev.to_dict()
    assert d["event_key"] == f"{ev.alert_id}:open:{ev.ts!r}" and d["state"] == "open"
    assert d["ts_event"] == "2026-05-28T20:28:43.456789Z" == iso_z(ev.ts)
    assert event(kind="resolve").to_dict()["state"] == "resolved"


@pytest.mark.parametrize("ts", [1_780_000_123.456789, 1_780_000_060.0, 0.1 + 0.2, 1e-7])
def test_round_trip_through_json_is_exact(ts):
    """From the stored payload (no ``ts``) the event time comes back bit for bit: the event key
    and the alert's identity do not move on the way through PostgreSQL or the alert topic."""
    ev = event(ts=ts, opened_at=ts).stored(7)
    back = AlertEvent.from_dict(orjson.loads(orjson.dumps(ev.to_dict())))
    assert back == ev and back.ts == ts and back.event_key == ev.event_key
    # records that carry ``ts`` (producers before AlertEvent) read the same
    assert AlertEvent.from_dict({**ev.to_dict(), "ts": ts}) == ev
    # ``explanation`` takes part in equality (not in the hash)
    assert back != ev.__class__(**{**_fields(ev), "explanation": {}})
    assert hash(back) == hash(ev)


def _fields(ev: AlertEvent) -> dict:
    return {k: getattr(ev, k) for k in ev.__dataclass_fields__}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"kind": "reopen"}, ValueError),
        ({"severity": "info"}, ValueError),
        ({"event_key": "x:open:1.0"}, ValueError),  # does not match the transition
        ({"alert_id": None}, KeyError),  # removed below
    ],
)
def test_a_record_that_is_not_an_alert_event_is_refused(change, error):
    d = event().to_dict()
    d.update(change)
    if change.get("alert_id", "") is None:
        del d["alert_id"]
    with pytest.raises(error):
        AlertEvent.from_dict(d)


def test_dead_letter_reasons_are_dlq_reasons():
    d = DeadLetter(b"x", "ts_too_old", "late", stage="detect")
    assert d.reason is DlqReason.TS_TOO_OLD and d.reason == "ts_too_old"
    assert d.reason.encode() == b"ts_too_old" and f"{d.reason}" == "ts_too_old"
    assert orjson.dumps({"reason": d.reason}) == b'{"reason":"ts_too_old"}'
    for bad in ("late", "", "TS_TOO_OLD", None):
        with pytest.raises(ValueError):
            DeadLetter(b"x", bad, "")


def readme_reasons() -> dict[str, str]:
    """``reason -> stage`` of the table in README's dead-letter section."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \| [^|]+ \|$", text, flags=re.M)
    return dict(rows)


def test_readme_lists_every_reason_code_with_its_stage():
    rows = readme_reasons()
    assert list(rows) == [r.value for r in DlqReason]  # every code, in the enum's order
    assert rows == {r.value: r.stage for r in DlqReason}


def test_normalize_docstring_table_lists_every_reason_code():
    table = normalize.__doc__.split("=\n", 2)[2].split("\n====")[0]  # the rows after the header
    codes = re.findall(r"^([a-z_]+) {2,}", table, flags=re.M)
    assert codes == [r.value for r in DlqReason]
