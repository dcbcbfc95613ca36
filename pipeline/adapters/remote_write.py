"""Prometheus remote-write 1.0 (``prometheus.WriteRequest``, snappy block-compressed) as
EventOps points.

The message types are built here from their field numbers (the remote-write 1.0 spec's
``prompb`` subset: ``WriteRequest{timeseries=1, metadata=3}``, ``TimeSeries{labels=1,
samples=2}``, ``Label{name=1, value=2}``, ``Sample{value=1, timestamp=2}``,
``MetricMetadata{type=1, metric_family_name=2}``) into a private descriptor pool, so the
protobuf runtime (upb, in C) parses them; fields of later versions (exemplars, native
histograms) are skipped as unknown fields.

The mapping, one rule for every sender:

- **metric**: the ``__name__`` label (a series without one: its samples dead-letter as
  ``missing_field``); **host**: ``instance``, else ``host``, else ``job``, else ``unknown``
  (``node:9100`` stays as it is); **tags**: every other label (``job``, ``le``, …).
- **counters become rates**: a series whose name ends in ``_total``, ``_count``, ``_sum`` or
  ``_bucket`` (Prometheus' names for counters, histogram and summary parts), or whose family
  the request's metadata calls a counter, histogram or summary, is sent as ``<name>:rate``,
  its per-second increase (:class:`~pipeline.adapters.points.Deltas`; a series' first sample
  is its baseline and yields nothing). A family the metadata calls a gauge stays a gauge.
- Staleness markers (the NaN Prometheus writes when a series disappears) yield nothing;
  any other NaN or infinity dead-letters as ``non_finite``. Timestamps are milliseconds.
"""

from __future__ import annotations

import struct

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from pipeline.adapters.points import Deltas, Points

__all__ = [
    "BadRequest",
    "TooLarge",
    "WriteRequest",
    "decompress",
    "decode",
    "to_points",
    "STALE_NAN",
]

#: the bit pattern of Prometheus' staleness marker (value.StaleNaN)
STALE_NAN = 0x7FF0000000000002
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
HOST_LABELS = ("instance", "host", "job")
#: MetricMetadata.MetricType: COUNTER 1, GAUGE 2, HISTOGRAM 3, GAUGEHISTOGRAM 4, SUMMARY 5
_RATE_TYPES, _GAUGE_TYPES = {1, 3, 5}, {2, 4}


class BadRequest(ValueError):
    """The body is not a snappy-compressed ``WriteRequest`` (the message says why)."""


class TooLarge(BadRequest):
    """The body decompresses to more than the limit."""


def _message_types():
    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(
        name="eventops/prompb_remote_write_1_0.proto", package="eventops.prompb", syntax="proto3"
    )

    def msg(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = f".eventops.prompb.{type_name}"

    one, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("Label", ("name", 1, F.TYPE_STRING, one, ""), ("value", 2, F.TYPE_STRING, one, ""))
    msg("Sample", ("value", 1, F.TYPE_DOUBLE, one, ""), ("timestamp", 2, F.TYPE_INT64, one, ""))
    msg(
        "TimeSeries",
        ("labels", 1, F.TYPE_MESSAGE, rep, "Label"),
        ("samples", 2, F.TYPE_MESSAGE, rep, "Sample"),
    )
    msg(
        "MetricMetadata",
        ("type", 1, F.TYPE_INT32, one, ""),
        ("metric_family_name", 2, F.TYPE_STRING, one, ""),
        ("help", 4, F.TYPE_STRING, one, ""),
        ("unit", 5, F.TYPE_STRING, one, ""),
    )
    msg(
        "WriteRequest",
        ("timeseries", 1, F.TYPE_MESSAGE, rep, "TimeSeries"),
        ("metadata", 3, F.TYPE_MESSAGE, rep, "MetricMetadata"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"eventops.prompb.{n}"))
        for n in ("WriteRequest", "TimeSeries", "Label", "Sample", "MetricMetadata")
    }


TYPES = _message_types()
WriteRequest = TYPES["WriteRequest"]


def decompress(body: bytes, limit: int) -> bytes:
    """The snappy block (not framed) ``body`` decompressed; at most ``limit`` bytes."""
    try:
        n = cramjam.snappy.decompress_raw_len(body)
    except Exception as e:  # cramjam raises its own DecompressionError (a ValueError-like)
        raise BadRequest(f"the body is not snappy block-compressed: {e}") from None
    if n > limit:
        raise TooLarge(f"the body decompresses to {n} bytes, more than the limit of {limit}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:
        raise BadRequest(f"the body is not snappy block-compressed: {e}") from None


def decode(raw: bytes):
    """The ``WriteRequest`` in ``raw`` (decompressed protobuf); :class:`BadRequest` if not."""
    req = WriteRequest()
    try:
        req.ParseFromString(raw)
    except (DecodeError, ValueError, RecursionError) as e:
        raise BadRequest(f"the body is not a remote-write WriteRequest: {e}") from None
    return req


_unpack, _pack = struct.Struct("<Q").unpack, struct.Struct("<d").pack


def to_points(req, deltas: Deltas, tenant: str) -> Points:
    """Every sample of ``req`` as :class:`Points` (see the module doc for the rule)."""
    types = {m.metric_family_name: m.type for m in req.metadata}
    out = Points("remote_write")
    add = out.add
    for ts in req.timeseries:
        labels = {lb.name: lb.value for lb in ts.labels}
        name = labels.pop("__name__", None) or None
        host = "unknown"
        for k in HOST_LABELS:
            h = labels.get(k)
            if h:
                host = h
                if k != "job":  # job stays a tag too: it names what was scraped
                    del labels[k]
                break
        counter = False
        if name is not None:
            family = name
            for suffix in COUNTER_SUFFIXES:
                if name.endswith(suffix):
                    counter, family = True, name[: -len(suffix)]
                    break
            mtype = types.get(family, types.get(name))
            if mtype in _RATE_TYPES:
                counter = True
            elif mtype in _GAUGE_TYPES:
                counter = False
        metric = f"{name}:rate" if counter else name
        key = (tenant, host, name, tuple(sorted(labels.items())))
        for s in ts.samples:
            v = s.value
            if v != v and _unpack(_pack(v))[0] == STALE_NAN:
                out.skipped += 1
                continue
            t = s.timestamp / 1000.0
            if counter:
                r = deltas.rate(key, t, v)
                if r is None:
                    out.skipped += 1
                    continue
                v = r
            add(host, metric, v, t, "per_s" if counter else "", labels)
    return out
