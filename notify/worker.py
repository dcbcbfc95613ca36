"""The delivery worker: ``alert_events`` (the outbox) → deliveries → Alertmanager and webhooks.

``eventops worker notify`` runs one :class:`NotifyWorker` (a separate process: a slow or dead
endpoint never delays the pipeline). Each step of its loop:

1. **Fan-out** — the transitions stored since its cursor, in ``seq`` order, become one
   delivery per matching channel of their tenant (:mod:`notify.filters`); a transition a silence
   mutes is stored as a ``silenced`` delivery with the silences' ids. The deliveries and the
   cursor move in one transaction and a delivery is unique per ``(channel, transition)``, so a
   worker killed at any moment fans out every transition exactly once.
2. **Release** — a ``silenced`` delivery whose alert still fires and that no silence mutes any
   more (it ended or was expired) becomes pending: when a silence ends, alerts still firing are
   notified.
3. **Dispatch** — each channel with a pending delivery due gets a task on a thread pool that
   sends that channel's deliveries one at a time in ``seq`` order (per-endpoint ordering) and
   stops at the first failure; a failed attempt is retried after an exponential backoff with
   jitter (``Retry-After`` honoured), up to ``EVENTOPS_NOTIFY_MAX_ATTEMPTS``, after which the
   delivery is ``failed`` and kept (``eventops notify replay`` sends it again). Every attempt is a
   ``delivery_attempts`` row, written after the HTTP answer: a worker killed between the two
   sends that delivery again, with the same ``webhook-id`` (at-least-once; receivers drop
   duplicates by id). One task per channel, each request bounded by
   ``EVENTOPS_NOTIFY_TIMEOUT_S``: a slow endpoint holds only its own task.
4. **Re-send** — every ``EVENTOPS_NOTIFY_RESEND_S`` the alerts still firing (and delivered,
   and not muted) are sent to their Alertmanager channels again with ``endsAt`` four intervals
   ahead, so Alertmanager keeps them firing and resolves them itself only if EventOps stops.

PostgreSQL away: the step fails, the worker waits with backoff and carries on (it never ends
because a service is away).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx
import orjson
import psycopg
from psycopg_pool import ConnectionPool

from core.records import AlertEvent
from core.settings import Settings
from core.silences import Silence, alert_labels, silencing
from notify import messages, signing
from notify.filters import ChannelFilter
from storage import notify as repo

log = logging.getLogger(__name__)

#: transitions fanned out per transaction
FANOUT_BATCH = 1000
#: key of the advisory lock the delivering worker holds
NOTIFY_LOCK = 0x6E6F74696679  # "notify"


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    tenant_id: str
    name: str
    kind: str  #: ``alertmanager`` | ``webhook``
    url: str
    filter: ChannelFilter
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: tuple) -> Channel:
        d = dict(zip((*repo.CHANNEL_ROW, "secret"), row, strict=True))
        return cls(
            d["id"],
            d["tenant_id"],
            d["name"],
            d["kind"],
            d["url"],
            ChannelFilter.parse(d["filter"]),
            d["secret"],
        )


@dataclass
class NotifyStats:
    fanned_out: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    silenced: int = 0
    released: int = 0
    resent: int = 0
    outages: int = 0


def backoff_s(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Wait before attempt ``attempt + 1``: ``base * 2**(attempt-1)`` capped, with "equal
    jitter" (uniform in its upper half), and at least ``Retry-After`` (also capped).

    >>> random.seed(1); [round(backoff_s(a, 1.0, 60.0), 2) for a in (1, 2, 3, 10)]
    [0.57, 1.85, 3.53, 37.65]
    """
    d = min(cap, base * 2 ** max(0, attempt - 1))
    d = random.uniform(d / 2, d)
    if retry_after is not None:
        d = max(d, min(cap, retry_after))
    return d


def _first_line(e: BaseException) -> str:
    t = str(e).strip()
    return t.splitlines()[0] if t else type(e).__name__


