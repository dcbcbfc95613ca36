"""Server-Sent Events framing and the stream bodies (alerts, scores).

Alert stream: ``id:`` is ``alert_events.seq``; every client gets every transition of its tenant
exactly once, in ``seq`` order. The subscription to the tenant's feed
(:mod:`serving.broadcast`) is taken *before* anything is read, and the stream keeps a cursor
(the last ``seq`` it sent):

- with ``Last-Event-ID`` it first replays the tenant's rows after it from PostgreSQL, in pages
  of ``page_size``, until a page comes back short (no cap: a long absence is replayed in full,
  one bounded page at a time), then continues from its queue;
- without one it starts after the feed's horizon at subscription time, which it knows before
  it sends ``: connected`` (that first frame carries it as ``id:``, so even a client that
  reconnects before its first alert resumes without a gap);
- when its bounded queue overflowed (a slow reader: the transport pushed back), it refills
  from PostgreSQL after its cursor the same way, and goes back to the queue;
- queued events at or below the cursor were already sent by a page and are skipped.
A replay or refill ends with a short page whose query started once the feed's horizon was
known (a new feed reads it when its first subscriber arrives): rows up to that horizon were
committed before, so the page has them; a row committed after the page's query is read by the
feed after it, so it reaches the queue (or overflows it, which starts another refill). The
hand-overs lose nothing and send nothing twice.

Revocation: every batch of events is sent only once the key was found valid by a lookup that
started after the batch was read (:meth:`serving.auth.KeyStore.fresh`; one query per key
shared by all its streams), so nothing committed after a revocation (or a tenant's deletion)
is ever delivered; an idle stream re-checks every ``auth_check_s`` through the same cache, so
it ends within ``2 * auth_check_s`` of the revocation. The stream then sends ``event: end``
(``{"reason": "revoked"}``) and closes; a reconnect gets 401.

PostgreSQL down: a stream keeps its connection (heartbeats) and retries with backoff; after
``db_retry_s`` without a successful query it sends ``retry:`` and ``event: end``
(``{"reason": "unavailable"}``) and closes, and the client's reconnect resumes from its
``Last-Event-ID``. Never a 500, never a half-written frame.

Score stream: each client polls ``scores`` by primary key for windows newer than its cursor
(``id:`` = window start in epoch milliseconds), with the same key and outage rules. Polling
works the same in embedded and Kafka mode and resumes the same way; one indexed query per
client per ``score_poll_s``.

Both streams count themselves in ``eventops_sse_clients`` (:func:`counted`) from their first
frame until they end, whichever way (the client gone, revoked, the database away).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from fastapi import Request

from core.telemetry import SSE_CLIENTS
from serving.auth import KeyStore, Principal
from serving.broadcast import DB_DOWN, DB_TIMEOUT_S, Broadcaster, read_page
from serving.errors import Unauthorized
from storage import series as series_repo

log = logging.getLogger(__name__)

HELLO = b"retry: 3000\n: connected\n\n"


def hello(start: int | None = None) -> bytes:
    """The first frame; with ``start`` an ``id:`` without data, so an ``EventSource`` that
    reconnects before any alert resumes from where it started (its ``Last-Event-ID``)."""
    return HELLO if start is None else b"retry: 3000\nid: %d\n: connected\n\n" % start


HEARTBEAT = b": heartbeat\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: str, data: dict, ident: object | None = None) -> bytes:
    head = b"id: %s\n" % str(ident).encode() if ident is not None else b""
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


REVOKED = frame("end", {"reason": "revoked", "detail": "API key revoked or its tenant deleted"})
UNAVAILABLE = b"retry: 5000\n" + frame(
    "end", {"reason": "unavailable", "detail": "database unavailable; reconnect with Last-Event-ID"}
)


@dataclass(frozen=True, slots=True)
class StreamConf:
    """Knobs of both streams (from :class:`serving.config.ServingSettings` and ``Settings``)."""

    heartbeat_s: float = 15.0
    auth_check_s: float = 2.0
    db_retry_s: float = 15.0
    page_size: int = 1000
    score_poll_s: float = 1.0


def stream_conf(settings, serving) -> StreamConf:
    return StreamConf(
        heartbeat_s=settings.sse_heartbeat_s,
        auth_check_s=serving.sse_auth_check_s,
        db_retry_s=serving.sse_db_retry_s,
        page_size=serving.sse_page_size,
        score_poll_s=serving.score_poll_s,
    )


def counted(stream: Callable[..., AsyncIterator[bytes]]) -> Callable[..., AsyncIterator[bytes]]:
    """The stream body ``stream`` counted in ``eventops_sse_clients`` while it runs."""

    @functools.wraps(stream)
    async def body(*args, **kwargs) -> AsyncIterator[bytes]:
        SSE_CLIENTS.inc()
        try:
            async with aclosing(stream(*args, **kwargs)) as frames:  # its finally runs first
                async for chunk in frames:
                    yield chunk
        finally:
            SSE_CLIENTS.dec()

    return body


class _Guard:
    """Key re-checks and the outage clock of one stream."""

    def __init__(self, keys: KeyStore, pool, principal: Principal, conf: StreamConf) -> None:
        self.keys, self.pool, self.principal, self.conf = keys, pool, principal, conf
        self.down_since: float | None = None
        self.backoff = 0.1

    async def sendable(self, read_at: float) -> None:
        """Raise :class:`Unauthorized` unless the key was valid after ``read_at``."""
        await self.keys.fresh(self.pool, self.principal, read_at)

    async def periodic(self) -> None:
        await self.keys.fresh(self.pool, self.principal, time.monotonic() - self.conf.auth_check_s)

    def up(self) -> None:
        if self.down_since is not None:
            log.info("SSE stream of %s reads PostgreSQL again", self.principal.tenant_id)
        self.down_since, self.backoff = None, 0.1

    async def down(self) -> bool:
        """A query failed: wait a backoff; True when the stream should give up (close)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        if now - self.down_since >= self.conf.db_retry_s:
            return True
        await asyncio.sleep(min(self.backoff, self.conf.db_retry_s))
        self.backoff = min(self.backoff * 2, 2.0)
        return False


