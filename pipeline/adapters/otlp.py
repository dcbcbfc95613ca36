"""OTLP metrics (``ExportMetricsServiceRequest``) as EventOps points.

Decoded with the official ``opentelemetry-proto`` messages (protobuf, or the OTLP JSON
encoding through ``google.protobuf.json_format``). The mapping, one rule for every sender:

- **host**: the first of ``host.name``, ``host.id``, ``service.instance.id``, ``k8s.pod.name``,
  ``service.name`` found among the data point's attributes, then the resource's; else
  ``unknown``. That attribute is not repeated as a tag.
- **tags**: every other resource attribute and data-point attribute (a point's attribute wins
  over the resource's of the same key); strings, booleans, integers and doubles as they are,
  arrays, maps and bytes as their JSON text.
- **metric**: the OTLP name (normalize lower-cases it and folds spaces, ``-`` and ``/`` to
  ``_``); **unit**: UCUM mapped to EventOps' units (``By`` -> bytes, ``1`` -> ratio, ``{x}``
  -> count).
- **gauge** and non-monotonic **sum** (an up-down counter): the value.
- monotonic **sum**, cumulative or delta: ``<name>:rate``, the per-second increase (cumulative:
  against the series' previous point, or its start time for the first one; delta: the
  point's value over its start..time interval, else over the time since the previous point).
- **histogram** (explicit buckets): ``<name>:count_rate`` and ``<name>:sum_rate`` (per second)
  and ``<name>:p50``, ``:p90``, ``:p99`` — quantiles of the observations of the interval
  (cumulative histograms: the bucket increases since the previous point), interpolated
  linearly inside a bucket like Prometheus' ``histogram_quantile``; no quantile for an
  interval without observations.
- **exponential histogram**: ``<name>:count_rate`` and ``<name>:sum_rate``.
- **summary**: ``<name>:p<q>`` per quantile value (``p50``, ``p99``, ``p99_9``) and
  ``<name>:count_rate`` / ``<name>:sum_rate``.
- A point flagged *no recorded value* yields nothing (``skipped``), as does the first point of
  a cumulative series without a start time (its baseline).
"""

from __future__ import annotations

import base64
import math

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from pipeline.adapters.points import Deltas, Points, dumps, otlp_unit, rate_unit

__all__ = ["BadRequest", "decode", "response", "to_points", "QUANTILES"]

HOST_KEYS = ("host.name", "host.id", "service.instance.id", "k8s.pod.name", "service.name")
QUANTILES = (0.5, 0.9, 0.99)
_DELTA, _CUMULATIVE = 1, 2
_NO_RECORDED_VALUE = 1


class BadRequest(ValueError):
    """The request body is not an OTLP metrics request (the message says why)."""


def decode(body: bytes, json: bool) -> ExportMetricsServiceRequest:
    """The request from its protobuf or OTLP/JSON encoding; :class:`BadRequest` if it is not."""
    req = ExportMetricsServiceRequest()
    if json and not body.lstrip()[:1] == b"{":
        raise BadRequest("the body is not an OTLP/JSON ExportMetricsServiceRequest: not an object")
    try:
        if json:
            json_format.Parse(body, req, ignore_unknown_fields=True)
        else:
            req.ParseFromString(body)
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    except (DecodeError, json_format.ParseError, ValueError, TypeError, UnicodeDecodeError) as e:
        what = "OTLP/JSON" if json else "OTLP protobuf"
        raise BadRequest(f"the body is not an {what} ExportMetricsServiceRequest: {e}") from None
    return req


def response(rejected: int, message: str, json: bool) -> bytes:
    """``ExportMetricsServiceResponse`` (partial success when points were rejected)."""
    resp = ExportMetricsServiceResponse()
    if rejected:
        resp.partial_success.CopyFrom(
            ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=message)
        )
    if json:
        return json_format.MessageToJson(resp, indent=None).encode()
    return resp.SerializeToString()


def _any(v) -> object:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else str(d)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if kind == "array_value":
        return dumps([_any(x) for x in v.array_value.values]).decode()
    if kind == "kvlist_value":
        kv = {x.key: _any(x.value) for x in v.kvlist_value.values}
        return dumps(kv).decode()
    return ""


