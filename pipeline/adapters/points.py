"""Points of a standard protocol as EventOps events: the shared half of the OTLP and
remote-write adapters.

An adapter decodes a request and appends one point per sample to a :class:`Points` buffer
(host, metric, value, time, unit, tags). :meth:`Points.encode` then makes each point the JSON
event an agent would have sent, ready for the normalize stage, which validates it like any
other (a NaN value, a time far in the future or too many tags dead-letter there, with the
event as their original bytes). Nothing is validated here that normalize already checks.

**Event ids** are deterministic: ``<protocol>:<hash>`` of (tenant, host, metric, tags, time
in ns). Senders retry a request they did not see acknowledged (OTLP exporters and Prometheus
both do), and a retried point gets the id of its first delivery, so the sink keeps one row.

**Counters become rates.** A cumulative counter (an OTLP monotonic cumulative sum, a
Prometheus ``_total``) carries no anomaly in its level, only in its slope; :class:`Deltas`
keeps the last (time, value) of each counter series and gives the per-second increase since
then — a counter reset (a smaller value) counts as an increase from zero, as Prometheus'
``rate()`` does. The first point of a counter gives a rate only when its start time is known
(OTLP ``start_time_unix_nano``: the counter was zero then); otherwise it is the baseline and
yields no event (``skipped``). A point at the time of the last one (a retry) gives the same
rate again, so its event id and value repeat. The state is per process and bounded
(:attr:`Deltas.max_series`, least recently seen evicted).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson

#: OTLP (UCUM) units -> the unit names normalize knows (others pass through lower-cased)
UCUM_UNITS = {
    "1": "ratio",
    "By": "bytes",
    "KiBy": "kib",
    "MiBy": "mib",
    "GiBy": "gib",
    "KBy": "kb",
    "MBy": "mb",
    "GBy": "gb",
    "s": "s",
    "ms": "ms",
    "us": "us",
    "ns": "ns",
    "%": "%",
    "Cel": "celsius",
}


def otlp_unit(unit: str) -> str:
    """The EventOps unit of a UCUM unit; ``{annotations}`` (``{requests}``) are counts.

    >>> otlp_unit("By"), otlp_unit("{requests}"), otlp_unit("ms"), otlp_unit("By/s")
    ('bytes', 'count', 'ms', 'bytes/s')
    """
    if unit.startswith("{") and unit.endswith("}"):
        return "count"
    if unit in UCUM_UNITS:
        return UCUM_UNITS[unit]
    base, slash, per = unit.partition("/")
    if slash and base in UCUM_UNITS:
        return f"{UCUM_UNITS[base]}/{per}"
    return unit


def rate_unit(unit: str) -> str:
    """The unit of a counter's per-second rate (``bytes`` -> ``bytes/s``; none -> ``per_s``).

    >>> rate_unit(""), rate_unit("count"), rate_unit("bytes")
    ('per_s', 'per_s', 'bytes/s')
    """
    return "per_s" if unit in ("", "count", "ratio") else f"{unit}/s"


@dataclass
class Deltas:
    """Increases of cumulative counters, one state per series (see the module doc).

    A series' value is a tuple (one counter, or a histogram's count, sum and buckets); any
    component that went down means the series restarted, and the increase is then counted
    from zero.
    """

    max_series: int = 200_000
    #: key -> (t_last, v_last, t_prev, v_prev); prev is what t_last's increase was taken against
    _last: OrderedDict = field(default_factory=OrderedDict)

    def delta(
        self, key: tuple, t: float, v: tuple[float, ...], start: float = 0.0
    ) -> tuple[float, tuple[float, ...]] | None:
        """``(seconds, increase of each component)`` at ``t``, or None for a baseline point.

        >>> d = Deltas()
        >>> d.delta(("c",), 10.0, (100.0,)) is None, d.delta(("c",), 20.0, (150.0,))
        (True, (10.0, (50.0,)))
        >>> d.delta(("c",), 20.0, (150.0,)), d.delta(("c",), 30.0, (20.0,))  # a retry; a reset
        ((10.0, (50.0,)), (10.0, (20.0,)))
        >>> d.delta(("e",), 30.0, (60.0, 4.0), start=10.0)  # zero at its start time
        (20.0, (60.0, 4.0))
        """
        last = self._last.get(key)
        if last is not None:
            self._last.move_to_end(key)
            t_last, v_last, t_prev, v_prev = last
            if t == t_last:  # the same point again: the increase it had
                t0, v0 = t_prev, v_prev
            elif t > t_last:
                t0, v0 = t_last, v_last
                self._last[key] = (t, v, t_last, v_last)
            else:  # older than the newest point seen: nothing to take it against
                return None
        else:
            v0 = (0.0,) * len(v)
            self._last[key] = (t, v, start, v0)
            if len(self._last) > self.max_series:
                self._last.popitem(last=False)
            t0 = start
        if not (t0 > 0 and t > t0) or v0 is None or len(v0) != len(v):
            return None
        if any(a < b for a, b in zip(v, v0, strict=True)):  # a restart: counted from zero
            return t - t0, v
        return t - t0, tuple(a - b for a, b in zip(v, v0, strict=True))

    def rate(self, key: tuple, t: float, v: float, start: float = 0.0) -> float | None:
        """Per-second increase of a single counter (NaN in, NaN out), or None (baseline).

        >>> d = Deltas()
        >>> d.rate(("c",), 10.0, 100.0) is None, d.rate(("c",), 20.0, 150.0)
        (True, 5.0)
        """
        if not math.isfinite(v):
            return v
        got = self.delta(key, t, (v,), start)
        return None if got is None else got[1][0] / got[0]

    def __len__(self) -> int:
        return len(self._last)


#: what a point's value is written as in the event when it is not a finite float (normalize
#: reads these literals and dead-letters the event ``non_finite``; orjson would write null)
_NON_FINITE = {math.inf: b"Infinity", -math.inf: b"-Infinity"}


def dumps(obj: object) -> bytes:
    """JSON of ``obj`` with sorted keys; text orjson refuses (a lone surrogate) is escaped by
    the stdlib encoder instead, so normalize sees it and dead-letters the event (``bad_text``).

    >>> dumps({"b": 1, "a": "x"}), dumps({"a": chr(0xD800)})
    (b'{"a":"x","b":1}', b'{"a": "\\\\ud800"}')
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, sort_keys=True, default=str).encode()


