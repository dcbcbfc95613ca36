"""API latency under load: p50/p99 of the metrics and alerts endpoints at 50 concurrent clients.

Loads ``--rows`` (default 5M) metric rows — 500 hosts x 4 metrics, one sample per 10 s — plus
alerts into a scratch database server-side (``INSERT … SELECT generate_series``, indexes built
afterwards), serves the API with uvicorn in a subprocess (Kafka mode, rate limit off) and drives
it with ``--clients`` concurrent ``httpx.AsyncClient`` tasks, each request on a random host.
Baseline: p50 of ``/healthz`` measured the same way in the same run (the cost of HTTP + the
event loop with no database work); ``ratio`` = value / baseline. Result: benchmarks/results/api.json.

    python -m benchmarks.bench_api [--rows 5000000] [--clients 50] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time

import httpx

from benchmarks.common import scratch, write_results
from pipeline import db
from pipeline.settings import REPO_ROOT, Settings
from serving import auth

HOSTS, METRICS, STEP_S = 500, ("cpu_load", "mem_used_pct", "latency_p99", "req_rate"), 10


def load(s: Settings, rows: int, tenant: str) -> str:
    per_series = rows // (HOSTS * len(METRICS))
    t0 = time.monotonic()
    with db.connect(s, autocommit=True) as c:
        db.create_tenant(c, tenant)
        c.execute("ALTER TABLE metrics DROP CONSTRAINT metrics_event_id_key")
        c.execute("DROP INDEX metrics_series_ts")
        c.execute("DROP INDEX metrics_tenant_metric_ts")
        c.execute("SET max_parallel_maintenance_workers = 2")
        c.execute(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event, unit) "
            "SELECT 'b:' || h || ':' || m || ':' || g, %s, 'host-' || lpad(h::text, 3, '0'), "
            " (ARRAY['cpu_load','mem_used_pct','latency_p99','req_rate'])[m], "
            " 40 + 20 * sin(g / 500.0 + h) + random() * 5, now() - g * interval '10 s', '' "
            "FROM generate_series(0, %s - 1) h, generate_series(1, 4) m, generate_series(0, %s - 1) g",
            (tenant, HOSTS, per_series))
        print(f"inserted {HOSTS * 4 * per_series:,} rows in {time.monotonic() - t0:.0f}s", flush=True)
        c.execute("ALTER TABLE metrics ADD CONSTRAINT metrics_event_id_key UNIQUE (event_id)")
        c.execute("CREATE INDEX metrics_series_ts ON metrics (tenant_id, host, metric, ts_event DESC)")
        c.execute("CREATE INDEX metrics_tenant_metric_ts ON metrics (tenant_id, metric, ts_event DESC)")
        # 50k alerts spread over the hosts and the last two weeks
        c.execute(
            "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity, ts_event, state,"
            " rule, message, opened_at, updated_at, resolved_at) "
            "SELECT 'a' || g, %s, 'host-' || lpad((g %% %s)::text, 3, '0'), 'cpu_load', 95,"
            " CASE WHEN g %% 3 = 0 THEN 'critical' ELSE 'warning' END, now() - g * interval '20 s',"
            " CASE WHEN g %% 10 = 0 THEN 'open' ELSE 'resolved' END, 'cpu_load', 'bench',"
            " now() - g * interval '20 s', now() - g * interval '20 s' + interval '5 min',"
            " CASE WHEN g %% 10 = 0 THEN NULL ELSE now() - g * interval '20 s' + interval '5 min' END "
            "FROM generate_series(1, 50000) g", (tenant, HOSTS))
        c.execute("VACUUM ANALYZE metrics")
        c.execute("VACUUM ANALYZE alerts")
        n = c.execute("SELECT count(*) FROM metrics").fetchone()[0]
        print(f"loaded {n:,} metric rows + 50,000 alerts in {time.monotonic() - t0:.0f}s", flush=True)
        return auth.create_key(c, tenant, "read", "bench")[1]


def serve(s: Settings) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ)
    for k, v in s.model_dump().items():
        env[f"EVENTOPS_{k.upper()}"] = v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)
    env["EVENTOPS_RATE_LIMIT_RPS"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log",
         "--timeout-keep-alive", "60", "--backlog", "4096"],
        cwd=REPO_ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("API did not become ready")


async def measure(url: str, key: str, make_path, clients: int, total: int, warm: int = 0) -> list[float]:
    """Latencies (ms) of ``total`` requests from ``clients`` concurrent tasks on one client.

    The first ``warm`` requests are not recorded: they open the connections (a fresh TCP
    connection per client would otherwise put connection set-up into the tail).
    """
    lat: list[float] = []
    total += warm
    errors: list[str] = []
    left = total
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                path = make_path()
                t = time.perf_counter()
                try:
                    r = await client.get(path)
                except httpx.TransportError:  # a dropped keep-alive connection: counted, retried
                    errors.append(path)
                    t = time.perf_counter()
                    r = await client.get(path)
                if total - left > warm:
                    lat.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(clients)))
    if errors:
        print(f"  ({len(errors)} connection errors retried)", flush=True)
    return lat


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000, help="per endpoint")
    a = ap.parse_args()
    rnd = random.Random(1)

    def host() -> str:
        return f"host-{rnd.randrange(HOSTS):03d}"

    endpoints = {
        "healthz": lambda: "/healthz",
        "metrics_range_6h_300pts": lambda: f"/metrics?host={host()}&metric=cpu_load&points=300"
                                            f"&start={time.time() - 6 * 3600:.0f}",
        "metrics_cpu_latest100": lambda: f"/metrics/cpu?host={host()}&limit=100",
        "alerts_page50": lambda: "/alerts?limit=50",
        "alerts_host_open": lambda: f"/alerts?host={host()}&state=open&limit=20",
    }
    with scratch(Settings(), partitions=1) as s:
        key = load(s, a.rows, "bench")
        proc, url = serve(s)
        try:
            out: dict[str, list[float]] = {}
            solo: dict[str, list[float]] = {}
            for name, mk in endpoints.items():  # one client: the cost of the request itself
                solo[name] = asyncio.run(measure(url, key, mk, 1, 200, warm=5))
                print(f"{name:<28} 1 client: p50 {pct(solo[name], 50):6.1f} ms  p99 {pct(solo[name], 99):6.1f} ms",
                      flush=True)
            for name, mk in endpoints.items():
                t = time.perf_counter()
                out[name] = asyncio.run(measure(url, key, mk, a.clients, a.requests, warm=4 * a.clients))
                rps = a.requests / (time.perf_counter() - t)
                print(f"{name:<28} p50 {pct(out[name], 50):7.1f} ms  p99 {pct(out[name], 99):7.1f} ms"
                      f"  {rps:7.0f} req/s", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    base = pct(out["healthz"], 50)
    rows = []
    for name, xs in out.items():
        for p in (50, 99):
            v = round(pct(xs, p), 2)
            rows.append({"name": f"api_{name}_p{p}_c{a.clients}", "value": v, "unit": "ms",
                         "baseline": round(base, 2), "ratio": round(v / base, 2)})
    for name, xs in solo.items():
        v = round(pct(xs, 50), 2)
        rows.append({"name": f"api_{name}_p50_c1", "value": v, "unit": "ms",
                     "baseline": round(pct(solo["healthz"], 50), 2),
                     "ratio": round(v / pct(solo["healthz"], 50), 2)})
    write_results("api", rows)


if __name__ == "__main__":
    main()