@counted
async def alert_stream(
    request: Request,
    pool,
    b: Broadcaster,
    keys: KeyStore,
    principal: Principal,
    last_id: int | None,
    conf: StreamConf,
) -> AsyncIterator[bytes]:
    tenant = principal.tenant_id
    sub = b.subscribe(tenant)  # before any read: see the module docstring
    guard = _Guard(keys, pool, principal, conf)
    cursor = last_id
    refill = last_id is not None
    seen_dropped = 0
    refilled = pages = 0
    quiet = time.monotonic()
    wait_s = min(conf.heartbeat_s, conf.auth_check_s)
    try:
        if (
            cursor is None
        ):  # no Last-Event-ID: start after the feed's horizon, known before "connected"
            deadline = time.monotonic() + min(5.0, conf.db_retry_s)
            while sub.start is None and not sub.closed and time.monotonic() < deadline:
                await sub.wait(0.5)
            cursor = sub.start
        yield hello(cursor if last_id is None else None)
        while not sub.closed:
            try:
                items = []
                if cursor is None:  # the feed did not know its horizon in time (PostgreSQL down)
                    if sub.start is None:
                        await sub.wait(wait_s)
                    if sub.start is not None:
                        cursor = sub.start
                        continue
                elif refill or sub.dropped != seen_dropped:
                    seen_dropped = sub.dropped
                    # the queue only ever gets what the feed reads after its horizon: a replay is
                    # complete when a short page was read *after* that horizon was known
                    horizon_known = sub.start is not None
                    items, _ = await read_page(pool, tenant, cursor, conf.page_size)
                    refill = len(items) == conf.page_size or not horizon_known
                    if not items and not horizon_known:
                        await sub.wait(0.2)  # the feed is still reading its horizon
                    pages += 1
                    refilled += len(items)
                    if not refill:
                        log.info(
                            "SSE client of %s caught up from PostgreSQL: %d events in %d pages "
                            "(cursor %d)",
                            tenant,
                            refilled,
                            pages,
                            items[-1].seq if items else cursor,
                        )
                        refilled = pages = 0
                elif sub.items:
                    # no await between the drop check above and this pop: a queue cleared by an
                    # overflow is never read past its gap
                    items = [i for i in sub.pop(conf.page_size) if i.seq > cursor]
                else:
                    await sub.wait(wait_s)
                    if sub.items or sub.closed or sub.dropped != seen_dropped:
                        continue
                if items:
                    await guard.sendable(max(i.read_at for i in items))
                    cursor = items[-1].seq
                    yield b"".join([i.frame for i in items])
                    quiet = time.monotonic()
                else:
                    await guard.periodic()
                guard.up()
            except Unauthorized:
                log.info("SSE stream of key %s closed: key revoked", principal.key_id)
                yield REVOKED
                return
            except DB_DOWN:
                refill = cursor is not None  # whatever was popped but not sent is read again
                if await guard.down():
                    log.warning(
                        "SSE stream of %s closed: PostgreSQL unavailable for %.0fs",
                        tenant,
                        conf.db_retry_s,
                    )
                    yield UNAVAILABLE
                    return
            if time.monotonic() - quiet >= conf.heartbeat_s:
                if await request.is_disconnected():
                    return
                yield HEARTBEAT
                quiet = time.monotonic()
    finally:
        b.unsubscribe(sub)


