"""Worker health: readiness state, the retry policy used during outages, a tiny HTTP probe, and
the counters of what a runner did (:class:`Stats`).

A worker is ``starting`` until it has joined its consumer group, then ``ok``, or ``degraded``
while one of its services is unavailable (``postgres``: a write, checkpoint, outbox or
reference-data read failed and is being retried; ``kafka``: no broker reachable, or a flush or
offset commit is being retried). Each change of state is logged once — when a service goes
down (with the error) and when it comes back (with how long it was away and how many retries
it took) — never once per retry.

:class:`Backoff` is the retry policy: exponential from ``initial`` s, each wait capped at
``cap`` s, with jitter (a wait is drawn from ``[d/2, d]`` so that the workers of a group do
not reconnect in lockstep). A worker retries for as long as the service is away unless
``give_up_s`` is set (``EVENTOPS_OUTAGE_GIVE_UP_S``, default 0 = never).

:class:`HealthServer` serves the state on ``EVENTOPS_WORKER_HEALTH_PORT`` (0 = off) from a
daemon thread, stdlib only::

    GET /healthz  200 {"status": "ok", "loop_age_s": 0.1}        the main loop is turning
                  503 when it has not turned for ``stall_s`` (a hung worker)
    GET /readyz   200 {"status": "ok", "checks": {"postgres": "ok", "kafka": "ok"}}
                  503 {"status": "degraded", "checks": {"postgres": "degraded: …", …},
                       "degraded_for_s": 12.3}  or  {"status": "starting", …}
    GET /metrics  200 the Prometheus text exposition of the process (:mod:`core.telemetry`)
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.telemetry import exposition

log = logging.getLogger(__name__)

STARTING, OK, DEGRADED = "starting", "ok", "degraded"
SERVICES = ("postgres", "kafka")


@dataclass
class Stats:
    """What a runner did since it started."""

    batches: int = 0
    consumed: int = 0
    stored: int = 0
    dead: int = 0
    alerts: int = 0
    commit_failures: int = 0
    #: windows closed by processing time (the idle close of quiet partitions)
    idle_closed: int = 0
    #: failed attempts waited out, per service ("postgres", "kafka")
    outage_retries: dict = field(default_factory=lambda: {"postgres": 0, "kafka": 0})
    started: float = field(default_factory=time.monotonic)


class Backoff:
    """Exponential backoff with jitter; every wait is at most ``cap`` seconds.

    >>> b = Backoff(0.5, 4.0, rng=random.Random(1))
    >>> waits = [b.next() for _ in range(6)]
    >>> all(0.25 <= w <= 4.0 for w in waits) and waits[-1] >= 2.0
    True
    >>> b.reset(); b.attempts
    0
    """

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff needs 0 < initial <= cap (got {initial}, {cap})")
        self.initial, self.cap = initial, cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.cap, self.initial * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return d / 2 + self._rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempts = 0


class Health:
    """Thread-safe readiness of one worker (``starting`` → ``ok`` ⇄ ``degraded``)."""

    def __init__(self, stall_s: float = 120.0) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._down: dict[str, tuple[float, str]] = {}  # service -> (since, reason)
        self._retries: dict[str, int] = {}
        self.stall_s = stall_s
        self._beat = time.monotonic()
        #: (monotonic time, status) of every change, for tests and the log
        self.transitions: list[tuple[float, str]] = [(time.monotonic(), STARTING)]

    # -- updates -------------------------------------------------------------------------
    def beat(self) -> None:
        """The main loop is alive (called every turn and while waiting out an outage)."""
        self._beat = time.monotonic()

    def set_ready(self) -> None:
        with self._lock:
            if self._ready:
                return
            self._ready = True
            self._record()
        log.info("worker ready")

    def degraded(self, service: str, reason: str, action: str = "retrying") -> None:
        """``service`` is unavailable; logs only when it was not already degraded."""
        with self._lock:
            self._retries[service] = self._retries.get(service, 0) + 1
            if service in self._down:
                return
            self._down[service] = (time.monotonic(), reason)
            self._record()
        log.warning("degraded: %s unavailable (%s); %s", service, reason, action)

    def recovered(self, service: str, action: str = "") -> float | None:
        """``service`` works again; returns how long it was away (``None`` if it was not)."""
        with self._lock:
            if service not in self._down:
                return None
            since, _ = self._down.pop(service)
            retries = self._retries.pop(service, 0)
            self._record()
        took = time.monotonic() - since
        log.warning(
            "recovered: %s available again after %.1f s (%d retries)%s",
            service,
            took,
            retries,
            f"; {action}" if action else "",
        )
        return took

    def is_degraded(self, service: str | None = None) -> bool:
        with self._lock:
            return bool(self._down) if service is None else service in self._down

    def degraded_for(self, service: str) -> float:
        with self._lock:
            since = self._down.get(service, (None,))[0]
        return 0.0 if since is None else time.monotonic() - since

    def _record(self) -> None:  # under the lock
        self.transitions.append((time.monotonic(), self._status()))

    # -- reads ---------------------------------------------------------------------------
    def _status(self) -> str:
        if self._down:
            return DEGRADED
        return OK if self._ready else STARTING

    @property
    def status(self) -> str:
        with self._lock:
            return self._status()

    def readiness(self) -> dict:
        now = time.monotonic()
        with self._lock:
            status = self._status()
            checks = {}
            for svc in SERVICES:
                if svc in self._down:
                    checks[svc] = f"degraded: {self._down[svc][1]}"
                else:
                    checks[svc] = "ok" if self._ready or svc == "postgres" else STARTING
            body: dict = {"status": status, "checks": checks}
            if self._down:
                body["degraded_for_s"] = round(now - min(t for t, _ in self._down.values()), 1)
        return body

    def liveness(self) -> dict:
        age = time.monotonic() - self._beat
        return {"status": "ok" if age < self.stall_s else "stalled", "loop_age_s": round(age, 1)}


class HealthServer:
    """``/healthz`` and ``/readyz`` of a :class:`Health` and ``/metrics`` over HTTP, in a
    daemon thread."""

    def __init__(self, health: Health, host: str, port: int) -> None:
        hl = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    data, ctype = exposition()
                    return self._send(200, data, ctype)
                if path == "/healthz":
                    body = hl.liveness()
                    code = 200 if body["status"] == "ok" else 503
                elif path == "/readyz":
                    body = hl.readiness()
                    code = 200 if body["status"] == OK else 503
                else:
                    body, code = {"detail": "not found; try /healthz, /readyz or /metrics"}, 404
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, data: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # probes every few s: no access log
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        log.info(
            "health endpoints on http://%s:%d/healthz, /readyz and /metrics",
            self.httpd.server_address[0],
            self.port,
        )
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
