"""Records that cross layers: alert events and the time format they carry.

An :class:`AlertEvent` is one transition of one alert (``open``, ``escalate``, ``deescalate``,
``resolve``). The detect stage makes them (threshold rules and window scores alike), the sink
stores them (``alert_events`` + ``alerts``), the runner publishes them on the alert topic, the
API and the SSE feed serve them. On the wire and in ``alert_events.payload`` it is the JSON
object of :meth:`AlertEvent.to_dict` (every field but ``ts``; ``seq`` once stored), read back
with :meth:`AlertEvent.from_dict`. An :class:`OpenAlert` is what the rule tracker re-arms after a
restart: an ``alerts`` row that is still open.

>>> ev = AlertEvent(alert_id=alert_id("acme", "web-1", "cpu", "cpu_high", 60.0), kind="open",
...                 tenant_id="acme", host="web-1", metric="cpu", value=97.0,
...                 severity="critical", ts=60.0, opened_at=60.0, rule="cpu_high",
...                 threshold=95.0, message="cpu on web-1 is 97", score=1.0,
...                 explanation={}, model_version=None, event_id="e1")
>>> ev.state, ev.ts_event, ev.event_key == f"{ev.alert_id}:open:60.0"
('open', '1970-01-01T00:01:00Z', True)
>>> AlertEvent.from_dict(ev.to_dict()) == ev
True
>>> AlertEvent.from_dict(ev.stored(7).to_dict()).seq
7
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

#: alert transitions, in the order an alert can go through them
KINDS = ("open", "escalate", "deescalate", "resolve")
#: alert severities, mildest first
SEVERITIES = ("warning", "critical")


def iso_z(ts: float, timespec: str = "auto") -> str:
    """Epoch seconds as ISO 8601 UTC with a ``Z`` suffix; ``timespec`` as
    :meth:`datetime.isoformat`'s (``auto``: microseconds when present).

    >>> iso_z(0.0), iso_z(1.5)
    ('1970-01-01T00:00:00Z', '1970-01-01T00:00:01.500000Z')
    >>> iso_z(1.5, "milliseconds"), iso_z(1.5, "seconds")
    ('1970-01-01T00:00:01.500Z', '1970-01-01T00:00:01Z')
    """
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def alert_id(tenant: str, host: str, metric: str, rule: str, opened_at: float) -> str:
    """The id of the alert a series opens under ``rule`` at event time ``opened_at``.

    Deterministic, so a replayed batch re-opens the same alert (and writes nothing new).

    >>> alert_id("acme", "web-1", "cpu", "cpu_high", 60.0)
    'e6bb969b96601ded4702db3c'
    """
    h = hashlib.blake2b(f"{tenant}|{host}|{metric}|{rule}|{opened_at!r}".encode(), digest_size=12)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert transition (immutable; ``seq`` is set once the sink has stored it).

    Equality compares every field (``explanation`` included); the hash leaves ``explanation``
    out (a dict). ``kind`` and ``severity`` are checked on creation, so a record read from a
    topic with other values is refused (``ValueError``) rather than stored.
    """

    alert_id: str
    kind: str  #: one of :data:`KINDS`
    tenant_id: str
    host: str
    metric: str
    value: float  #: the reading (rules) or the window mean (scores)
    severity: str  #: ``warning`` | ``critical``
    ts: float  #: event time of the transition, epoch seconds
    opened_at: float  #: event time the alert opened, epoch seconds
    rule: str  #: the rule's name, or ``anomaly:ensemble`` for score alerts
    threshold: float
    message: str
    score: float
    explanation: dict[str, Any] = field(hash=False)
    model_version: str | None
    event_id: str  #: the event (or ``window:…``) that caused the transition
    seq: int | None = None  #: ``alert_events.seq`` once stored

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert event kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}"
            )

    @property
    def state(self) -> str:
        return "resolved" if self.kind == "resolve" else "open"

    @property
    def ts_event(self) -> str:
        return iso_z(self.ts)

    @property
    def event_key(self) -> str:
        """Unique per transition: a replay of the same transition has the same key."""
        return f"{self.alert_id}:{self.kind}:{self.ts!r}"

    @property
    def partition_key(self) -> str:
        """The Kafka key of the alert topic's record: ``tenant_id|host``, as the inputs'."""
        return f"{self.tenant_id}|{self.host}"

    def stored(self, seq: int) -> AlertEvent:
        return replace(self, seq=seq)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the alert topic, ``alert_events.payload``, SSE and the API."""
        d = {
            "event_key": self.event_key,
            "alert_id": self.alert_id,
            "kind": self.kind,
            "state": self.state,
            "tenant_id": self.tenant_id,
            "host": self.host,
            "metric": self.metric,
            "value": self.value,
            "severity": self.severity,
            "ts_event": self.ts_event,
            "opened_at": self.opened_at,
            "rule": self.rule,
            "threshold": self.threshold,
            "message": self.message,
            "score": self.score,
            "explanation": self.explanation,
            "model_version": self.model_version,
            "event_id": self.event_id,
        }
        if self.seq is not None:
            d["seq"] = self.seq
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertEvent:
        """Back from :meth:`to_dict` (a payload read from PostgreSQL or the alert topic).

        The event time is the one ``event_key`` ends with (``repr`` of the float: exact, so the
        key and the id of the transition survive the round trip bit for bit); ``ts`` when given
        (records of producers that sent it); else ``ts_event`` (microseconds). Raises
        ``KeyError`` for a missing field and ``ValueError`` for a bad one.
        """
        ts = d.get("ts")
        if ts is None and "event_key" in d:
            ts = str(d["event_key"]).rpartition(":")[2]
        if ts is None:
            ts = datetime.fromisoformat(str(d["ts_event"]).replace("Z", "+00:00")).timestamp()
        opt: dict[str, Any] = {"seq": d.get("seq"), "model_version": d.get("model_version")}
        ev = cls(ts=float(ts), **{k: d[k] for k in _REQUIRED}, **opt)
        if "event_key" in d and d["event_key"] != ev.event_key:
            raise ValueError(
                f"event_key {d['event_key']!r} does not match the transition ({ev.event_key!r})"
            )
        return ev


_REQUIRED = tuple(
    f.name for f in fields(AlertEvent) if f.name not in ("ts", "seq", "model_version")
)


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert that is open in storage (``alerts.state = 'open'``): what the rule tracker
    re-arms after a restart or a rebalance (:func:`storage.alerts.load_open_alerts`)."""

    alert_id: str
    tenant_id: str
    host: str
    metric: str
    severity: str  #: ``warning`` | ``critical``
    opened_at: float  #: event time the alert opened, epoch seconds
    last_ts: float  #: event time of its latest transition, epoch seconds
    rule: str
