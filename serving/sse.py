"""Server-Sent Events framing and the stream bodies (alerts, scores).

Alert stream: ``id:`` is ``alert_events.seq``. With ``Last-Event-ID`` the stream first replays
the tenant's events with a larger ``seq`` from PostgreSQL, then continues live; the broadcaster
subscription is taken *before* the replay query, and events are deduplicated by ``seq``, so
nothing is lost or sent twice across the hand-over. A client whose bounded queue overflowed is
refilled from PostgreSQL the same way.

Score stream: each client polls ``scores`` by primary key for windows newer than its cursor
(``id:`` = window start in epoch milliseconds). Polling works the same in embedded and Kafka
mode and resumes the same way; one indexed query per client per ``score_poll_s``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
from fastapi import Request

from serving.broadcast import Broadcaster, Subscription

HELLO = b"retry: 3000\n: connected\n\n"
HEARTBEAT = b": heartbeat\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: str, data: dict, ident: object | None = None) -> bytes:
    head = b"id: %s\n" % str(ident).encode() if ident is not None else b""
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


class _Seen:
    """Bounded set of sent sequence numbers."""

    def __init__(self, size: int = 50_000) -> None:
        self.order: deque[int] = deque()
        self.set: set[int] = set()
        self.size = size
        self.high: int | None = None

    def add(self, seq: int) -> bool:
        if seq in self.set:
            return False
        self.set.add(seq)
        self.order.append(seq)
        if len(self.order) > self.size:
            self.set.discard(self.order.popleft())
        self.high = seq if self.high is None else max(self.high, seq)
        return True


async def replay_alerts(pool, tenant: str, after: int, limit: int) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT seq, payload FROM alert_events WHERE tenant_id = %s AND seq > %s "
            "ORDER BY seq LIMIT %s", (tenant, after, limit),
        )
        rows = await cur.fetchall()
    return [{**p, "seq": s} for s, p in rows]


async def _resolve_seq(pool, ev: dict, tries: int = 20) -> int | None:
    """Sequence number of a live event that came without one (detect and sink split apart)."""
    key = ev.get("event_key")
    if not key:
        return None
    for _ in range(tries):
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT seq FROM alert_events WHERE event_key = %s", (key,))
            row = await cur.fetchone()
        if row:
            return row[0]
        await asyncio.sleep(0.1)
    return None


async def alert_stream(request: Request, pool, b: Broadcaster, sub: Subscription, tenant: str,
                       last_id: int | None, heartbeat_s: float, replay_max: int) -> AsyncIterator[bytes]:
    seen = _Seen()
    dropped = 0
    try:
        yield HELLO
        if last_id is not None:
            seen.high = last_id
            for ev in await replay_alerts(pool, tenant, last_id, replay_max):
                if seen.add(ev["seq"]):
                    yield frame("alert", ev, ev["seq"])
        while True:
            if sub.dropped != dropped and seen.high is not None:
                dropped = sub.dropped  # our queue overflowed: refill the gap from PostgreSQL
                for ev in await replay_alerts(pool, tenant, seen.high, replay_max):
                    if seen.add(ev["seq"]):
                        yield frame("alert", ev, ev["seq"])
            try:
                ev = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield HEARTBEAT
                continue
            if ev is None:  # shutting down
                return
            seq = ev.get("seq")
            if seq is None:
                seq = await _resolve_seq(pool, ev)
                if seq is not None:
                    ev = {**ev, "seq": seq}
            if seq is not None and not seen.add(int(seq)):
                continue
            if "ts" in ev:  # shared between subscribers: copy, never mutate
                ev = {k: v for k, v in ev.items() if k != "ts"}
            yield frame("alert", ev, seq)
    finally:
        b.unsubscribe(sub)


SCORE_COLS = ("window_start", "window_end", "score", "severity", "components", "actual", "expected",
              "explanation", "model_version")


def score_row(r) -> dict:
    d = dict(zip(SCORE_COLS, r, strict=True))
    dev = (d["explanation"] or {}).get("typical_deviation")
    exp = d["expected"]
    ok = isinstance(dev, int | float) and exp is not None
    d["lower"] = exp - 3 * dev if ok else None
    d["upper"] = exp + 3 * dev if ok else None
    return d


def epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


async def score_stream(request: Request, pool, tenant: str, host: str, metric: str,
                       last_id: int | None, poll_s: float, heartbeat_s: float,
                       closed=lambda: False) -> AsyncIterator[bytes]:
    q = ("SELECT " + ", ".join(SCORE_COLS) + " FROM scores WHERE tenant_id = %s AND host = %s "
         "AND metric = %s AND window_start > %s ORDER BY window_start LIMIT 1000")
    if last_id is not None:
        cursor = datetime.fromtimestamp(last_id / 1000, UTC)
    else:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT max(window_start) FROM scores WHERE tenant_id = %s AND host = %s AND metric = %s",
                (tenant, host, metric))
            cursor = (await cur.fetchone())[0] or datetime(1970, 1, 1, tzinfo=UTC)
    yield HELLO
    quiet = 0.0
    while not closed():
        async with pool.connection() as conn:
            cur = await conn.execute(q, (tenant, host, metric, cursor))
            rows = await cur.fetchall()
        for r in rows:
            d = score_row(r)
            cursor = d["window_start"]
            yield frame("score", {"host": host, "metric": metric, **_jsonable(d)}, epoch_ms(cursor))
        if rows:
            quiet = 0.0
            continue
        await asyncio.sleep(poll_s)
        quiet += poll_s
        if quiet >= heartbeat_s:
            quiet = 0.0
            if await request.is_disconnected():
                return
            yield HEARTBEAT


def _jsonable(d: dict) -> dict:
    return {k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v) for k, v in d.items()}


def parse_last_id(header: str | None, query: str | None) -> int | None:
    from serving.errors import BadRequest

    raw = query if query not in (None, "") else header
    if raw is None or raw == "":
        return None
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest("Last-Event-ID must be an integer") from None
    if not 0 <= v < 2**62:
        raise BadRequest("Last-Event-ID out of range")
    return v
