"""Ingest in the standards senders already speak: OTLP/HTTP metrics and Prometheus
remote-write (scope ``ingest``; the tenant is the key's).

``POST /v1/metrics`` (OTLP/HTTP): ``application/x-protobuf`` or ``application/json``, plain
or ``Content-Encoding: gzip``. The answer is an ``ExportMetricsServiceResponse`` in the
request's encoding — with ``partial_success.rejected_data_points`` and the reasons when some
points were dead-lettered; a body that is not a request is 400, another content type 415,
errors carry a ``google.rpc.Status`` (``code``, ``message``) in the request's encoding.

``POST /api/v1/write`` (Prometheus remote-write 1.0): ``application/x-protobuf`` with
``Content-Encoding: snappy`` (block format). The answer is 200 with the counts as JSON (a
sender reads only the status); 400 for a body that does not decompress or decode.

The decoded points become events by the rules in :mod:`pipeline.adapters.otlp` and
:mod:`pipeline.adapters.remote_write`, and go the way of every input: the normalize stage
validates each one and dead-letters a bad one with its reason (the event as its bytes).
Embedded mode: the API's pipeline stores them before the answer. Kafka mode: normalize runs
here too, so the answer can count the rejects; the dead letters go to the DLQ topic and the
valid events, one batch of produce calls per request, to the raw topic, where the workers
take them like any agent's events.

Bounds: the compressed body at most ``EVENTOPS_MAX_REQUEST_BYTES`` (413), decompressed at
most ``EVENTOPS_INGEST_MAX_DECOMPRESSED_BYTES`` (413), at most ``EVENTOPS_INGEST_MAX_POINTS``
points (413). Backpressure: more than ``EVENTOPS_INGEST_MAX_INFLIGHT`` ingest requests at
once, Kafka's local queue full or a service away answer 503 with ``Retry-After`` — both
senders retry a 503 (Prometheus does not retry a 429 unless configured to, so 429 stays the
per-key rate limit's).
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from collections import Counter
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from core.batch import DeadLetter
from core.telemetry import INGEST_POINTS
from serving.deps import IngestKey, SettingsDep
from serving.errors import Overloaded, ServiceError, TooLarge, printable
from serving.ingest import embedded_pipeline, guarded, kafka_producer

router = APIRouter(tags=["ingest"])
_state_lock = threading.Lock()
_convert_lock = threading.Lock()  # the counter state (Deltas) is one per process

PROTOBUF, JSON = "application/x-protobuf", "application/json"
#: google.rpc.Code of an OTLP error body: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, …
_RPC_CODE = {400: 3, 401: 16, 403: 7, 413: 8, 415: 3, 429: 8, 503: 14}


class Written(BaseModel):
    accepted: int = Field(description="points (samples) the request held")
    skipped: int = Field(
        description="points that yield no event by rule: counter baselines, staleness markers"
    )
    mode: str
    stored: int | None = Field(None, description="embedded: metric rows written")
    queued: int | None = Field(None, description="kafka: events produced to the raw topic")
    dead_lettered: int = Field(description="events dead-lettered with a reason")
    duplicates: int | None = Field(
        None,
        description="embedded: events already stored under their id (a retried request), "
        "not stored again",
    )
    reasons: dict[str, int] = Field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    mode: str
    stored: int | None
    queued: int | None
    dead: list[DeadLetter]

    def reasons(self) -> dict[str, int]:
        return dict(Counter(d.reason.value for d in self.dead))

    def count(self, protocol: str, skipped: int) -> None:
        """Into ``eventops_ingest_points_total{protocol,outcome}``."""
        if self.stored is not None:
            INGEST_POINTS.labels(protocol, "stored").inc(self.stored)
        if self.queued is not None:
            INGEST_POINTS.labels(protocol, "queued").inc(self.queued)
        INGEST_POINTS.labels(protocol, "dead_lettered").inc(len(self.dead))
        INGEST_POINTS.labels(protocol, "skipped").inc(skipped)

    def summary(self) -> str:
        return ", ".join(f"{n} {r}" for r, n in sorted(self.reasons().items()))


def _deltas(app):
    """The process' counter state (one per process, shared by both protocols)."""
    from pipeline.adapters.points import Deltas

    with _state_lock:
        d = getattr(app.state, "ingest_deltas", None)
        if d is None:
            d = app.state.ingest_deltas = Deltas()
    return d