def _attrs(kvs) -> dict:
    return {kv.key: _any(kv.value) for kv in kvs}


def _host_and_tags(resource: dict, point: dict) -> tuple[str, dict]:
    tags = {**resource, **point}
    for k in HOST_KEYS:
        h = point.get(k, resource.get(k))
        if isinstance(h, str) and h:
            tags.pop(k, None)
            return h, tags
    return "unknown", tags


def _points(out: Points, res: dict, data_points):
    """``(point, host, tags, time, start time)`` of each point with a recorded value (the
    others are counted as skipped)."""
    for p in data_points:
        if p.flags & _NO_RECORDED_VALUE:
            out.skipped += 1
            continue
        host, tags = _host_and_tags(res, _attrs(p.attributes))
        yield p, host, tags, p.time_unix_nano / 1e9, p.start_time_unix_nano / 1e9


def _number(p) -> float | None:
    kind = p.WhichOneof("value")
    return None if kind is None else float(p.as_double if kind == "as_double" else p.as_int)


def _quantile(q: float, bounds, counts, lo: float, hi: float) -> float:
    """The ``q`` quantile of explicit-bucket counts (bucket i: ``(bounds[i-1], bounds[i]]``,
    the last one unbounded), linear within a bucket; ``lo``/``hi`` bound the outer buckets.

    >>> _quantile(0.5, [1.0, 2.0, 4.0], [0, 10, 10, 0], 0.0, 4.0)
    2.0
    >>> _quantile(0.99, [1.0, 2.0], [0, 0, 5], 0.0, 7.0)  # above the last bound: up to max
    6.95
    """
    total = sum(counts)
    rank = q * total
    seen = 0.0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            a = bounds[i - 1] if i > 0 else min(lo, bounds[0]) if bounds else lo
            b = bounds[i] if i < len(bounds) else max(hi, bounds[-1] if bounds else hi)
            return a + (b - a) * (rank - seen) / c
        seen += c
    return hi


def _qname(q: float) -> str:
    """``0.5`` -> ``p50``, ``0.999`` -> ``p99_9``.

    >>> _qname(0.5), _qname(0.999), _qname(1.0)
    ('p50', 'p99_9', 'p100')
    """
    s = f"{q * 100:.6f}".rstrip("0").rstrip(".")
    return "p" + s.replace(".", "_")


def to_points(req: ExportMetricsServiceRequest, deltas: Deltas, tenant: str) -> Points:
    """Every data point of ``req`` as :class:`Points` (see the module doc for the rule)."""
    out = Points("otlp")
    add = out.add
    for rm in req.resource_metrics:
        res = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                name = m.name or None
                unit = otlp_unit(m.unit)
                kind = m.WhichOneof("data")
                if kind == "gauge" or (kind == "sum" and not m.sum.is_monotonic):
                    pts = m.gauge.data_points if kind == "gauge" else m.sum.data_points
                    for p, host, tags, t, _t0 in _points(out, res, pts):
                        v = _number(p)
                        if v is None:
                            out.add_invalid(host, name, t, tags, "number point without a value")
                        else:
                            add(host, name, v, t, unit, tags)
                elif kind == "sum":
                    temporality = m.sum.aggregation_temporality
                    rname = None if name is None else f"{name}:rate"
                    for p, host, tags, t, t0 in _points(out, res, m.sum.data_points):
                        v = _number(p)
                        if v is None:
                            out.add_invalid(host, rname, t, tags, "number point without a value")
                            continue
                        key = (tenant, host, name, "sum", dumps(tags))
                        r = _rate(deltas, key, temporality, t, t0, v)
                        if r is None:
                            out.skipped += 1
                        else:
                            add(host, rname, r, t, rate_unit(unit), tags)
                elif kind == "histogram":
                    _histogram(out, deltas, tenant, res, name, unit, m.histogram)
                elif kind == "exponential_histogram":
                    _counts(out, deltas, tenant, res, name, unit, m.exponential_histogram)
                elif kind == "summary":
                    _summary(out, deltas, tenant, res, name, unit, m.summary)
    return out


