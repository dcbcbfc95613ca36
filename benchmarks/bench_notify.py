"""Noise and time-to-notify.  Run: ``python -m benchmarks.bench_notify [--quick]``.

Two phases, on a scratch database, the real Alertmanager of ``scripts/services.sh`` and the
default rules and ensemble:

1. **Noise.** The simulator (``--hosts`` hosts x 4 metrics, 30 s samples, ``--days`` days of
   history, injected incidents: CPU spikes, latency spikes, traffic drops, memory leaks) goes
   through the embedded pipeline. Reported: alerts per series-day (all, threshold rules, anomaly
   scores), the share of alerts that open on a series within 30 min of its previous alert
   resolving (*flapping*: open/resolve cycles), and the share of injected incidents with an alert
   opened during them (what the noise buys).
2. **Time to notify.** A notify worker (default settings: a 0.5 s poll) delivers to an
   Alertmanager channel and a webhook channel; ``--incidents`` CPU readings of 97 % are fed live,
   one at a time on distinct hosts, and each one's arrival is watched for: in Alertmanager's
   ``GET /api/v2/alerts`` (polled every 20 ms) and at the webhook receiver. Reported: p50 / p99 of
   the time from feeding the anomalous event to receipt. The baseline of the ratio is the notify
   worker's poll interval.

Writes ``benchmarks/results/notify.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import scratch, write_results
from core.settings import Settings
from notify.channels import ChannelSpec
from pipeline.embedded import EmbeddedPipeline
from pipeline.simulate import METRICS, Simulator
from storage import notify as repo
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.notify_support import Receiver, WorkerThread, am_alerts, event

FLAP_S = 1800.0


def noise(s: Settings, hosts: int, days: float) -> list[dict]:
    tenant = "noise"
    with connect(s) as conn:
        create_tenant(conn, tenant)
        conn.commit()
    interval = 30.0
    ticks = int(days * 86400 / interval)
    sim = Simulator(
        hosts=hosts,
        tenant=tenant,
        seed=7,
        interval=interval,
        start=time.time() - days * 86400 - 600,
        anomaly_rate=0.0015,
    )
    pipe = EmbeddedPipeline(s)
    t0 = time.perf_counter()
    chunk: list[bytes] = []
    for evs in sim.events(ticks=ticks):
        chunk.extend(evs)
        if len(chunk) >= 20_000:
            pipe.feed(chunk)
            chunk = []
    if chunk:
        pipe.feed(chunk)
    pipe.close()
    feed_s = time.perf_counter() - t0
    with connect(s) as conn:
        rows = conn.execute(
            "SELECT host, metric, rule, extract(epoch FROM opened_at)::float8,"
            " extract(epoch FROM resolved_at)::float8 FROM alerts WHERE tenant_id = %s"
            " ORDER BY host, metric, opened_at",
            (tenant,),
        ).fetchall()
    series_days = hosts * len(METRICS) * days
    n_rule = sum(1 for r in rows if not r[2].startswith("anomaly"))
    flaps = 0
    last_end: dict[tuple[str, str], float] = {}
    for h, m, _rule, opened, resolved in rows:
        prev = last_end.get((h, m))
        if prev is not None and 0 <= opened - prev <= FLAP_S:
            flaps += 1
        if resolved is not None:
            last_end[(h, m)] = resolved
    caught = 0
    for a in sim.anomalies:
        caught += any(r[0] == a.host and a.start - 60 <= r[3] <= a.end + 300 for r in rows)
    n = len(rows)
    print(
        f"noise: {hosts} hosts x {len(METRICS)} metrics x {days:g} d fed in {feed_s:.0f} s; "
        f"{n} alerts ({n_rule} threshold, {n - n_rule} anomaly), {flaps} flaps, "
        f"{caught}/{len(sim.anomalies)} incidents alerted"
    )
    return [
        {"name": "alerts_per_series_day", "value": n / series_days, "unit": "alerts"},
        {"name": "rule_alerts_per_series_day", "value": n_rule / series_days, "unit": "alerts"},
        {
            "name": "anomaly_alerts_per_series_day",
            "value": (n - n_rule) / series_days,
            "unit": "alerts",
        },
        {"name": "flapping_share_pct", "value": 100.0 * flaps / max(n, 1), "unit": "%"},
        {
            "name": "incidents_alerted_pct",
            "value": 100.0 * caught / max(len(sim.anomalies), 1),
            "unit": "%",
        },
    ]


def time_to_notify(s: Settings, incidents: int) -> list[dict]:
    tenant = "ttn"
    rx = Receiver()
    with connect(s) as conn:
        create_tenant(conn, tenant)
        conn.commit()
        for name, kind, url in (
            ("am", "alertmanager", s.alertmanager_url),
            ("hook", "webhook", rx.url),
        ):
            spec = ChannelSpec.check(name, kind, url, None)
            repo.add_channel(conn, tenant, spec.name, spec.kind, spec.url, spec.secret, spec.filter)
            if spec.secret:
                rx.secret = spec.secret
    w = WorkerThread(s)
    pipe = EmbeddedPipeline(s)
    am_ms, hook_ms = [], []
    try:
        base = time.time() - 120
        for i in range(incidents):
            host = f"ttn-{i:03d}-{int(base)}"
            pipe.feed([event(tenant, host, "cpu_load", 20.0, base + k) for k in range(3)])
            time.sleep(0.2 + 0.3 * np.random.default_rng(i).random())  # a random poll phase
            t0 = time.time()
            pipe.feed([event(tenant, host, "cpu_load", 97.0, time.time())])
            got_am = got_hook = None
            deadline = t0 + 30
            while (got_am is None or got_hook is None) and time.time() < deadline:
                now = time.time()
                if got_am is None and any(
                    a["labels"]["host"] == host for a in am_alerts(s.alertmanager_url, tenant)
                ):
                    got_am = now
                if got_hook is None:
                    hit = [r["at"] for r in rx.accepted if r["body"]["data"]["host"] == host]
                    if hit:
                        got_hook = hit[0]
                time.sleep(0.02)
            if got_am is not None:
                am_ms.append((got_am - t0) * 1000)
            if got_hook is not None:
                hook_ms.append((got_hook - t0) * 1000)
    finally:
        pipe.close()
        w.stop()
        rx.close()

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else float("nan")

    poll_ms = s.notify_poll_s * 1000
    print(
        f"time to notify over {incidents} incidents: Alertmanager p50 {pct(am_ms, 50):.0f} ms,"
        f" p99 {pct(am_ms, 99):.0f} ms ({len(am_ms)} received); webhook p50"
        f" {pct(hook_ms, 50):.0f} ms, p99 {pct(hook_ms, 99):.0f} ms; poll {poll_ms:.0f} ms"
    )
    return [
        {
            "name": "event_to_alertmanager_p50_ms",
            "value": pct(am_ms, 50),
            "unit": "ms",
            "baseline": poll_ms,
            "ratio": pct(am_ms, 50) / poll_ms,
        },
        {
            "name": "event_to_alertmanager_p99_ms",
            "value": pct(am_ms, 99),
            "unit": "ms",
            "baseline": poll_ms,
            "ratio": pct(am_ms, 99) / poll_ms,
        },
        {"name": "event_to_webhook_p50_ms", "value": pct(hook_ms, 50), "unit": "ms"},
        {"name": "event_to_webhook_p99_ms", "value": pct(hook_ms, 99), "unit": "ms"},
        {
            "name": "notified_of_incidents",
            "value": float(min(len(am_ms), len(hook_ms))),
            "unit": f"of {incidents}",
        },
        {
            "name": "event_to_alertmanager_mean_ms",
            "value": statistics.fmean(am_ms) if am_ms else float("nan"),
            "unit": "ms",
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 day, 10 hosts, 20 incidents")
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--incidents", type=int, default=50)
    a = ap.parse_args()
    if a.quick:
        a.hosts, a.days, a.incidents = 10, 1.0, 20
    base = Settings()
    with scratch(base) as s:
        rows = noise(s, a.hosts, a.days) + time_to_notify(s, a.incidents)
    write_results("notify", rows)


if __name__ == "__main__":
    main()
