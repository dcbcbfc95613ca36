"""HTTP ingest for agents that cannot speak Kafka (scope ``ingest``).

Events are validated by the normalize stage like any other (bad ones are dead-lettered there);
this route only checks the envelope: a JSON array of objects whose ``tenant_id`` is the key's
tenant (filled in when absent). Kafka mode: the raw bytes go to the raw topic, keyed
``tenant|host``. Embedded mode: one in-process pipeline of the API feeds them through.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel

from serving.deps import IngestKey, SettingsDep
from serving.errors import Forbidden

router = APIRouter(tags=["ingest"])
_lock = threading.Lock()


class Accepted(BaseModel):
    accepted: int


def _send_kafka(app, settings, raws: list[bytes], keys: list[str]) -> None:
    from pipeline import kafka as kq

    with _lock:
        p = getattr(app.state, "ingest_producer", None)
        if p is None:
            p = app.state.ingest_producer = kq.producer(settings)
    kq.produce_all(p, settings.topic_raw, raws, keys)
    kq.flush(p, timeout=30)


def _send_embedded(app, settings, raws: list[bytes]) -> None:
    from pipeline.runner import EmbeddedPipeline

    with _lock:
        pipe = getattr(app.state, "ingest_pipeline", None)
        if pipe is None:
            pipe = app.state.ingest_pipeline = EmbeddedPipeline(settings, app.state.bus, source="api-ingest")
        pipe.feed(raws)


@router.post("/ingest", response_model=Accepted, status_code=202)
async def ingest(
    request: Request, key: IngestKey, settings: SettingsDep,
    events: Annotated[list[dict], Body(max_length=10_000, description="Metric events (see schemas/)")],
) -> Accepted:
    """Accept metric events of the key's tenant for the pipeline."""
    raws, keys = [], []
    for ev in events:
        t = ev.setdefault("tenant_id", key.tenant_id)
        if t != key.tenant_id:
            raise Forbidden("events must belong to the key's tenant")
        raws.append(orjson.dumps(ev))
        keys.append(f"{t}|{ev.get('host')}")
    if raws:
        app = request.app
        if app.state.bus is not None:
            await asyncio.to_thread(_send_embedded, app, settings, raws)
        else:
            await asyncio.to_thread(_send_kafka, app, settings, raws, keys)
    return Accepted(accepted=len(raws))