def _retry_after(r: httpx.Response) -> float | None:
    v = r.headers.get("retry-after")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class NotifyWorker:
    """Fans out and delivers alert transitions (see the module docstring)."""

    def __init__(self, s: Settings, http: httpx.Client | None = None) -> None:
        self.s = s
        self.dashboard = s.public_url or f"http://{s.api_host}:{s.api_port}"
        self.valid_for_s = 4 * s.notify_resend_s
        self.http = http or httpx.Client(timeout=s.notify_timeout_s, follow_redirects=False)
        self.pool = ConnectionPool(
            s.pg_dsn(),
            min_size=1,
            max_size=s.notify_concurrency + 1,
            open=False,
            kwargs={"connect_timeout": max(1, int(s.connect_timeout_s))},
        )
        self.tasks = ThreadPoolExecutor(s.notify_concurrency, thread_name_prefix="notify")
        self.busy: dict[int, Future] = {}
        self.channels: dict[int, Channel] = {}
        self.by_tenant: dict[str, list[Channel]] = {}
        self.silences: dict[str, list[Silence]] = {}
        self.stats = NotifyStats()
        self._stop = threading.Event()
        self._refreshed = -float("inf")
        self._resent = time.monotonic()
        self._lock = threading.Lock()
        self._lock_conn: psycopg.Connection | None = None
        self._standing_by = False

    # -- lifecycle ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def stop(self) -> None:
        self._stop.set()

    def run(self, until: Callable[[], bool] | None = None) -> NotifyStats:
        """Loop until :meth:`stop` (or ``until()`` is true); PostgreSQL outages are waited out."""
        self.pool.open()
        failures = 0
        down_since = 0.0
        try:
            while not self._stop.is_set() and not (until and until()):
                try:
                    self.step()
                    if failures:
                        log.info(
                            "notify: recovered after %.1f s (%d retries)",
                            time.monotonic() - down_since,
                            failures,
                        )
                    failures = 0
                    self._stop.wait(self.s.notify_poll_s)
                except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as e:
                    if not failures:
                        down_since = time.monotonic()
                        log.warning(
                            "notify: PostgreSQL unavailable (%s); deliveries paused, retrying",
                            _first_line(e),
                        )
                    failures += 1
                    self.stats.outages += 1
                    self._stop.wait(
                        backoff_s(failures, self.s.retry_backoff_s, self.s.retry_backoff_max_s)
                    )
                except Exception as e:  # noqa: BLE001 - a failing step is logged and retried
                    if not failures:
                        down_since = time.monotonic()
                        log.exception("notify: step failed (%s); retrying", _first_line(e))
                    failures += 1
                    self._stop.wait(
                        backoff_s(failures, self.s.retry_backoff_s, self.s.retry_backoff_max_s)
                    )
        finally:
            self.tasks.shutdown(wait=True, cancel_futures=True)
            if self._lock_conn is not None:
                self._lock_conn.close()
            self.pool.close()
            self.http.close()
        return self.stats

    def _leader(self) -> bool:
        """Whether this worker holds the notify lock (a session advisory lock on a connection
        of its own): one worker delivers at a time, so a second one (a replica, a restart that
        overlaps) stands by instead of sending duplicates out of order. A lost connection
        loses the lock; it is taken again when PostgreSQL is back."""
        c = self._lock_conn
        if c is not None and not c.closed and not c.broken:
            return True
        if c is not None:
            c.close()
            self._lock_conn = None
        c = psycopg.connect(
            self.s.pg_dsn(), autocommit=True, connect_timeout=max(1, int(self.s.connect_timeout_s))
        )
        if repo.try_lock(c, NOTIFY_LOCK):
            self._lock_conn = c
            if self._standing_by:
                log.info("notify: took over deliveries")
            self._standing_by = False
            return True
        c.close()
        if not self._standing_by:
            log.info("notify: another notify worker delivers; standing by")
        self._standing_by = True
        return False

    def step(self) -> None:
        if not self._leader():
            return
        with self.pool.connection() as conn:
            self._refresh(conn)
            while self._fan_out(conn) == FANOUT_BATCH:
                pass
            self._release(conn)
            due = repo.due_channels(conn)
        self._dispatch(due)
        if time.monotonic() - self._resent >= self.s.notify_resend_s:
            self._resent = time.monotonic()
            self._submit(-1, self._resend)

    # -- reference data ----------------------------------------------------------------------
    def _refresh(self, conn: psycopg.Connection, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._refreshed < self.s.notify_refresh_s:
            return
        chans = [Channel.from_row(r) for r in repo.load_channels(conn)]
        sil: dict[str, list[Silence]] = defaultdict(list)
        for x in repo.load_silences(conn):
            sil[x.tenant_id].append(x)
        by_tenant: dict[str, list[Channel]] = defaultdict(list)
        for c in chans:
            by_tenant[c.tenant_id].append(c)
        self.channels = {c.id: c for c in chans}
        self.by_tenant, self.silences = dict(by_tenant), dict(sil)
        self._refreshed = now

    # -- 1. fan-out --------------------------------------------------------------------------
    def _fan_out(self, conn: psycopg.Connection) -> int:
        with conn.transaction():
            evs = repo.events_after_cursor(conn, FANOUT_BATCH)
            if not evs:
                return 0
            mine = [e for e in evs if e[1] in self.by_tenant]
            tags = repo.alert_tags(conn, {(e[1], e[4]["host"]) for e in mine})
            told = repo.told(conn, {e[2] for e in mine})
            now = time.time()
            rows = []
            for seq, tenant, aid, kind, p in mine:
                labels = alert_labels(
                    p["host"],
                    p["metric"],
                    p["severity"],
                    p.get("rule", ""),
                    tags.get((tenant, p["host"])),
                )
                muted = silencing(self.silences.get(tenant, ()), labels, now)
                for ch in self.by_tenant[tenant]:
                    if not ch.filter.passes(kind, labels, (ch.id, aid) in told):
                        continue
                    if not muted:
                        told.add((ch.id, aid))
                    rows.append(
                        (tenant, ch.id, seq, aid, kind, "silenced" if muted else "pending", muted)
                    )
            repo.fan_out_batch(conn, rows, evs[-1][0])
        self.stats.fanned_out += len(rows)
        self.stats.silenced += sum(1 for r in rows if r[5] == "silenced")
        return len(evs)

    # -- 2. release --------------------------------------------------------------------------
    def _release(self, conn: psycopg.Connection) -> None:
        rows = repo.silenced_open(conn)
        if not rows:
            return
        tags = repo.alert_tags(conn, {(r[1], r[3]) for r in rows})
        now = time.time()
        free = [
            did
            for did, tenant, _aid, host, metric, sev, rule in rows
            if not silencing(
                self.silences.get(tenant, ()),
                alert_labels(host, metric, sev, rule, tags.get((tenant, host))),
                now,
            )
        ]
        n = repo.release(conn, free)
        if n:
            log.info("notify: %d muted deliveries released (their silences ended)", n)
        self.stats.released += n

    # -- 3. dispatch and delivery ------------------------------------------------------------
    def _submit(self, key: int, fn: Callable[[], None]) -> None:
        with self._lock:
            f = self.busy.get(key)
            if f is not None and not f.done():
                return
            self.busy[key] = self.tasks.submit(self._guard, fn)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            log.warning(
                "notify: PostgreSQL unavailable during a delivery (%s); it is retried",
                _first_line(e),
            )
        except Exception as e:  # noqa: BLE001 - a task's failure is retried by the next step
            log.exception("notify: delivery task failed (%s); it is retried", _first_line(e))

    def _dispatch(self, due: list[tuple[int, float]]) -> None:
        now = time.time()
        for channel_id, at in due:
            ch = self.channels.get(channel_id)
            if ch is None or at > now:
                continue
            self._submit(ch.id, lambda ch=ch: self._drain(ch))

    def _drain(self, ch: Channel) -> None:
        """Send the channel's due deliveries in order; stop at the first failure."""
        while not self._stop.is_set():
            with self.pool.connection() as conn:
                head = repo.next_delivery(conn, ch.id)
            if head is None or head[5] > time.time():
                return
            if not self._deliver(ch, head):
                return

    def _deliver(self, ch: Channel, head: tuple) -> bool:
        did, seq, _aid, _kind, attempts, _due, payload = head
        ev = AlertEvent.from_dict(payload).stored(seq)
        now = time.time()
        if ch.kind == "alertmanager":
            url = ch.url.rstrip("/") + "/api/v2/alerts"
            body = orjson.dumps(
                messages.alertmanager_alerts(ev, now, self.valid_for_s, self.dashboard)
            )
            headers = {"content-type": "application/json"}
        else:
            url = ch.url
            labels = alert_labels(ev.host, ev.metric, ev.severity, ev.rule)
            body = messages.webhook_body(ev, labels, now, self.dashboard)
            headers = {
                "content-type": "application/json",
                **signing.headers(f"msg_{ch.id}_{seq}", int(now), body, ch.secret or ""),
            }
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        retry_after = None
        try:
            r = self.http.post(url, content=body, headers=headers)
            status = r.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {r.text[:200]}"
                retry_after = _retry_after(r)
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"[:300]
        latency = (time.perf_counter() - t0) * 1000.0
        attempt = attempts + 1
        ok = error is None
        if ok:
            state, due = "delivered", now
        elif attempt >= self.s.notify_max_attempts:
            state, due = "failed", now
        else:
            state = "pending"
            due = time.time() + backoff_s(
                attempt, self.s.notify_backoff_s, self.s.notify_backoff_max_s, retry_after
            )
        with self.pool.connection() as conn:
            repo.finish_attempt(conn, did, attempt, status, latency, error, state, due)
        if ok:
            self.stats.delivered += 1
        elif state == "failed":
            self.stats.failed += 1
            log.warning(
                "notify: delivery %d to %s/%s failed after %d attempts: %s",
                did,
                ch.tenant_id,
                ch.name,
                attempt,
                error,
            )
        else:
            self.stats.retried += 1
        return ok

    # -- 4. Alertmanager re-send -------------------------------------------------------------
    def _resend(self) -> None:
        now = time.time()
        for ch in list(self.channels.values()):
            if ch.kind != "alertmanager":
                continue
            with self.pool.connection() as conn:
                firing = repo.open_alerts_for(conn, ch.tenant_id)
                told = repo.delivered_alerts(conn, ch.id)
                tags = repo.alert_tags(conn, {(ch.tenant_id, p["host"]) for _, p in firing if p})
            alerts = []
            for aid, p in firing:
                if aid not in told or not p:
                    continue
                ev = AlertEvent.from_dict(p)
                labels = alert_labels(
                    ev.host, ev.metric, ev.severity, ev.rule, tags.get((ch.tenant_id, ev.host))
                )
                if silencing(self.silences.get(ch.tenant_id, ()), labels, now):
                    continue
                if ev.kind != "resolve":
                    alerts.extend(
                        messages.alertmanager_alerts(
                            ev, now, self.valid_for_s, self.dashboard, resend=True
                        )
                    )
            for i in range(0, len(alerts), 500):
                try:
                    r = self.http.post(
                        ch.url.rstrip("/") + "/api/v2/alerts",
                        content=orjson.dumps(alerts[i : i + 500]),
                        headers={"content-type": "application/json"},
                    )
                    if r.status_code >= 300:
                        log.warning(
                            "notify: re-send to %s/%s: HTTP %d",
                            ch.tenant_id,
                            ch.name,
                            r.status_code,
                        )
                    else:
                        self.stats.resent += len(alerts[i : i + 500])
                except httpx.HTTPError as e:
                    log.warning("notify: re-send to %s/%s: %s", ch.tenant_id, ch.name, e)
