"""Silences and maintenance windows: matchers, when they are active, and which alerts they mute.

A :class:`Silence` has Alertmanager-style matchers over an alert's *labels* — ``host``,
``metric``, ``severity``, ``rule``, ``alertname`` and the host's inventory tags (``env``,
``role``, …; a tag never shadows one of the built-in names) — and is active either from
``starts_at`` to ``ends_at`` (a one-off silence) or, for a *maintenance window*, for
``duration_s`` after every time its ``schedule`` (a 5-field cron expression, UTC) fires, between
``starts_at`` and ``ends_at``. Every matcher must match (``and``); an empty list matches every
alert of the tenant. The tenant is never a matcher: a silence belongs to one tenant and is
only ever compared with that tenant's alerts.

Both kinds keep matching alerts from being notified (they are still stored and shown, marked
silenced); a maintenance window also keeps its windows out of baseline learning and out of
training data, so a deploy does not become the new normal.

>>> m = parse_matcher("host=~web-.*")
>>> m, m.matches({"host": "web-1"}), m.matches({"host": "db-1"})
(Matcher(name='host', op='=~', value='web-.*'), True, False)
>>> s = Silence(id="s1", tenant_id="acme", matchers=(m, parse_matcher("env!=dev")),
...             starts_at=0.0, ends_at=3600.0)
>>> s.mutes({"host": "web-1", "env": "prod"}, 10.0), s.mutes({"host": "web-1"}, 4000.0)
(True, False)
>>> w = Silence(id="w1", tenant_id="acme", matchers=(), starts_at=0.0, ends_at=10 * 86400.0,
...             schedule="0 2 * * *", duration_s=1800.0, kind="maintenance")
>>> [w.active_at(t) for t in (2 * 3600.0, 2 * 3600.0 + 1799, 2 * 3600.0 + 1800, 3600.0)]
[True, True, False, False]
>>> w.intervals(0.0, 2 * 86400.0).tolist()
[[7200.0, 9000.0], [93600.0, 95400.0]]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np

from core.records import iso_z

#: matcher operators, as Alertmanager's: equal, not equal, regex match, regex non-match
OPS = ("=", "!=", "=~", "!~")
#: kinds of silence
KINDS = ("silence", "maintenance")
#: label names every alert has (tags of the host's inventory are added beside them)
BUILTIN_LABELS = ("host", "metric", "severity", "rule", "alertname")
#: longest duration of one maintenance occurrence
MAX_DURATION_S = 7 * 86400.0
#: a maintenance window expands into at most this many occurrences per query range
MAX_OCCURRENCES = 20_000

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Matcher:
    """``name op value``; regexes are anchored (match the whole label value), as Alertmanager's.

    A label the alert does not have compares as the empty string (``env!=prod`` matches an
    alert of a host without an ``env`` tag).
    """

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"matcher label {self.name!r} is not a label name (letters, digits, _ . -)"
            )
        if self.op not in OPS:
            raise ValueError(f"matcher operator {self.op!r} is not one of {' '.join(OPS)}")
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as e:
                raise ValueError(
                    f"matcher {self.name}{self.op}{self.value}: bad regex: {e}"
                ) from None

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(f"(?:{self.value})\\Z")

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = self._regex.match(v) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op, "value": self.value}


def parse_matcher(text: str | Mapping[str, Any]) -> Matcher:
    """A matcher from ``"name=value"`` (``=``, ``!=``, ``=~``, ``!~``) or ``{name, op, value}``.

    >>> str(parse_matcher(' metric = cpu ')), parse_matcher({"name": "env", "value": "prod"}).op
    ('metric=cpu', '=')
    """
    if isinstance(text, Mapping):
        return Matcher(
            str(text.get("name", "")), str(text.get("op", "=")), str(text.get("value", ""))
        )
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(
            f"matcher {text!r} is not 'label=value' (operators: {' '.join(OPS)}), e.g. host=web-1"
        )
    value = m.group(3)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return Matcher(m.group(1), m.group(2), value)


def check_schedule(schedule: str) -> str:
    """The schedule, checked: a 5-field cron expression (minute hour day month weekday, UTC)."""
    from croniter import croniter

    fields_ = schedule.split()
    if len(fields_) != 5 or not croniter.is_valid(schedule):
        raise ValueError(
            f"schedule {schedule!r} is not a 5-field cron expression"
            " (minute hour day-of-month month day-of-week, UTC), e.g. '0 2 * * 6'"
        )
    return " ".join(fields_)


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence (``starts_at``–``ends_at``) or a recurring maintenance window (``schedule``)."""

    id: str
    tenant_id: str
    matchers: tuple[Matcher, ...]
    starts_at: float  #: epoch seconds
    ends_at: float  #: epoch seconds (``inf``: a maintenance window with no end)
    schedule: str | None = None  #: cron (UTC); ``None``: active for the whole span
    duration_s: float = 0.0  #: length of each occurrence of ``schedule``
    kind: str = "silence"
    author: str = ""
    comment: str = ""
    created_at: float = 0.0
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"silence kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.ends_at > self.starts_at:
            raise ValueError("a silence must end after it starts (ends_at > starts_at)")
        if self.schedule is not None:
            check_schedule(self.schedule)
            if not 0 < self.duration_s <= MAX_DURATION_S:
                raise ValueError(
                    f"a maintenance window's duration must be between 1 s and"
                    f" {MAX_DURATION_S / 86400:g} days, got {self.duration_s:g} s"
                )

    # -- time --------------------------------------------------------------------------------
    def intervals(self, since: float, until: float) -> np.ndarray:
        """``(k, 2)`` array of ``[start, end)`` spans during which it is active that overlap
        ``[since, until)``, in order (a recurring schedule is expanded)."""
        lo, hi = max(since, self.starts_at), min(until, self.ends_at)
        if not hi > lo:
            return np.zeros((0, 2))
        if self.schedule is None:
            return np.array([[lo, hi]])
        key = (lo, hi)
        got = self._cache.get(key)
        if got is not None:
            return got
        from croniter import croniter

        it = croniter(self.schedule, datetime.fromtimestamp(lo - self.duration_s, UTC))
        spans: list[list[float]] = []
        while len(spans) < MAX_OCCURRENCES:
            t = float(it.get_next(float))
            if t >= hi:
                break
            a, b = max(t, self.starts_at), min(t + self.duration_s, self.ends_at)
            if b > lo and b > a:
                spans.append([a, b])
        out = np.array(spans, np.float64).reshape(-1, 2)
        if len(self._cache) > 8:
            self._cache.clear()
        self._cache[key] = out
        return out

    def active_at(self, t: float) -> bool:
        if self.schedule is None:
            return self.starts_at <= t < self.ends_at
        return bool(len(self.intervals(t, t + 1e-6)))

    def active_mask(self, ts: np.ndarray, until: np.ndarray | None = None) -> np.ndarray:
        """bool per time of ``ts`` (or per span ``[ts, until)``): the silence is active then
        (for a span: at some time of it). Vectorized; occurrences may overlap (a duration longer
        than the schedule's period).

        >>> w = new_silence("a", [], now=0.0, schedule="0 * * * *", duration_s=30)
        >>> w.active_mask(np.array([10.0, 40.0, 40.0]), np.array([11.0, 41.0, 3601.0])).tolist()
        [True, False, True]
        """
        ts = np.asarray(ts, np.float64)
        end = ts + 1e-6 if until is None else np.asarray(until, np.float64)
        if not ts.size:
            return np.zeros(0, bool)
        iv = self.intervals(float(ts.min()), float(end.max()))
        if not len(iv):
            return np.zeros(ts.size, bool)
        # the last occurrence starting before the span ends; the latest end among those up to
        # it (a running max) tells whether any of them reaches into the span
        k = np.searchsorted(iv[:, 0], end, side="left") - 1
        reach = np.maximum.accumulate(iv[:, 1])
        return (k >= 0) & (reach[np.maximum(k, 0)] > ts)

    # -- labels ------------------------------------------------------------------------------
    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def mutes(self, labels: Mapping[str, str], t: float) -> bool:
        return self.active_at(t) and self.matches(labels)

    def state(self, now: float) -> str:
        """``pending`` (not started), ``active`` (in force now), ``expired`` (ended); a
        maintenance window between occurrences is ``scheduled``."""
        if now >= self.ends_at:
            return "expired"
        if now < self.starts_at:
            return "pending"
        return "active" if self.active_at(now) else "scheduled"

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "matchers": [m.to_dict() for m in self.matchers],
            "starts_at": iso_z(self.starts_at),
            "ends_at": iso_z(self.ends_at) if np.isfinite(self.ends_at) else None,
            "schedule": self.schedule,
            "duration_s": self.duration_s if self.schedule else None,
            "author": self.author,
            "comment": self.comment,
            "created_at": iso_z(self.created_at),
        }
        if now is not None:
            d["state"] = self.state(now)
        return d