def _rate(deltas: Deltas, key: tuple, temporality: int, t: float, t0: float, v: float):
    if temporality == _DELTA:
        if t0 > 0 and t > t0:
            return v / (t - t0) if math.isfinite(v) else v
        # no interval given: the time since the series' previous point (accumulated as if
        # cumulative, so the state holds the running total)
        got = deltas.delta(key, t, (v,), 0.0)
        return None if got is None else v / got[0]
    return deltas.rate(key, t, v, t0)


def _histogram(out: Points, deltas: Deltas, tenant, res, name, unit, h) -> None:
    cumulative = h.aggregation_temporality == _CUMULATIVE
    for p, host, tags, t, t0 in _points(out, res, h.data_points):
        total = float(p.sum) if p.HasField("sum") else math.nan
        vec = (float(p.count), total if math.isfinite(total) else 0.0, *map(float, p.bucket_counts))
        if cumulative:
            key = (tenant, host, name, "histogram", dumps(tags))
            got = deltas.delta(key, t, vec, t0)
            if got is None:
                out.skipped += 1
                continue
            dt, inc = got
        else:
            dt, inc = (t - t0 if t0 > 0 and t > t0 else math.nan), vec
        if name is None:
            out.add(host, None, inc[0], t, "per_s", tags)
            continue
        count, s, buckets = inc[0], inc[1], inc[2:]
        if math.isfinite(dt) and dt > 0:
            out.add(host, f"{name}:count_rate", count / dt, t, "per_s", tags)
            if p.HasField("sum"):
                out.add(host, f"{name}:sum_rate", s / dt, t, rate_unit(unit), tags)
        bounds = list(p.explicit_bounds)
        if buckets and len(buckets) != len(bounds) + 1:
            why = (
                f"histogram point with {len(buckets)} bucket counts for "
                f"{len(bounds)} explicit bounds (must be bounds + 1)"
            )
            out.add_invalid(host, f"{name}:p50", t, tags, why)
            continue
        if count > 0 and buckets:
            lo = p.min if p.HasField("min") else 0.0
            hi = p.max if p.HasField("max") else (bounds[-1] if bounds else 0.0)
            for q in QUANTILES:
                out.add(
                    host,
                    f"{name}:{_qname(q)}",
                    _quantile(q, bounds, buckets, lo, hi),
                    t,
                    unit,
                    tags,
                )


def _counts(out: Points, deltas: Deltas, tenant, res, name, unit, h) -> None:
    """Exponential histograms: the rates of their count and sum."""
    cumulative = h.aggregation_temporality == _CUMULATIVE
    for p, host, tags, t, t0 in _points(out, res, h.data_points):
        vec = (float(p.count), float(p.sum) if p.HasField("sum") else 0.0)
        if cumulative:
            key = (tenant, host, name, "exphistogram", dumps(tags))
            got = deltas.delta(key, t, vec, t0)
        else:
            got = (t - t0, vec) if t0 > 0 and t > t0 else None
        if got is None:
            out.skipped += 1
            continue
        dt, (count, s) = got
        out.add(host, None if name is None else f"{name}:count_rate", count / dt, t, "per_s", tags)
        if name is not None and p.HasField("sum"):
            out.add(host, f"{name}:sum_rate", s / dt, t, rate_unit(unit), tags)


def _summary(out: Points, deltas: Deltas, tenant, res, name, unit, sm) -> None:
    for p, host, tags, t, t0 in _points(out, res, sm.data_points):
        for qv in p.quantile_values:
            metric = None if name is None else f"{name}:{_qname(qv.quantile)}"
            out.add(host, metric, qv.value, t, unit, tags)
        key = (tenant, host, name, "summary", dumps(tags))
        got = deltas.delta(key, t, (float(p.count), p.sum), t0)
        if got is None:
            out.skipped += not p.quantile_values  # a baseline that gave no quantile either
            continue
        dt, (count, s) = got
        out.add(host, None if name is None else f"{name}:count_rate", count / dt, t, "per_s", tags)
        if name is not None:
            out.add(host, f"{name}:sum_rate", s / dt, t, rate_unit(unit), tags)