def _normalizer(app, settings):
    from pipeline.stages.normalize import Normalizer
    from pipeline.stageset import normalize_config

    with _state_lock:
        n = getattr(app.state, "ingest_normalizer", None)
        if n is None:
            # the key's tenant is registered (its key exists): no tenant list needed here
            cfg = dataclasses.replace(normalize_config(settings, None), known_tenants=None)
            n = app.state.ingest_normalizer = Normalizer(cfg)
    return n


def deliver(app, settings, raws: Sequence[bytes], keys: Sequence[bytes], source: str) -> Outcome:
    """Events into the pipeline (embedded) or, validated, onto the raw topic (Kafka)."""
    if app.state.bus is not None:
        pipe, lock = embedded_pipeline(app, settings)
        with lock:
            stored, dead, _ = pipe.feed(raws)
        return Outcome("embedded", stored, None, list(dead))
    from pipeline import kafka as kq

    batch, dead = _normalizer(app, settings)(raws, topic=source)
    keep = [] if batch.src is None else batch.src.tolist()
    p = kafka_producer(app, settings)
    try:
        if dead:
            kq.produce_dead_letters(p, settings.topic_dlq, dead)
        kq.produce_all(p, settings.topic_raw, [raws[i] for i in keep], [keys[i] for i in keep])
        kq.flush(p, timeout=30)
    except ServiceError:
        raise
    except Exception as e:  # a KafkaException: the broker is away; the sender retries
        raise ServiceError(f"Kafka unavailable: {e}") from None
    return Outcome("kafka", None, len(keep), list(dead))


def _media(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _gunzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise ValueError(f"the body is not valid gzip: {e}") from None
    if len(out) > limit:
        raise TooLarge(f"the body decompresses to more than {limit} bytes")
    if not d.eof:
        raise ValueError("the body is not valid gzip: truncated")
    return out


def _status_body(code: int, message: str, json: bool) -> bytes:
    """A ``google.rpc.Status`` (``code`` = 1, ``message`` = 2) in protobuf or JSON."""
    rpc = _RPC_CODE.get(code, 2)
    if json:
        import orjson

        return orjson.dumps({"code": rpc, "message": message})
    msg = message.encode("utf-8", "replace")

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return b"\x08" + varint(rpc) + b"\x12" + varint(len(msg)) + msg


OTLP_BODY = {
    "required": True,
    "content": {
        PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        JSON: {
            "schema": {"type": "object", "description": "OTLP/JSON ExportMetricsServiceRequest"}
        },
    },
}
OTLP_RESPONSES = {
    200: {
        "description": "ExportMetricsServiceResponse (partial_success when points were "
        "dead-lettered), in the request's encoding",
        "content": {PROTOBUF: {}, JSON: {}},
    },
    400: {"description": "not an OTLP metrics request (google.rpc.Status)"},
    413: {"description": "body, decompressed body or point count over the limit"},
    415: {"description": "neither application/x-protobuf nor application/json"},
    503: {"description": "busy or Kafka/PostgreSQL away; retry after Retry-After"},
}


class _Refused(Exception):
    """A request refused with a 4xx status (raised by the work of a request, in its thread)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _convert(adapter, req, app, tenant: str):
    """``adapter.to_points`` under the lock of the process' counter state (up to
    ``EVENTOPS_INGEST_MAX_INFLIGHT`` requests convert in threads at once)."""
    deltas = _deltas(app)
    with _convert_lock:
        return adapter.to_points(req, deltas, tenant)


def _deliver_points(app, settings, points, tenant: str, source: str) -> Outcome:
    limit = app.state.serving.ingest_max_points
    if len(points) > limit:
        raise _Refused(
            413,
            f"{len(points)} data points in one request, more than the limit of {limit}; "
            "send smaller batches",
        )
    raws, keys = points.encode(tenant)
    out = deliver(app, settings, raws, keys, source)
    out.count(points.protocol, points.skipped)
    return out


def _otlp_work(app, settings, body: bytes, encoding: str, as_json: bool, tenant: str):
    """Decompress, decode, convert and deliver an OTLP request (in a worker thread: none of it
    runs on the event loop). Returns ``(outcome, points)``."""
    from pipeline.adapters import otlp

    try:
        if encoding == "gzip":
            body = _gunzip(body, app.state.serving.ingest_max_decompressed_bytes)
        req = otlp.decode(body, as_json)
    except TooLarge as e:
        raise _Refused(413, str(e)) from None
    except ValueError as e:  # otlp.BadRequest, bad gzip
        raise _Refused(400, printable(str(e))) from None
    points = _convert(otlp, req, app, tenant)
    return _deliver_points(app, settings, points, tenant, "api:otlp"), points


@router.post(
    "/v1/metrics",
    status_code=200,
    response_class=Response,
    responses=OTLP_RESPONSES,
    openapi_extra={"requestBody": OTLP_BODY},
)
async def otlp_metrics(request: Request, key: IngestKey, settings: SettingsDep) -> Response:
    """OTLP/HTTP metrics export (protobuf or JSON, gzip) into the key's tenant."""
    from pipeline.adapters import otlp

    media = _media(request)
    as_json = media == JSON
    if media not in (PROTOBUF, JSON):
        return _otlp_error(415, f"Content-Type must be {PROTOBUF} or {JSON}, not {media!r}", False)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("gzip", "", "identity"):
        return _otlp_error(415, f"Content-Encoding {encoding!r}: only gzip", as_json)
    body = await request.body()
    try:
        out, _ = await guarded(
            request, _otlp_work, request.app, settings, body, encoding, as_json, key.tenant_id
        )
    except _Refused as e:
        return _otlp_error(e.status, str(e), as_json)
    except (Overloaded, ServiceError) as e:
        return _otlp_error(503, str(e), as_json, retry_after=getattr(e, "retry_after", 5))
    body = otlp.response(
        len(out.dead), f"dead-lettered: {out.summary()}" if out.dead else "", as_json
    )
    return Response(body, 200, media_type=JSON if as_json else PROTOBUF)


