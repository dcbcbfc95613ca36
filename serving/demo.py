"""``eventops demo``: embedded pipeline + simulator with injected anomalies + API, one process.

No Kafka needed: the simulator feeds the embedded runner in memory, alerts reach SSE clients
through the in-process bus. History is back-filled first so charts are populated at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

from core.settings import Settings
from pipeline.embedded import Bus, EmbeddedPipeline
from pipeline.simulate import Simulator
from registry.tags import CHALLENGER
from registry.watcher import start_watcher
from storage.connect import connect
from storage.inventory import set_inventory
from storage.migrate import migrate
from storage.tenants import create_tenant, list_keys, revoke_key

log = logging.getLogger(__name__)


def train_first_model(s: Settings, tenant: str) -> None:
    """Fit a batch model on the older 70 % of the back-filled events and judge it by replay on
    the newer 30 % against the ensemble alone (:func:`training.train.train_and_judge`); it is
    promoted only when it wins there, and the demo pipeline's watcher then swaps it in."""
    try:
        from training.replay import Events, feedback_from_postgres
        from training.train import TrainConfig, train_and_judge

        events = Events.from_postgres(s, tenant)
        j = train_and_judge(
            s, tenant, events, TrainConfig(params={"n_estimators": 100}),
            feedback=feedback_from_postgres(s, tenant, pad_s=s.window_s),
            tracking_uri=s.mlflow_tracking_uri_override,
        )  # fmt: skip
        print(f"  model:     {j.summary()}", flush=True)
    except Exception:  # the demo goes on without a batch model
        log.exception("training the demo model failed")


def feed_forever(
    s: Settings,
    bus: Bus,
    tenant: str,
    hosts: int,
    backfill_s: float,
    interval: float,
    stop: threading.Event,
    seed: int = 7,
    started: float | None = None,
) -> None:
    """Back-fill ``backfill_s`` of history, then feed live; ``started``: when the demo began
    (the "ready" line's clock; default now)."""
    started = time.time() if started is None else started
    watcher = start_watcher(s)
    challenger = start_watcher(s, CHALLENGER) if watcher else None
    pipe = EmbeddedPipeline(
        s,
        bus,
        source=f"demo-{seed}",
        model=watcher.current if watcher else None,
        shadow=challenger.current if challenger else None,
        maintain=True,
    ).start_idle_close()  # quiet hosts get their windows closed by processing time
    trained = False
    sim = Simulator(
        hosts=hosts,
        tenant=tenant,
        seed=seed,
        interval=interval,
        start=time.time() - backfill_s,
        anomaly_rate=0.003,
    )
    chunk: list[bytes] = []
    dead: Counter[str] = Counter()  # dead letters by reason, since the last report
    reported = time.monotonic()
    try:
        for evs in sim.events():
            chunk.extend(evs)
            ts_next = sim.start + sim.tick * interval
            live = ts_next > time.time()
            if len(chunk) >= s.batch_max_events or live:
                _, d, _ = pipe.feed(chunk)
                dead.update(x.reason for x in d)
                chunk = []
            if live and not trained:  # history is in: report it, train the first model on it
                st = pipe.stats
                print(
                    f"  history:   {st.consumed} events, {st.stored} stored, "
                    f"{st.dead} dead-lettered{_reasons(dead)}",
                    flush=True,
                )
                dead.clear()
                trained = True
                print(f"  ready:     {_ready_text(started)}", flush=True)
                threading.Thread(target=train_first_model, args=(s, tenant), daemon=True).start()
            if live and dead and time.monotonic() - reported > 60:
                log.warning(
                    "dead-lettered in the last minute: %s (table dead_letters)",
                    _reasons(dead).strip(" ()"),
                )
                dead.clear()
                reported = time.monotonic()
            if live:
                stop.wait(max(0.0, ts_next - time.time()))
            if stop.is_set():
                break
    finally:
        pipe.close()
        for w in (watcher, challenger):
            if w is not None:
                w.stop()


def _ready_text(started: float) -> str:
    """How long the demo took to a populated dashboard (``started``: when ``eventops demo``
    began, epoch seconds), and since ``make demo`` started when it says so
    (``EVENTOPS_DEMO_T0``, epoch seconds: venv, PostgreSQL and history included)."""
    t0 = os.environ.get("EVENTOPS_DEMO_T0", "")
    try:
        since_make = time.time() - float(t0)
    except ValueError:
        since_make = None
    own = time.time() - started
    if since_make is not None and 0 <= since_make < 86_400:
        return (
            f"dashboard populated {since_make:.0f} s after `make demo` started "
            f"({own:.0f} s of it in `eventops demo`)"
        )
    return f"dashboard populated {own:.0f} s after `eventops demo` started"


def _reasons(dead: Counter[str]) -> str:
    """``" (ts_too_old 3, bad_json 1)"``, or ``""`` when nothing was dead-lettered."""
    if not dead:
        return ""
    return " (" + ", ".join(f"{r} {n}" for r, n in dead.most_common()) + ")"


def run_demo(
    s: Settings, hosts: int = 12, backfill_s: float = 6 * 3600, interval: float = 10.0
) -> None:
    import uvicorn

    from serving import auth
    from serving.app import create_app
    from serving.serve import bind_or_explain

    started = time.time()
    tenant = "demo"
    # the demo serves on demo_port (8080), so it does not collide with `eventops api` (8000)
    s = s.model_copy(update={"api_port": s.demo_port})
    bind_or_explain(s.api_host, s.api_port, choose="--port or EVENTOPS_DEMO_PORT").close()
    with connect(s) as conn:
        migrate(conn)
        create_tenant(conn, tenant, "Demo tenant")
        for i in range(hosts):
            set_inventory(
                conn,
                tenant,
                f"host-{i:03d}",
                {"team": ["payments", "search", "ingest"][i % 3], "env": "prod"},
            )
        # a fresh demo key per run (only hashes are stored, so an old one cannot be shown again)
        for k in list_keys(conn, tenant):
            if k["label"] == "demo" and k["revoked_at"] is None:
                revoke_key(conn, k["key_id"])
        _, key = auth.create_key(conn, tenant, "admin", label="demo")
    bus = Bus()
    stop = threading.Event()
    feeder = threading.Thread(
        target=feed_forever,
        name="demo-feeder",
        daemon=True,
        args=(s, bus, tenant, hosts, backfill_s, interval, stop),
        kwargs={"started": started},
    )
    feeder.start()
    # the delivery worker, in this process: channels added in the dashboard get the alerts
    from notify.worker import NotifyWorker

    notifier = NotifyWorker(s)
    threading.Thread(target=notifier.run, name="demo-notify", daemon=True).start()
    url = f"http://{s.api_host}:{s.api_port}"
    print(
        f"\nEventOps demo (tenant '{tenant}')\n"
        f"  dashboard: {url}/#key={key}\n"
        f"  API key:   {key}   (admin scope; curl -H 'Authorization: Bearer {key}' {url}/alerts)\n"
        f"  API docs:  {url}/docs\n"
        f"  alerts to Alertmanager or a webhook: add a channel in the dashboard (the delivery\n"
        f"  worker runs in this process; `eventops worker notify` elsewhere)\n",
        flush=True,
    )
    try:
        uvicorn.run(create_app(s, bus=bus), host=s.api_host, port=s.api_port, log_level="warning")
    finally:
        stop.set()
        notifier.stop()
        feeder.join(timeout=10)