@dataclass
class Points:
    """Points of one request, as columns, turned into event bytes by :meth:`encode`."""

    protocol: str
    hosts: list[str] = field(default_factory=list)
    metrics: list[str | None] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # epoch seconds
    units: list[str] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)
    #: points the request held that yield no event by a documented rule (baselines of
    #: counters, Prometheus staleness markers, points flagged "no recorded value")
    skipped: int = 0

    def add(
        self, host: str, metric: str | None, value: float, t: float, unit: str, tags: dict
    ) -> None:
        self.hosts.append(host)
        self.metrics.append(metric)
        self.values.append(value)
        self.times.append(t)
        self.units.append(unit)
        self.tags.append(tags)

    def add_invalid(self, host: str, metric: str | None, t: float, tags: dict, why: str) -> None:
        """A point that cannot be read as a number: an event whose value is the reason (text),
        which normalize dead-letters as ``bad_type`` — the letter's bytes say why."""
        self.add(host, metric, math.nan, t, "", {**tags, "eventops.invalid": why})

    def __len__(self) -> int:
        return len(self.values)

    def encode(self, tenant: str) -> tuple[list[bytes], list[bytes]]:
        """``(event bytes, Kafka key)`` of every point, keyed ``tenant|host``."""
        blake = hashlib.blake2b
        proto = self.protocol
        raws: list[bytes] = []
        keys: list[bytes] = []
        for host, metric, value, t, unit, tags in zip(
            self.hosts, self.metrics, self.values, self.times, self.units, self.tags, strict=True
        ):
            why = tags.get("eventops.invalid") if tags else None
            if why is not None:
                tags = {k: v for k, v in tags.items() if k != "eventops.invalid"}
            tag_bytes = dumps(tags) if tags else b"{}"
            h = blake(digest_size=12)
            h.update(f"{tenant}\0{host}\0{metric}\0{round(t * 1e9)}\0".encode("utf-8", "replace"))
            h.update(tag_bytes)
            ev: dict = {
                "tenant_id": tenant,
                "host": host,
                "event_id": f"{proto}:{h.hexdigest()}",
                "ts_event": t,
                "unit": unit,
                "tags": tags,
            }
            if metric is not None:  # no name: normalize dead-letters it (missing_field)
                ev["metric"] = metric
            if why is not None:
                ev["value"] = why
                raw = dumps(ev)
            elif math.isfinite(value):
                ev["value"] = value
                raw = dumps(ev)
            else:
                lit = _NON_FINITE.get(value, b"NaN")
                raw = dumps(ev)[:-1] + b',"value":' + lit + b"}"
            raws.append(raw)
            keys.append(f"{tenant}|{host}".encode("utf-8", "replace"))
        return raws, keys
