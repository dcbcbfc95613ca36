"""End-to-end throughput: raw topic -> chained Kafka worker -> PostgreSQL.

Pre-loads N events into ``ingest.raw.agent`` (a scratch copy), starts
``eventops worker normalize,enrich,detect,sink`` as one subprocess (and, as a second
configuration, two subprocesses in one consumer group) and measures the sustained rate at which
rows land in ``metrics``: rows stored after the first batch's transaction, over the time from
that transaction to the last one (``ingested_at`` is the transaction time). Completion is polled
twice a second so the measurement costs PostgreSQL next to nothing. The baseline, in the same
run, is the MVP's sink: per event ``json.loads`` + a new PostgreSQL connection + INSERT +
commit. Configurations alternate run by run. Result: benchmarks/results/e2e.json.

    python -m benchmarks.bench_e2e [--events 600000] [--runs 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import orjson
import psycopg

from benchmarks.common import median, scratch, write_results
from core.settings import REPO_ROOT, Settings
from pipeline import kafka as kq
from pipeline.simulate import Simulator
from storage.connect import connect
from storage.tenants import create_tenant


def make_events(n: int, tenant: str) -> tuple[list[bytes], list[str]]:
    hosts = 500
    sim = Simulator(
        hosts=hosts,
        tenant=tenant,
        seed=1,
        interval=10,
        start=time.time() - n / (hosts * 4) * 10 - 60,
    )
    evs: list[bytes] = []
    for tick in sim.events():
        for e in tick:
            d = orjson.loads(e)
            del d["event_id"]  # ids derived from topic/partition/offset, as for a plain agent
            evs.append(orjson.dumps(d))
        if len(evs) >= n:
            break
    evs = evs[:n]
    keys = [f"{tenant}|{sim.names[(i // 4) % hosts]}" for i in range(n)]
    return evs, keys


def env_for(s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in s.model_dump().items():
        if v is None or k == "mlflow_tracking_uri_override":
            continue
        env[f"EVENTOPS_{k.upper()}"] = (
            v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)
        )
    return env


def run_pipeline(base: Settings, n: int, workers: int = 1) -> float:
    with scratch(base) as s:
        with connect(s) as conn:
            create_tenant(conn, "bench")
        evs, keys = make_events(n, "bench")
        p = kq.producer(s)
        kq.produce_all(p, s.topic_raw, evs, keys)
        kq.flush(p)
        conn = connect(s, autocommit=True)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--log-level",
                    "WARNING",
                    "worker",
                    "normalize,enrich,detect,sink",
                ],
                env=env_for(s),
                cwd=REPO_ROOT,
            )
            for _ in range(workers)
        ]
        try:
            deadline = time.monotonic() + 600
            while conn.execute("SELECT count(*) FROM metrics").fetchone()[0] < n:
                if time.monotonic() > deadline:
                    raise RuntimeError("timed out")
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("worker exited early")
                time.sleep(0.5)
            rate = stored_rate(conn, n)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
            conn.close()
        return rate


def stored_rate(conn, n: int) -> float:
    """Rows stored per second after the first batch's transaction, up to the last one
    (``ingested_at`` is the transaction time), of the ``n`` rows in ``metrics``."""
    first_n, span = conn.execute(
        "SELECT count(*) FILTER (WHERE ingested_at = t.lo),"
        " extract(epoch FROM t.hi - t.lo)::float8"
        " FROM metrics, (SELECT min(ingested_at) lo, max(ingested_at) hi FROM metrics) t"
        " GROUP BY t.lo, t.hi"
    ).fetchone()
    return (n - first_n) / span


def run_mvp_baseline(base: Settings, n: int) -> float:
    """The MVP's sink: one new connection, one INSERT and one commit per event."""
    with scratch(base, partitions=1) as s:
        evs, _ = make_events(n, "bench")
        dsn = s.pg_dsn()
        t0 = time.perf_counter()
        for i, raw in enumerate(evs):
            d = json.loads(raw)
            with psycopg.connect(dsn) as c:
                c.execute(
                    "INSERT INTO metrics"
                    " (event_id, tenant_id, host, metric, value, ts_event, unit, tags) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        f"mvp-{i}",
                        d["tenant_id"],
                        d["host"],
                        d["metric"],
                        d["value"],
                        d["ts_event"],
                        d["unit"],
                        json.dumps(d["tags"]),
                    ),
                )
                c.commit()
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker processes of the chain per configuration",
    )
    ap.add_argument("--baseline-events", type=int, default=1000)
    a = ap.parse_args()
    s = Settings()
    kq.wait_for_broker(s)
    rates: dict[int, list[float]] = {w: [] for w in a.workers}
    for i in range(a.runs):
        for w in a.workers:
            r = run_pipeline(s, a.events, w)
            rates[w].append(r)
            print(f"run {i + 1}, {w} worker process(es): {r:,.0f} events/s raw topic -> PostgreSQL")
    base = run_mvp_baseline(s, a.baseline_events)
    print(f"MVP-style baseline: {base:,.0f} events/s")
    rows = []
    for w, rs in rates.items():
        med = median(rs)
        rows.append(
            {
                "name": f"e2e raw->postgres, chained kafka worker x{w} (median)",
                "value": round(med, 1),
                "unit": "events/s",
                "baseline": round(base, 1),
                "ratio": round(med / base, 1),
                "runs": [round(r, 1) for r in rs],
                "events": a.events,
                "worker_processes": w,
            }
        )
    write_results("e2e", rows)


if __name__ == "__main__":
    main()
