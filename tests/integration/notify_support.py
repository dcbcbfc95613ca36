"""Helpers of the notification tests: a webhook receiver that verifies signatures, the real
Alertmanager's API, and alerts made by the real pipeline (the embedded runner)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
from standardwebhooks import Webhook

from core.records import iso_z
from core.settings import Settings
from notify.worker import NotifyWorker
from pipeline.embedded import EmbeddedPipeline


class Receiver:
    """A local webhook endpoint. ``answer(n)`` gives the status of the n-th request (1-based)
    per ``webhook-id``; every request is verified with the reference ``standardwebhooks``
    library and recorded; ``accepted`` holds the bodies answered 2xx."""

    def __init__(
        self,
        secret: str | None = None,
        answer: Callable[[int], int] = lambda n: 200,
        delay_s: float = 0.0,
    ) -> None:
        self.secret, self.answer, self.delay_s = secret, answer, delay_s
        self.requests: list[dict] = []
        self.accepted: list[dict] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        owner = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hdr = {k.lower(): v for k, v in self.headers.items()}
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                ok_sig = True
                if owner.secret is not None:
                    try:
                        Webhook(owner.secret).verify(body, hdr)
                    except Exception:  # noqa: BLE001 - any failure is a bad signature
                        ok_sig = False
                with owner._lock:
                    mid = hdr.get("webhook-id", "")
                    n = 1 + sum(1 for r in owner.requests if r["id"] == mid)
                    status = owner.answer(n) if ok_sig else 401
                    rec = {
                        "id": mid,
                        "n": n,
                        "status": status,
                        "body": orjson.loads(body),
                        "at": time.time(),
                    }
                    owner.requests.append(rec)
                    if not ok_sig:
                        owner.bad_signatures += 1
                    if 200 <= status < 300:
                        owner.accepted.append(rec)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._t.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WorkerThread:
    """A NotifyWorker in a thread of the test process."""

    def __init__(self, s: Settings) -> None:
        self.w = NotifyWorker(s)
        self.t = threading.Thread(target=self.w.run, daemon=True)
        self.t.start()

    def stop(self) -> None:
        self.w.stop()
        self.t.join(30)


def event(tenant: str, host: str, metric: str, value: float, ts: float) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": tenant,
            "host": host,
            "metric": metric,
            "value": value,
            "ts_event": iso_z(ts, "milliseconds"),
            "unit": "percent",
            "tags": {},
        }
    )


def cpu_incident(
    s: Settings,
    tenant: str,
    host: str,
    *,
    start: float,
    resolve: bool = True,
    pipe: EmbeddedPipeline | None = None,
) -> float:
    """cpu_load on ``host``: normal, 97 % (the default rule opens a critical alert at once)
    and, with ``resolve``, back to normal; through the real stages into PostgreSQL. Returns
    the event time of the anomalous reading."""
    own = pipe is None
    pipe = pipe or EmbeddedPipeline(s)
    evs = [event(tenant, host, "cpu_load", 20.0, start + i) for i in range(3)]
    evs.append(event(tenant, host, "cpu_load", 97.0, start + 3))
    if resolve:
        evs += [event(tenant, host, "cpu_load", 20.0, start + 4 + i) for i in range(2)]
    n, dead, _ = pipe.feed(evs)
    assert not dead, dead
    if own:
        pipe.close()
    return start + 3


def resolve_cpu(s: Settings, tenant: str, host: str, at: float) -> None:
    pipe = EmbeddedPipeline(s)
    _, dead, _ = pipe.feed([event(tenant, host, "cpu_load", 20.0, at + i) for i in range(2)])
    assert not dead
    pipe.close()


def am_alerts(url: str, tenant: str, active_only: bool = False) -> list[dict]:
    """The real Alertmanager's alerts with label ``tenant`` (GET /api/v2/alerts)."""
    params = [("filter", f'tenant="{tenant}"')]
    if active_only:
        params += [("silenced", "false"), ("inhibited", "false")]
    r = httpx.get(url.rstrip("/") + "/api/v2/alerts", params=params, timeout=5)
    r.raise_for_status()
    return r.json()