def alert_labels(
    host: str, metric: str, severity: str, rule: str, tags: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The labels silences and channel filters match an alert by (tags never override the
    built-in names)."""
    labels = {str(k): str(v) for k, v in (tags or {}).items() if k not in BUILTIN_LABELS}
    labels.update(
        host=host,
        metric=metric,
        severity=severity,
        rule=rule,
        alertname=alertname(rule),
    )
    return labels


def alertname(rule: str) -> str:
    """The ``alertname`` label of an alert: the rule's name, ``anomaly`` for score alerts.

    >>> alertname("cpu_high"), alertname("anomaly:ensemble")
    ('cpu_high', 'anomaly')
    """
    return rule.split(":", 1)[0] if rule.startswith("anomaly") else rule


def silencing(silences: Iterable[Silence], labels: Mapping[str, str], t: float) -> list[str]:
    """Ids of the silences that mute an alert with ``labels`` at time ``t``."""
    return [s.id for s in silences if s.mutes(labels, t)]


def new_silence(
    tenant: str,
    matchers: Iterable[str | Mapping[str, Any]],
    *,
    now: float,
    starts_at: float | None = None,
    ends_at: float | None = None,
    duration_s: float | None = None,
    schedule: str | None = None,
    author: str = "",
    comment: str = "",
) -> Silence:
    """A new silence, checked (``ValueError`` with the reason otherwise).

    Without ``schedule``: active from ``starts_at`` (default now) to ``ends_at`` or for
    ``duration_s``. With ``schedule``: a maintenance window, active ``duration_s`` after every
    time the cron schedule fires, between ``starts_at`` (default now) and ``ends_at`` (default:
    no end).

    >>> s = new_silence("acme", ["host=web-1"], now=100.0, duration_s=3600)
    >>> (s.kind, s.starts_at, s.ends_at, len(s.id))
    ('silence', 100.0, 3700.0, 32)
    >>> new_silence("acme", [], now=0.0, schedule="0 3 * * 0", duration_s=7200).kind
    'maintenance'
    >>> new_silence("acme", [], now=0.0)
    Traceback (most recent call last):
    ...
    ValueError: a silence needs an end: give ends_at or a duration
    """
    import uuid

    # whole microseconds, as PostgreSQL stores them (a silence read back starts when it said)
    start = round(now if starts_at is None else float(starts_at), 6)
    ms = tuple(parse_matcher(m) for m in matchers)
    if schedule is not None:
        if not duration_s:
            raise ValueError(
                "a maintenance window needs a duration (how long each occurrence lasts)"
            )
        end = float("inf") if ends_at is None else float(ends_at)
        return Silence(
            uuid.uuid4().hex,
            tenant,
            ms,
            start,
            end,
            check_schedule(schedule),
            float(duration_s),
            "maintenance",
            author,
            comment,
            now,
        )
    if ends_at is None and not duration_s:
        raise ValueError("a silence needs an end: give ends_at or a duration")
    end = float(ends_at) if ends_at is not None else start + float(duration_s or 0)
    if end <= now:
        raise ValueError("the silence would end in the past: give a later end or a duration")
    return Silence(
        uuid.uuid4().hex, tenant, ms, start, end, None, 0.0, "silence", author, comment, now
    )


def maintenance_mask(
    windows: Iterable[Silence],
    ts: np.ndarray,
    codes: np.ndarray,
    labels_of: Callable[[int], Mapping[str, str]],
    until: np.ndarray | None = None,
) -> np.ndarray:
    """bool per row: the row (an event at ``ts``, or a window ``[ts, until)``, of the series
    ``codes[i]``) lies in (a window: overlaps) one of the maintenance ``windows`` (all of one
    tenant) that matches its series' labels (``labels_of(code)``: host, metric, inventory
    tags). Time is vectorized; the matchers are evaluated once per series in force.

    >>> w = new_silence("acme", ["host=web-1"], now=0.0, schedule="0 * * * *", duration_s=600)
    >>> names = {0: {"host": "web-1"}, 1: {"host": "db-1"}}
    >>> maintenance_mask([w], np.array([60.0, 60.0, 1200.0]), np.array([0, 1, 0]),
    ...                  names.__getitem__).tolist()
    [True, False, False]
    """
    ts = np.asarray(ts, np.float64)
    codes = np.asarray(codes)
    out = np.zeros(ts.size, bool)
    for w in windows:
        hit = w.active_mask(ts, until) & ~out
        if not hit.any():
            continue
        if not w.matchers:
            out |= hit
            continue
        idx = np.flatnonzero(hit)
        uniq, inv = np.unique(codes[idx], return_inverse=True)
        ok = np.array([w.matches(labels_of(int(c))) for c in uniq.tolist()], bool)
        out[idx[ok[inv]]] = True
    return out