def _otlp_error(code: int, message: str, json: bool, retry_after: float | None = None):
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return Response(
        _status_body(code, message, json),
        code,
        media_type=JSON if json else PROTOBUF,
        headers=headers,
    )


WRITE_BODY = {
    "required": True,
    "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}},
}
WRITE_RESPONSES = {
    400: {"description": "not snappy-compressed, or not a WriteRequest"},
    413: {"description": "body, decompressed body or sample count over the limit"},
    415: {"description": "not application/x-protobuf with Content-Encoding: snappy"},
    503: {"description": "busy or Kafka/PostgreSQL away; retry after Retry-After"},
}


@router.post(
    "/api/v1/write",
    response_model=Written,
    responses=WRITE_RESPONSES,
    openapi_extra={"requestBody": WRITE_BODY},
)
async def remote_write(request: Request, key: IngestKey, settings: SettingsDep):
    """Prometheus remote-write 1.0 (snappy-compressed protobuf) into the key's tenant."""
    media = _media(request)
    if media != PROTOBUF:
        return JSONResponse({"detail": f"Content-Type must be {PROTOBUF}, not {media!r}"}, 415)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding != "snappy":
        return JSONResponse(
            {"detail": f"Content-Encoding must be snappy, not {encoding or 'none'!r}"}, 415
        )
    try:
        out, points = await guarded(
            request, _write_work, request.app, settings, await request.body(), key.tenant_id
        )
    except _Refused as e:
        return JSONResponse({"detail": str(e)}, e.status)
    return Written(
        accepted=len(points) + points.skipped,
        skipped=points.skipped,
        mode=out.mode,
        stored=out.stored,
        queued=out.queued,
        dead_lettered=len(out.dead),
        duplicates=None if out.stored is None else len(points) - out.stored - len(out.dead),
        reasons=out.reasons(),
    )


def _write_work(app, settings, body: bytes, tenant: str):
    """Decompress, decode, convert and deliver a remote-write request (in a worker thread).
    Returns ``(outcome, points)``."""
    from pipeline.adapters import remote_write as rw

    try:
        req = rw.decode(rw.decompress(body, app.state.serving.ingest_max_decompressed_bytes))
    except rw.TooLarge as e:
        raise _Refused(413, str(e)) from None
    except rw.BadRequest as e:
        raise _Refused(400, printable(str(e))) from None
    points = _convert(rw, req, app, tenant)
    return _deliver_points(app, settings, points, tenant, "api:remote_write"), points
