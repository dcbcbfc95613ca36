"""``eventops demo``: embedded pipeline + simulator with injected anomalies + API, one process.

No Kafka needed: the simulator feeds the embedded runner in memory, alerts reach SSE clients
through the in-process bus. History is back-filled first so charts are populated at once.
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline import db
from pipeline.runner import Bus, EmbeddedPipeline
from pipeline.settings import Settings
from pipeline.simulate import Simulator

log = logging.getLogger(__name__)


def feed_forever(s: Settings, bus: Bus, tenant: str, hosts: int, backfill_s: float,
                 interval: float, stop: threading.Event, seed: int = 7) -> None:
    pipe = EmbeddedPipeline(s, bus, source=f"demo-{seed}")
    sim = Simulator(hosts=hosts, tenant=tenant, seed=seed, interval=interval,
                    start=time.time() - backfill_s, anomaly_rate=0.003)
    chunk: list[bytes] = []
    try:
        for evs in sim.events():
            chunk.extend(evs)
            ts_next = sim.start + sim.tick * interval
            live = ts_next > time.time()
            if len(chunk) >= s.batch_max_events or live:
                pipe.feed(chunk)
                chunk = []
            if live:
                stop.wait(max(0.0, ts_next - time.time()))
            if stop.is_set():
                break
    finally:
        pipe.close()


def run_demo(s: Settings, hosts: int = 12, backfill_s: float = 6 * 3600, interval: float = 10.0) -> None:
    import uvicorn

    from serving import auth
    from serving.app import create_app

    tenant = "demo"
    with db.connect(s) as conn:
        db.migrate(conn)
        db.create_tenant(conn, tenant, "Demo tenant")
        for i in range(hosts):
            db.set_inventory(conn, tenant, f"host-{i:03d}",
                             {"team": ["payments", "search", "ingest"][i % 3], "env": "prod"})
        # a fresh demo key per run (only hashes are stored, so an old one cannot be shown again)
        for k in auth.list_keys(conn, tenant):
            if k["label"] == "demo" and k["revoked_at"] is None:
                auth.revoke_key(conn, k["key_id"])
        _, key = auth.create_key(conn, tenant, "admin", label="demo")
    bus = Bus()
    stop = threading.Event()
    feeder = threading.Thread(target=feed_forever, name="demo-feeder", daemon=True,
                              args=(s, bus, tenant, hosts, backfill_s, interval, stop))
    feeder.start()
    url = f"http://{s.api_host}:{s.api_port}"
    print(f"\nEventOps demo (tenant '{tenant}')\n"
          f"  dashboard: {url}/#key={key}\n"
          f"  API key:   {key}   (admin scope; curl -H 'Authorization: Bearer {key}' {url}/alerts)\n"
          f"  API docs:  {url}/docs\n", flush=True)
    try:
        uvicorn.run(create_app(s, bus=bus), host=s.api_host, port=s.api_port, log_level="warning")
    finally:
        stop.set()
        feeder.join(timeout=10)
