"""normalize: raw agent bytes -> validated :class:`MetricBatch` + dead letters.

Decoding is the only per-event Python work; every other check runs on columns (or on the
unique values of a column). Each rejected input becomes a :class:`DeadLetter` carrying the
original bytes and one reason code:

==================  ===============================================================
reason              meaning
==================  ===============================================================
too_large           message larger than ``max_message_bytes``
bad_encoding        not UTF-8
bad_json            not parseable as JSON
not_object          JSON, but not an object
missing_field       a required field is absent (detail names it)
bad_type            a field has the wrong type (detail names it)
non_finite          value is NaN or ±inf
bad_field           tenant/host/metric empty, too long or with forbidden characters
bad_event_id        event_id given but not a short string
ts_out_of_range     timestamp too far in the future or the past
unknown_tenant      tenant is not registered
bad_tags            tags not an object of string -> scalar
tag_too_large       a tag key/value longer than ``max_tag_value_bytes``
too_many_tags       more than ``max_tags`` tags
==================  ===============================================================

The event id is the agent's ``event_id`` when given, else ``<topic>:<partition>:<offset>``:
deterministic, so a replay produces the same ids and the sink drops the duplicates.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson

from pipeline.batch import DeadLetter, MetricBatch, factorize

REQUIRED = ("tenant_id", "host", "metric", "value", "ts_event")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,254}$")
_METRIC_SUB = re.compile(r"[\s\-/]+")

#: unit aliases -> (canonical unit, multiplier applied to the value)
UNITS: dict[str, tuple[str, float]] = {
    "": ("", 1.0),
    "%": ("percent", 1.0),
    "pct": ("percent", 1.0),
    "percent": ("percent", 1.0),
    "ratio": ("ratio", 1.0),
    "s": ("s", 1.0),
    "sec": ("s", 1.0),
    "secs": ("s", 1.0),
    "seconds": ("s", 1.0),
    "ms": ("s", 1e-3),
    "millis": ("s", 1e-3),
    "milliseconds": ("s", 1e-3),
    "us": ("s", 1e-6),
    "µs": ("s", 1e-6),
    "microseconds": ("s", 1e-6),
    "ns": ("s", 1e-9),
    "b": ("bytes", 1.0),
    "byte": ("bytes", 1.0),
    "bytes": ("bytes", 1.0),
    "kb": ("bytes", 1e3),
    "kib": ("bytes", 1024.0),
    "mb": ("bytes", 1e6),
    "mib": ("bytes", 1024.0**2),
    "gb": ("bytes", 1e9),
    "gib": ("bytes", 1024.0**3),
    "count": ("count", 1.0),
    "req/s": ("per_s", 1.0),
    "rps": ("per_s", 1.0),
    "/s": ("per_s", 1.0),
    "per_s": ("per_s", 1.0),
    "load": ("load", 1.0),
    "c": ("celsius", 1.0),
    "celsius": ("celsius", 1.0),
}


@dataclass(slots=True)
class NormalizeConfig:
    max_message_bytes: int = 1_000_000
    max_tag_value_bytes: int = 1024
    max_tags: int = 64
    max_future_skew_s: float = 300.0
    max_past_age_s: float = 7 * 24 * 3600.0
    #: accepted tenants; ``None`` accepts every well-formed tenant id
    known_tenants: frozenset[str] | None = None
    extra_units: dict[str, tuple[str, float]] = field(default_factory=dict)


def normalize_metric_name(name: str) -> str:
    """Canonical metric name: lower case, separators folded to ``_``.

    >>> normalize_metric_name("CPU-Load")
    'cpu_load'
    """
    return _METRIC_SUB.sub("_", name.strip()).lower()


def _parse_ts(v: object) -> float:
    """Event time as epoch seconds from RFC 3339 text or epoch seconds/milliseconds."""
    if isinstance(v, bool):
        raise TypeError("ts_event")
    if isinstance(v, int | float):
        x = float(v)
        return x / 1000.0 if x > 1e11 else x  # epoch milliseconds
    if isinstance(v, str):
        dt = datetime.fromisoformat(v.strip())  # Python 3.11 reads "Z" and most of RFC 3339
        if dt.tzinfo is None:
            raise ValueError("ts_event without a timezone")
        return dt.timestamp()
    raise TypeError("ts_event")


class Normalizer:
    """The normalize stage. Pure: no Kafka, no SQL; tenants are handed in as a set."""

    def __init__(self, config: NormalizeConfig | None = None) -> None:
        self.config = config or NormalizeConfig()
        self.units = {**UNITS, **self.config.extra_units}

    def __call__(
        self,
        raws: Sequence[bytes],
        topic: str = "",
        partitions: Sequence[int] | None = None,
        offsets: Sequence[int] | None = None,
        now: float | None = None,
    ) -> tuple[MetricBatch, list[DeadLetter]]:
        cfg = self.config
        n = len(raws)
        parts = partitions if partitions is not None else [-1] * n
        offs = offsets if offsets is not None else range(n)
        now = time.time() if now is None else now
        dead: list[DeadLetter] = []

        ids: list[str] = []
        tenants: list[str] = []
        hosts: list[str] = []
        metrics: list[str] = []
        values: list[float] = []
        tss: list[float] = []
        units: list[str] = []
        tags: list[dict | None] = []
        src: list[int] = []  # index of the raw input of each kept row

        def reject(i: int, reason: str, detail: str) -> None:
            dead.append(DeadLetter(bytes(raws[i]), reason, detail, topic, parts[i], offs[i]))

        loads = orjson.loads
        ts_cache: dict[str, float] = {}
        small = cfg.max_tag_value_bytes
        for i, raw in enumerate(raws):
            if len(raw) > cfg.max_message_bytes:
                reject(i, "too_large", f"{len(raw)} bytes > {cfg.max_message_bytes}")
                continue
            try:
                ev = loads(raw)
            except orjson.JSONDecodeError as e:
                reason, detail, ev = self._slow_decode(raw, e)
                if reason:
                    reject(i, reason, detail)
                    continue
            if not isinstance(ev, dict):
                reject(i, "not_object", f"top-level JSON is {type(ev).__name__}")
                continue
            get = ev.get
            t, h, m, v, tsv = get("tenant_id"), get("host"), get("metric"), get("value"), get("ts_event")
            if t is None or h is None or m is None or v is None or tsv is None:
                reject(i, "missing_field", ",".join(f for f in REQUIRED if get(f) is None))
                continue
            if not (isinstance(t, str) and isinstance(h, str) and isinstance(m, str)):
                bad = [k for k in ("tenant_id", "host", "metric") if not isinstance(ev[k], str)]
                reject(i, "bad_type", f"{','.join(bad)} must be a string")
                continue
            tv = type(v)
            if tv is not float and tv is not int:
                reject(i, "bad_type", "value must be a number")
                continue
            if type(tsv) is str and tsv in ts_cache:  # agents batch samples of one instant
                ts = ts_cache[tsv]
            else:
                try:
                    ts = _parse_ts(tsv)
                except (TypeError, ValueError, OverflowError) as e:
                    reject(i, "bad_type", f"ts_event: {e}"[:200])
                    continue
                if type(tsv) is str:
                    ts_cache[tsv] = ts
            u = get("unit", "")
            if not isinstance(u, str):
                reject(i, "bad_type", "unit must be a string")
                continue
            tg = get("tags")
            # a message shorter than the tag limit with no nested containers needs no tag walk
            if tg is not None and (type(tg) is not dict or len(tg) > cfg.max_tags or len(raw) > small
                                   or raw.count(b"{") > 2 or b"[" in raw):
                reason = self._check_tags(tg)
                if reason:
                    reject(i, *reason)
                    continue
                tg = tg or None
            eid = ev.get("event_id")
            if eid is None:
                eid = f"{topic}:{parts[i]}:{offs[i]}"
            elif not isinstance(eid, str) or not 0 < len(eid) <= 128:
                reject(i, "bad_event_id", "event_id must be a string of 1..128 chars")
                continue
            ids.append(eid)
            tenants.append(t)
            hosts.append(h)
            metrics.append(m)
            values.append(v)
            tss.append(ts)
            units.append(u)
            tags.append(tg)
            src.append(i)

        if not src:
            return MetricBatch.empty(), dead

        value = np.asarray(values, dtype=np.float64)
        ts = np.asarray(tss, dtype=np.float64)
        tenant = np.asarray(tenants, dtype=object)
        host = np.asarray(hosts, dtype=object)
        metric = np.asarray(metrics, dtype=object)
        unit = np.asarray(units, dtype=object)
        src_idx = np.asarray(src)
        ok = np.ones(len(src), dtype=bool)

        def drop(mask: np.ndarray, reason: str, detail_of) -> None:
            for j in np.flatnonzero(mask & ok):
                reject(int(src_idx[j]), reason, detail_of(j))
            ok[mask] = False

        drop(~np.isfinite(value), "non_finite", lambda j: f"value={value[j]}")
        lo, hi = now - cfg.max_past_age_s, now + cfg.max_future_skew_s
        drop(
            ~((ts >= lo) & (ts <= hi)),
            "ts_out_of_range",
            lambda j: f"ts_event {ts[j]:.0f} outside [{lo:.0f}, {hi:.0f}]",
        )
        uniq, inv = factorize(metric)
        metric = np.asarray([normalize_metric_name(s) for s in uniq], dtype=object)[inv]
        for col, name in ((tenant, "tenant_id"), (host, "host"), (metric, "metric")):
            uniq, inv = factorize(col)
            bad_u = np.fromiter((_NAME_RE.match(s) is None for s in uniq), bool, len(uniq))
            if bad_u.any():
                drop(bad_u[inv], "bad_field", lambda j, c=col, nm=name: f"{nm}={c[j]!r:.80}")
        if cfg.known_tenants is not None:
            uniq, inv = factorize(tenant)
            unknown = np.fromiter((u not in cfg.known_tenants for u in uniq), bool, len(uniq))
            if unknown.any():
                drop(unknown[inv], "unknown_tenant", lambda j: f"tenant_id={tenant[j]!r:.80}")

        # unit normalisation on unique values only
        uniq, inv = factorize(unit)
        canon = [self.units.get(s.strip().lower(), (s.strip().lower(), 1.0)) for s in uniq]
        unit = np.asarray([c[0] for c in canon], dtype=object)[inv]
        scale = np.asarray([c[1] for c in canon], dtype=np.float64)[inv]
        if (scale != 1.0).any():
            value = value * scale

        batch = MetricBatch(
            event_id=np.asarray(ids, dtype=object),
            tenant_id=tenant,
            host=host,
            metric=metric,
            value=value,
            ts=ts,
            unit=unit,
            tags=_object_array(tags),
            partition=np.asarray(parts, dtype=np.int64)[src_idx],
        )
        if not ok.all():
            batch = batch.take(ok)
        dead.sort(key=lambda d: d.offset)
        return batch, dead

    @staticmethod
    def _slow_decode(raw: bytes, err: Exception) -> tuple[str, str, object]:
        """Classify what orjson refused; accept NaN/Infinity literals so they get a precise reason."""
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            return "bad_encoding", str(e)[:200], None
        try:
            ev = json.loads(text)
        except (ValueError, RecursionError) as e:
            return "bad_json", str(e)[:200] or str(err)[:200], None
        return "", "", ev

    def _check_tags(self, tg: object) -> tuple[str, str] | None:
        cfg = self.config
        if not isinstance(tg, dict):
            return "bad_tags", "tags must be an object"
        if len(tg) > cfg.max_tags:
            return "too_many_tags", f"{len(tg)} tags > {cfg.max_tags}"
        for k, v in tg.items():
            if isinstance(v, dict | list):
                return "bad_tags", f"tag {k[:40]!r} is not a scalar"
            if len(k) > cfg.max_tag_value_bytes or (
                isinstance(v, str) and len(v.encode()) > cfg.max_tag_value_bytes
            ):
                size = len(v.encode()) if isinstance(v, str) else len(k)
                return "tag_too_large", f"tag {k[:40]!r}: {size} bytes > {cfg.max_tag_value_bytes}"
        return None


def _object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr

