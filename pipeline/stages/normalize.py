"""normalize: raw agent bytes -> validated :class:`MetricBatch` + dead letters.

Decoding is the only per-event Python work; every other check runs on columns (or on the
unique values of a column). Each rejected input becomes a :class:`DeadLetter` carrying the
original bytes, its source (topic, partition, offset) and one reason code:

==================  ===============================================================
reason              meaning
==================  ===============================================================
too_large           message larger than ``max_message_bytes``
bad_encoding        not UTF-8 (invalid, overlong, encoded surrogates, beyond U+10FFFF)
bad_json            not parseable as JSON (a UTF-8 BOM included; nesting too deep)
not_object          JSON, but not an object
missing_field       a required field is absent or null (detail names it)
bad_type            a field has the wrong type, or ``ts_event`` is not a time (detail names it)
non_finite          value is NaN or ±inf, or not representable as a float64 (a 400-digit
                    integer, ``1e400``), also after unit scaling (``1e308`` GiB)
bad_text            a stored text field holds NUL, a lone surrogate or a forbidden control
                    character (detail names the field and the code point); see below
bad_field           tenant/host/metric empty, too long or with forbidden characters; unit
                    longer than ``max_tag_value_bytes``
bad_event_id        event_id given but not a string of 1..128 characters
ts_out_of_range     timestamp too far in the future or the past
unknown_tenant      tenant is not registered
bad_tags            tags not an object of string -> scalar (a number must fit a JSON int64 /
                    uint64 or be a finite float)
tag_too_large       a tag key/value longer than ``max_tag_value_bytes``
too_many_tags       more than ``max_tags`` tags
ts_too_old          detect: behind a window its host has already closed
duplicate_event_id  sink: the tenant stored a different event under this id
store_refused       sink: PostgreSQL refused the row's values — a normalize gap, isolated to
                    the row by bisection so that it costs neither its batch nor the worker
stage_error         any stage: it raised on this one event; the rest of its batch went on
bad_record          any stage: an intermediate topic's record does not decode
==================  ===============================================================

The last five come from detect, the sink or any stage (same DLQ, same headers). The codes are
the members of :class:`core.reasons.DlqReason`; a :class:`DeadLetter` with any other reason
cannot be made.

Text rules (issue 8: PostgreSQL text cannot hold NUL, orjson cannot encode lone surrogates, and
Python's ``re`` ``$`` accepts a trailing newline). Names (tenant, host, metric) and event ids
may hold no C0 control, DEL, C1 control or surrogate; free text (unit, tag keys and values) may
hold tab, LF and CR but none of the others. Inputs are rejected, never repaired. The check is
cheap because of how JSON works: a decoded string can hold such a character only if the raw
bytes carry a backslash escape, a raw DEL or a raw C1 (UTF-8 ``C2 80``..``C2 9F``) — raw C0
bytes are refused by the decoder and valid UTF-8 has no surrogates. So one scan of the joined
batch decides; when it fires, the stored strings of the inputs carrying such bytes are joined
and searched once per kind (names, free text), and field by field only when that search hits.
Names are matched with ``fullmatch``.

The event id is the agent's ``event_id`` when given, else ``<topic>:<partition>:<offset>``:
deterministic, so a replay produces the same ids and the sink drops the duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson

from core.batch import DeadLetter, MetricBatch, factorize
from core.reasons import DlqReason

log = logging.getLogger(__name__)

REQUIRED = ("tenant_id", "host", "metric", "value", "ts_event")
#: tenant/host/metric; used with ``fullmatch`` (``$`` would accept a trailing newline)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,254}")
#: characters no name or event id may hold: C0 controls, DEL, C1 controls, surrogates
_BAD_STRICT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: characters free text (unit, tag keys and values) may not hold: the same but tab, LF, CR
_BAD_FREE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: numbers a tag value may be: what orjson (and PostgreSQL JSONB through it) encodes as an int
_TAG_INT_MIN, _TAG_INT_MAX = -(2**63), 2**64 - 1
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
    """The normalize stage. Pure: no Kafka, no SQL; tenants are handed in as a set.

    Total: whatever the bytes, every input ends as one row of the batch or one dead letter, and
    a row is safe for PostgreSQL text/JSONB and for orjson (see the module docstring).
    """

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
        """Validate ``raws``; rows keep the index of their input in ``MetricBatch.src``."""
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

        def reject(i: int, reason: DlqReason, detail: str) -> None:
            dead.append(DeadLetter(bytes(raws[i]), reason, detail, topic, parts[i], offs[i]))

        loads = orjson.loads
        ts_cache: dict[str, float] = {}
        small = cfg.max_tag_value_bytes
        # None: no input of the batch can hold a forbidden character (module docstring)
        suspect = suspects(raws)
        sus: list[int] = []  # rows of suspect inputs, and their strings to check in one go
        strict: list[str] = []
        free: list[str] = []
        for i, raw in enumerate(raws):
            try:
                if len(raw) > cfg.max_message_bytes:
                    reject(i, DlqReason.TOO_LARGE, f"{len(raw)} bytes > {cfg.max_message_bytes}")
                    continue
                slow = False
                try:
                    ev = loads(raw)
                except orjson.JSONDecodeError as e:
                    reason, detail, ev = self._slow_decode(raw, e)
                    if reason:
                        reject(i, reason, detail)
                        continue
                    slow = True  # NaN/Infinity, huge numbers or lone surrogates: check it all
                if not isinstance(ev, dict):
                    reject(i, DlqReason.NOT_OBJECT, f"top-level JSON is {type(ev).__name__}")
                    continue
                get = ev.get
                t, h, m, v, tsv = (
                    get("tenant_id"),
                    get("host"),
                    get("metric"),
                    get("value"),
                    get("ts_event"),
                )
                if t is None or h is None or m is None or v is None or tsv is None:
                    missing = ",".join(f for f in REQUIRED if get(f) is None)
                    reject(i, DlqReason.MISSING_FIELD, missing)
                    continue
                if not (isinstance(t, str) and isinstance(h, str) and isinstance(m, str)):
                    bad = [k for k in ("tenant_id", "host", "metric") if not isinstance(ev[k], str)]
                    reject(i, DlqReason.BAD_TYPE, f"{','.join(bad)} must be a string")
                    continue
                tv = type(v)
                if tv is not float and tv is not int:
                    reject(i, DlqReason.BAD_TYPE, "value must be a number")
                    continue
                if type(tsv) is str and tsv in ts_cache:  # agents batch samples of one instant
                    ts = ts_cache[tsv]
                else:
                    try:
                        if (
                            suspect is not None
                            and suspect[i]
                            and type(tsv) is str
                            and not tsv.isprintable()
                        ):  # fromisoformat stops at a NUL
                            raise ValueError("holds a control character")
                        ts = _parse_ts(tsv)
                    except (TypeError, ValueError, OverflowError) as e:
                        reject(i, DlqReason.BAD_TYPE, f"ts_event: {e}"[:200])
                        continue
                    if type(tsv) is str:
                        ts_cache[tsv] = ts
                u = get("unit", "")
                if not isinstance(u, str):
                    reject(i, DlqReason.BAD_TYPE, "unit must be a string")
                    continue
                tg = get("tags")
                # a short message decoded by orjson with no nested containers needs no tag walk
                # (orjson refuses NaN/Infinity and numbers beyond float64, so its scalars are fine)
                if tg is not None and (
                    slow
                    or type(tg) is not dict
                    or len(tg) > cfg.max_tags
                    or len(raw) > small
                    or raw.count(b"{") > 2
                    or b"[" in raw
                ):
                    reason = self._check_tags(tg)
                    if reason:
                        reject(i, *reason)
                        continue
                    tg = tg or None
                eid = get("event_id")
                if eid is None:
                    eid = f"{topic}:{parts[i]}:{offs[i]}"
                elif not isinstance(eid, str) or not 0 < len(eid) <= 128:
                    reject(i, DlqReason.BAD_EVENT_ID, "event_id must be a string of 1..128 chars")
                    continue
                if suspect is not None and suspect[i]:  # its text is checked after the loop
                    strict += (t, h, m, eid)
                    free.append(u)
                    if tg:
                        free += tg
                        free += [x for x in tg.values() if type(x) is str]
                    sus.append(len(src))  # last: the row is appended below
            except Exception as e:  # a bug must cost this one input, never the batch
                log.exception("normalize failed on %s[%s]@%s", topic, parts[i], offs[i])
                reject(i, DlqReason.STAGE_ERROR, f"normalize: {type(e).__name__}: {e}")
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
            dead.sort(key=lambda d: d.offset)
            return MetricBatch.empty(), dead

        # every value is a finite-or-not float64 here: orjson yields floats and 64-bit ints, the
        # slow decoder turns integers beyond them into floats (inf for a 400-digit one)
        value = np.asarray(values, dtype=np.float64)
        ts = np.asarray(tss, dtype=np.float64)
        tenant = np.asarray(tenants, dtype=object)
        host = np.asarray(hosts, dtype=object)
        metric = np.asarray(metrics, dtype=object)
        unit = np.asarray(units, dtype=object)
        src_idx = np.asarray(src, dtype=np.int64)
        ok = np.ones(len(src), dtype=bool)

        def drop(mask: np.ndarray, reason: DlqReason, detail_of) -> None:
            for j in np.flatnonzero(mask & ok):
                reject(int(src_idx[j]), reason, detail_of(j))
            ok[mask] = False

        # text of the suspect inputs: one search per kind of field; per row only on a hit
        if sus and (_BAD_STRICT.search("".join(strict)) or _BAD_FREE.search("".join(free))):
            for j in sus:
                fault = text_fault(tenants[j], hosts[j], metrics[j], ids[j], units[j], tags[j])
                if fault:
                    reject(src[j], DlqReason.BAD_TEXT, fault)
                    ok[j] = False

        lo, hi = now - cfg.max_past_age_s, now + cfg.max_future_skew_s
        drop(
            ~((ts >= lo) & (ts <= hi)),
            DlqReason.TS_OUT_OF_RANGE,
            lambda j: f"ts_event {ts[j]:.0f} outside [{lo:.0f}, {hi:.0f}]",
        )
        uniq, inv = factorize(metric)
        metric = np.asarray([normalize_metric_name(s) for s in uniq], dtype=object)[inv]
        for col, name in ((tenant, "tenant_id"), (host, "host"), (metric, "metric")):
            uniq, inv = factorize(col)
            bad_u = np.fromiter((_NAME_RE.fullmatch(s) is None for s in uniq), bool, len(uniq))
            if bad_u.any():
                drop(
                    bad_u[inv], DlqReason.BAD_FIELD, lambda j, c=col, nm=name: f"{nm}={c[j]!r:.80}"
                )
        if cfg.known_tenants is not None:
            uniq, inv = factorize(tenant)
            unknown = np.fromiter((u not in cfg.known_tenants for u in uniq), bool, len(uniq))
            if unknown.any():
                drop(
                    unknown[inv], DlqReason.UNKNOWN_TENANT, lambda j: f"tenant_id={tenant[j]!r:.80}"
                )

        # unit normalisation and its size bound on unique values only
        uniq, inv = factorize(unit)
        long_u = np.fromiter((_utf8_len(s) > small for s in uniq), bool, len(uniq))
        if long_u.any():
            drop(
                long_u[inv],
                DlqReason.BAD_FIELD,
                lambda j: f"unit: {_utf8_len(unit[j])} bytes > {small}",
            )
        canon = [self.units.get(s.strip().lower(), (s.strip().lower(), 1.0)) for s in uniq]
        unit = np.asarray([c[0] for c in canon], dtype=object)[inv]
        scale = np.asarray([c[1] for c in canon], dtype=np.float64)[inv]
        if (scale != 1.0).any():
            with np.errstate(over="ignore"):
                value = value * scale
        # after scaling: 1e308 GiB is inf bytes
        drop(
            ~np.isfinite(value),
            DlqReason.NON_FINITE,
            lambda j: f"value={values[j]!r:.60} ({unit[j]})",
        )

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
            src=src_idx,
        )
        if not ok.all():
            batch = batch.take(ok)
        dead.sort(key=lambda d: d.offset)
        return batch, dead

    @staticmethod
    def _slow_decode(raw: bytes, err: Exception) -> tuple[DlqReason | None, str, object]:
        """Classify what orjson refused; accept NaN/Infinity literals, numbers beyond float64 and
        lone surrogate escapes so that they get a precise reason."""
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            return DlqReason.BAD_ENCODING, str(e)[:200], None
        try:
            ev = json.loads(text, parse_int=_json_int)
        except (ValueError, RecursionError) as e:
            return DlqReason.BAD_JSON, str(e)[:200] or str(err)[:200], None
        return None, "", ev

    def _check_tags(self, tg: object) -> tuple[DlqReason, str] | None:
        cfg = self.config
        if not isinstance(tg, dict):
            return DlqReason.BAD_TAGS, "tags must be an object"
        if len(tg) > cfg.max_tags:
            return DlqReason.TOO_MANY_TAGS, f"{len(tg)} tags > {cfg.max_tags}"
        lim = cfg.max_tag_value_bytes
        quarter = lim // 4  # text of at most this many characters fits ``lim`` UTF-8 bytes
        for k, v in tg.items():
            tv = type(v)
            if tv is str:
                if len(v) > quarter and _utf8_len(v) > lim:
                    return DlqReason.TAG_TOO_LARGE, f"tag {_show(k)}: {_utf8_len(v)} bytes > {lim}"
            elif tv is dict or tv is list:
                return DlqReason.BAD_TAGS, f"tag {_show(k)} is not a scalar"
            elif (tv is float and not math.isfinite(v)) or (
                tv is int and not _TAG_INT_MIN <= v <= _TAG_INT_MAX
            ):
                return (
                    DlqReason.BAD_TAGS,
                    f"tag {_show(k)}: number {v!r:.40} is not a finite int64/float64",
                )
            if len(k) > quarter and _utf8_len(k) > lim:
                return DlqReason.TAG_TOO_LARGE, f"tag key {_show(k)}: {_utf8_len(k)} bytes > {lim}"
        return None


def _json_int(digits: str) -> int | float:
    """Integers for the slow decoder as orjson reads them: 64-bit ints exact, larger ones as
    floats (``inf`` beyond float64); also dodges the 4300-digit limit of ``int(str)``."""
    if len(digits) <= 21:
        v = int(digits)
        if _TAG_INT_MIN <= v <= _TAG_INT_MAX:
            return v
    return float(digits)


def _utf8_len(s: str) -> int:
    """UTF-8 size of ``s``; a lone surrogate counts 3 bytes instead of raising."""
    return len(s.encode("utf-8", "surrogatepass"))


def suspects(raws: Sequence[bytes]) -> list[bool] | None:
    """Which inputs can decode to a string with a forbidden character; ``None``: none can.

    Such a character needs a backslash escape, a raw DEL or a raw C1 control in the bytes (the
    module docstring says why), so one scan of the joined batch settles the common case; when
    it finds one, the bytes that qualify are located with numpy and mapped to their inputs.
    """
    joined = b"".join(raws)
    bs, de, c2 = b"\\" in joined, b"\x7f" in joined, b"\xc2" in joined
    if not (bs or de or c2):
        return None
    buf = np.frombuffer(joined, np.uint8)
    pos = []  # offsets in ``joined`` of the bytes that make an input a suspect
    if bs:
        pos.append(np.flatnonzero(buf == 0x5C))
    if de:
        pos.append(np.flatnonzero(buf == 0x7F))
    if c2:  # C2 80..C2 9F (a pair across two inputs only makes the first one a suspect)
        at = np.flatnonzero(buf[:-1] == 0xC2)
        nxt = buf[at + 1]
        pos.append(at[(nxt >= 0x80) & (nxt <= 0x9F)])
    hits = np.concatenate(pos)
    if not hits.size:
        return None  # only C2 A0..C2 BF: printable Latin-1 (µ, °, ...)
    ends = np.cumsum(np.fromiter(map(len, raws), np.int64, len(raws)))
    out = np.zeros(len(raws), bool)
    out[np.searchsorted(ends, hits, side="right")] = True
    return out.tolist()


def text_fault(
    tenant: str, host: str, metric: str, event_id: str, unit: str, tags: dict | None
) -> str | None:
    """Detail naming the first stored text field with a forbidden character, else ``None``."""
    if _BAD_STRICT.search(tenant + host + metric + event_id) is None and (
        _BAD_FREE.search(unit) is None
        if not tags
        else _BAD_FREE.search(
            unit + "".join(tags) + "".join([v for v in tags.values() if type(v) is str])
        )
        is None
    ):
        return None  # one search per kind of field; the field is looked for only on a hit
    for name, s in (
        ("tenant_id", tenant),
        ("host", host),
        ("metric", metric),
        ("event_id", event_id),
    ):
        m = _BAD_STRICT.search(s)
        if m:
            return f"{name} holds U+{ord(m.group()):04X} at {m.start()}"
    m = _BAD_FREE.search(unit)
    if m:
        return f"unit holds U+{ord(m.group()):04X} at {m.start()}"
    if tags:
        for k, v in tags.items():
            m = _BAD_FREE.search(k)
            if m:
                return f"tag key {_show(k)} holds U+{ord(m.group()):04X} at {m.start()}"
            if type(v) is str:
                m = _BAD_FREE.search(v)
                if m:
                    return f"tag {_show(k)} value holds U+{ord(m.group()):04X} at {m.start()}"
    return None


def _show(s: str) -> str:
    """A short printable rendering of untrusted text for a detail (``repr`` escapes controls)."""
    return f"{s[:40]!r}"


def _object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr
