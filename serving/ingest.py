"""HTTP ingest for agents that cannot speak Kafka (scope ``ingest``).

The route checks only the envelope; each event is validated by the normalize stage like any
other, and a bad one is dead-lettered there with its reason and its bytes:

- the body must be a JSON array (at most :data:`MAX_EVENTS` items) of objects, else 422 —
  nothing is taken; a body that is not ``application/json`` is 415;
- an event's ``tenant_id``, when present, must be the key's tenant (else 403, nothing taken);
  when absent it is filled in.

Events are forwarded as **their original bytes**, cut out of the request body (the stdlib
JSON scanner returns where each item ends), not re-encoded: a value such as a 400-digit
integer, ``NaN``, a lone surrogate (``"\\ud800"``) or a NUL escape cannot pass through
``orjson.dumps`` (and a re-encoding would not be the original bytes the dead-letter record
must carry), but any JSON text passes through unchanged. The body is decoded with
``surrogateescape``, so even bytes that are not UTF-8 inside a string come out exactly as they
went in (normalize calls that ``bad_encoding``). The only edit is the filled-in tenant:
``{"tenant_id":"<t>",`` is spliced in after the item's opening brace.

Kafka mode: the bytes go to the raw topic, keyed ``tenant|host``; the answer (202) says how
many were queued — validation happens in the normalize worker, which dead-letters bad events
to the DLQ topic. Embedded mode: the API's own pipeline processes the batch before answering,
and the answer (202) counts what was stored and what was dead-lettered, per reason, with the
first :data:`MAX_REJECTED` dead letters (index into the request, reason, detail).

Every event taken is counted in ``eventops_ingest_points_total{protocol="json",outcome}``:
``queued`` (Kafka mode), ``stored``, ``dead_lettered`` or ``skipped`` (embedded mode; skipped:
an event id already stored for that very event, a replay written once).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections import Counter
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core.telemetry import INGEST_POINTS
from serving.deps import IngestKey, SettingsDep
from serving.errors import ErrorBody, Forbidden, Overloaded, UnsupportedMedia, invalid, printable

router = APIRouter(tags=["ingest"])
_lock = threading.Lock()
_feed_lock = threading.Lock()  # batches of the embedded pipeline, one at a time
MAX_EVENTS = 10_000
MAX_REJECTED = 100
_DECODER = json.JSONDecoder()  # strict: raw control characters inside strings are refused
_WS = re.compile(r"[ \t\n\r]*")
_MISSING = object()


class Rejected(BaseModel):
    index: int | None = Field(description="position of the event in the request (null: unknown)")
    reason: str = Field(
        description="reason code of the dead letter (see pipeline/stages/normalize.py)"
    )
    detail: str


class Accepted(BaseModel):
    accepted: int = Field(description="events taken from the body")
    mode: Literal["embedded", "kafka"]
    stored: int | None = Field(
        None, description="embedded: metric rows written (null in kafka mode)"
    )
    dead_lettered: int | None = Field(
        None, description="embedded: events dead-lettered (null in kafka mode)"
    )
    reasons: dict[str, int] = Field(
        default_factory=dict, description="dead letters per reason code"
    )
    rejected: list[Rejected] = Field(
        default_factory=list, description=f"the first {MAX_REJECTED} dead letters"
    )
    detail: str = ""


_EVENT_DOC = (
    "A metric event: tenant_id (optional here: the key's tenant), host, metric, value, "
    "ts_event, unit, tags, event_id (schemas/). Each event is validated by the "
    "pipeline; one it refuses is dead-lettered with a reason, not refused here."
)
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "maxItems": MAX_EVENTS,
                "items": {"type": "object", "description": _EVENT_DOC},
            }
        }
    },
}
RESPONSES = {
    415: {"model": ErrorBody, "description": "the body is not application/json"},
    422: {
        "description": "the body is not a JSON array of at most 10,000 objects",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    },
}


async def guarded(request: Request, fn, *args):
    """Run ``fn`` in a thread unless the process already has ``EVENTOPS_INGEST_MAX_INFLIGHT``
    ingest requests in hand (then 503 with Retry-After: the sender backs off and retries)."""
    app = request.app
    busy = getattr(app.state, "ingest_inflight", 0)
    if busy >= app.state.serving.ingest_max_inflight:
        raise Overloaded(1.0)
    app.state.ingest_inflight = busy + 1
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        app.state.ingest_inflight -= 1


def split_events(body: bytes, tenant: str) -> tuple[list[bytes], list[bytes]]:
    """``(raw bytes of each event, Kafka key of each)``; raises 422 / 403 on a bad envelope."""
    text = body.decode("utf-8", "surrogateescape")
    ws = _WS.match
    i = ws(text, 0).end()
    if text[i : i + 1] != "[":
        raise invalid(("body",), "the body must be a JSON array of event objects", "list_type")
    i = ws(text, i + 1).end()
    spans: list[tuple[int, int, dict]] = []
    if text[i : i + 1] == "]":
        i += 1
    else:
        while True:
            if len(spans) == MAX_EVENTS:
                raise invalid(("body",), f"at most {MAX_EVENTS} events per request", "too_long")
            try:
                ev, end = _DECODER.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise invalid(
                    ("body", len(spans)), f"invalid JSON: {e.msg} (char {e.pos})", "json_invalid"
                ) from None
            except RecursionError:
                raise invalid(
                    ("body", len(spans)), "invalid JSON: nested too deeply", "json_invalid"
                ) from None
            if not isinstance(ev, dict):
                raise invalid(("body", len(spans)), "each event must be a JSON object", "dict_type")
            spans.append((i, end, ev))
            i = ws(text, end).end()
            c = text[i : i + 1]
            i += 1
            if c == "]":
                break
            if c != ",":
                raise invalid(
                    ("body",), f"invalid JSON: expected ',' or ']' (char {i - 1})", "json_invalid"
                )
            i = ws(text, i).end()
    if ws(text, i).end() != len(text):
        raise invalid(
            ("body",), f"invalid JSON: extra data after the array (char {i})", "json_invalid"
        )

    head = '{"tenant_id":' + json.dumps(tenant)
    raws, keys = [], []
    for start, end, ev in spans:
        t = ev.get("tenant_id", _MISSING)
        raw = text[start:end]
        if t is _MISSING:
            raw = head + ("," if ev else "") + raw[1:]
        elif t != tenant:
            raise Forbidden("events must belong to the key's tenant")
        raws.append(raw.encode("utf-8", "surrogateescape"))
        host = ev.get("host")
        keys.append(
            f"{tenant}|{host if isinstance(host, str) else ''}".encode("utf-8", "surrogatepass")
        )
    return raws, keys


def kafka_producer(app, settings):
    """The API process' producer for ingest (made on first use)."""
    from pipeline import kafka as kq

    with _lock:
        p = getattr(app.state, "ingest_producer", None)
        if p is None:
            p = app.state.ingest_producer = kq.producer(settings)
    return p


def embedded_pipeline(app, settings):
    """``(pipeline, lock)``: the API's own embedded pipeline (made on first use) and the lock
    its batches take turns on (one connection, one stage state)."""
    from pipeline.embedded import EmbeddedPipeline

    with _lock:
        pipe = getattr(app.state, "ingest_pipeline", None)
        if pipe is None:
            # events without an event_id get "<source>:0:<n>": the source must be new per process,
            # or a restarted (or second) API would give a new event a stored event's id (dropped)
            source = f"api-ingest-{uuid.uuid4().hex[:12]}"
            pipe = app.state.ingest_pipeline = EmbeddedPipeline(
                settings, app.state.bus, source=source
            ).start_idle_close()  # closed at shutdown (serving.app)
    return pipe, _feed_lock


def _send_kafka(app, settings, raws: list[bytes], keys: list[bytes]) -> None:
    from pipeline import kafka as kq

    p = kafka_producer(app, settings)
    kq.produce_all(p, settings.topic_raw, raws, keys)
    kq.flush(p, timeout=30)


def _send_embedded(app, settings, raws: list[bytes]) -> Accepted:
    pipe, lock = embedded_pipeline(app, settings)
    with lock:
        base = getattr(pipe, "_seq", None)  # the offset the pipeline gives this batch's first event
        stored, dead, _ = pipe.feed(raws)
    points = INGEST_POINTS
    points.labels("json", "stored").inc(stored)
    points.labels("json", "dead_lettered").inc(len(dead))
    points.labels("json", "skipped").inc(max(0, len(raws) - stored - len(dead)))
    reasons = Counter(d.reason for d in dead)
    rejected = []
    for d in dead[:MAX_REJECTED]:
        idx = d.offset - base if base is not None and 0 <= d.offset - base < len(raws) else None
        rejected.append(Rejected(index=idx, reason=d.reason, detail=printable(d.detail)))
    return Accepted(
        accepted=len(raws),
        mode="embedded",
        stored=stored,
        dead_lettered=len(dead),
        reasons=dict(reasons),
        rejected=rejected,
        detail=f"{stored} stored, {len(dead)} dead-lettered",
    )


@router.post(
    "/ingest",
    response_model=Accepted,
    status_code=202,
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def ingest(request: Request, key: IngestKey, settings: SettingsDep) -> Accepted:
    """Accept metric events of the key's tenant for the pipeline (a JSON array of objects)."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMedia(f"the body must be application/json, not {ctype or 'empty'!r}")
    raws, keys = split_events(await request.body(), key.tenant_id)
    app = request.app
    if app.state.bus is not None:
        if not raws:
            return Accepted(
                accepted=0, mode="embedded", stored=0, dead_lettered=0, detail="no events"
            )
        return await guarded(request, _send_embedded, app, settings, raws)
    if raws:
        await guarded(request, _send_kafka, app, settings, raws, keys)
        INGEST_POINTS.labels("json", "queued").inc(len(raws))
    return Accepted(
        accepted=len(raws),
        mode="kafka",
        detail=f"{len(raws)} events queued on {settings.topic_raw}; the normalize worker "
        f"validates them and dead-letters bad ones to {settings.topic_dlq} with a reason",
    )