#: half-width of the expected band, in typical deviations of the window mean
BAND_K = 3.0


def score_row(r) -> dict:
    """A score row of :mod:`storage.series` (:data:`~storage.series.SCORE_ROW`) with the band
    ``lower``/``upper``: expected ± :data:`BAND_K` typical deviations, for every window with
    both (rows stored before migration 009 have the deviation only in an alert's explanation).
    """
    d = dict(zip(series_repo.SCORE_ROW, r, strict=True))
    dev = d["typical_deviation"]
    if dev is None:
        dev = (d["explanation"] or {}).get("typical_deviation")
        d["typical_deviation"] = dev if isinstance(dev, int | float) else None
    dev, exp = d["typical_deviation"], d["expected"]
    ok = dev is not None and exp is not None
    d["lower"] = exp - BAND_K * dev if ok else None
    d["upper"] = exp + BAND_K * dev if ok else None
    return d


def epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@counted
async def score_stream(
    request: Request,
    pool,
    keys: KeyStore,
    principal: Principal,
    host: str,
    metric: str,
    last_id: int | None,
    conf: StreamConf,
    closed: Callable[[], bool] = lambda: False,
) -> AsyncIterator[bytes]:
    tenant = principal.tenant_id
    cursor = None if last_id is None else datetime.fromtimestamp(last_id / 1000, UTC)
    guard = _Guard(keys, pool, principal, conf)

    async def newest() -> datetime:
        async with pool.connection(timeout=DB_TIMEOUT_S) as conn:
            return await series_repo.newest_window(conn, tenant, host, metric) or datetime(
                1970, 1, 1, tzinfo=UTC
            )

    if cursor is None:
        # the stream starts where the series is *before* the client hears it is connected:
        # a window stored after that is sent (reading the start after HELLO lost it)
        try:
            cursor = await newest()
        except DB_DOWN:
            pass  # read in the loop, which rides the outage out
    yield HELLO
    quiet = time.monotonic()
    while not closed():
        try:
            if cursor is None:
                cursor = await newest()
            async with pool.connection(timeout=DB_TIMEOUT_S) as conn:
                rows = await series_repo.scores_after(
                    conn, tenant, host, metric, cursor, conf.page_size
                )
            if rows:
                await guard.sendable(time.monotonic())
                out = []
                for r in rows:
                    d = score_row(r)
                    out.append(
                        frame(
                            "score",
                            {"host": host, "metric": metric, **_jsonable(d)},
                            epoch_ms(d["window_start"]),
                        )
                    )
                cursor = rows[-1][0]
                yield b"".join(out)
                quiet = time.monotonic()
                guard.up()
                continue
            await guard.periodic()
            guard.up()
            await asyncio.sleep(conf.score_poll_s)
        except Unauthorized:
            log.info("score stream of key %s closed: key revoked", principal.key_id)
            yield REVOKED
            return
        except DB_DOWN:
            if await guard.down():
                yield UNAVAILABLE
                return
        if time.monotonic() - quiet >= conf.heartbeat_s:
            if await request.is_disconnected():
                return
            yield HEARTBEAT
            quiet = time.monotonic()


def _jsonable(d: dict) -> dict:
    return {
        k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v)
        for k, v in d.items()
    }


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
