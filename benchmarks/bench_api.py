"""API latency under load: p50/p99 and throughput of the metrics and alerts endpoints.

Loads ``--rows`` (default 5M) metric rows — 500 hosts x 4 metrics, one sample per 10 s — plus
50k alerts into a scratch database server-side (``INSERT … SELECT generate_series``; the
table's own secondary indexes, whatever the migrations define, are dropped first and rebuilt
afterwards). Serves the API with ``eventops api`` in a subprocess (``--workers`` processes,
Kafka mode, rate limit off; uvloop/httptools when installed) and drives it from a *separate*
load generator process so that the client does not run on the server's interpreter:

* ``wrk`` when it is on ``PATH`` (C, epoll; Debian package ``wrk``), a Lua script adding the
  key and a random host per request;
* otherwise a closed loop of ``httpx.AsyncClient`` tasks in a child process (HTTP/1.1
  keep-alive pool). It costs far more CPU per request than wrk, so on a small machine it
  inflates the tail; the tool used is printed and stored in the results.

Both are closed loops: ``--clients`` connections, each sending its next request as soon as the
previous answer arrived, for ``--duration`` seconds per endpoint after a warm-up that opens the
connections and the server's pool; ``--repeat`` rounds over all endpoints, and every statistic
reported is the median over the rounds (the host is shared: one noisy burst moves one round).
Baseline: ``/healthz`` (HTTP + event loop, no database) measured the same way in the same run;
``ratio`` = value / the same statistic of ``/healthz``.

``--workers`` defaults to 2, one per core: ``eventops api --workers 2`` runs two processes that
each bind the port with ``SO_REUSEPORT`` (serving/serve.py), so the kernel spreads the 50
connections over them. (With ``uvicorn --workers``, processes sharing one listening socket, the
connections split unevenly at accept time, e.g. 39/11, and the busier process set the p99.)
Result: benchmarks/results/api.json (``[{"name","value","unit","baseline","ratio"}, …]``).

    python -m benchmarks.bench_api [--rows 5000000] [--clients 50] [--duration 5]
                                   [--repeat 3] [--workers 2]
                                   [--db NAME]   # keep/reuse a loaded database across runs
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib.util
import json
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from benchmarks.common import scratch, write_results
from core.settings import REPO_ROOT, Settings
from pipeline import kafka as kq
from serving import auth
from storage.connect import connect
from storage.migrate import migrate
from storage.tenants import create_tenant

HOSTS, METRICS, STEP_S = 500, ("cpu_load", "mem_used_pct", "latency_p99", "req_rate"), 10
TENANT = "bench"
TARGET_P99_MS = 100.0
# {host}: a random host per request; {start6h}: now - 6 h, RFC 3339 in UTC (the API refuses
# a bare Unix timestamp)
ENDPOINTS = {
    "healthz": "/healthz",
    "metrics_range_6h_300pts": "/metrics?host={host}&metric=cpu_load&points=300&start={start6h}",
    "metrics_cpu_latest100": "/metrics/cpu?host={host}&limit=100",
    "alerts_page50": "/alerts?limit=50",
    "alerts_host_open": "/alerts?host={host}&state=open&limit=20",
}

WRK_LUA = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local template = os.getenv("BENCH_PATH")
local hosts = %(hosts)d
local thread_no = 0
setup = function(thread) thread_no = thread_no + 1; thread:set("seed", thread_no) end
init = function() math.randomseed(seed) end
request = function()
  local p = template:gsub("{host}", string.format("host-%%03d", math.random(0, hosts - 1)))
  p = p:gsub("{start6h}", os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ", os.time() - 6 * 3600))
  return wrk.format("GET", p)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, '
    .. '"status_errors": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


# --- data ----------------------------------------------------------------------------------------


def _secondary_indexes(c) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(constraints, indexes)`` of ``metrics`` besides its primary key, as
    ``(name, definition)``."""
    cons = c.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'metrics'::regclass AND contype IN ('u', 'x')"
    ).fetchall()
    idx = c.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = 'metrics'::regclass AND NOT EXISTS "
        " (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)"
    ).fetchall()
    return cons, idx


def load(s: Settings, rows: int, tenant: str) -> None:
    per_series = rows // (HOSTS * len(METRICS))
    t0 = time.monotonic()
    with connect(s, autocommit=True) as c:
        create_tenant(c, tenant)
        cons, idx = _secondary_indexes(c)  # rebuilt after the load, as the migrations define them
        for name, _ in cons:
            c.execute(f'ALTER TABLE metrics DROP CONSTRAINT "{name}"')
        for name, _ in idx:
            c.execute(f'DROP INDEX "{name}"')
        c.execute("SET max_parallel_maintenance_workers = 2")
        c.execute(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event, unit) "
            "SELECT 'b:' || h || ':' || m || ':' || g, %s, 'host-' || lpad(h::text, 3, '0'), "
            " (ARRAY['cpu_load','mem_used_pct','latency_p99','req_rate'])[m], "
            " 40 + 20 * sin(g / 500.0 + h) + random() * 5, now() - g * interval '10 s', '' "
            "FROM generate_series(0, %s - 1) h, generate_series(1, 4) m,"
            " generate_series(0, %s - 1) g",
            (tenant, HOSTS, per_series),
        )
        print(
            f"inserted {HOSTS * 4 * per_series:,} rows in {time.monotonic() - t0:.0f}s", flush=True
        )
        for name, definition in cons:
            c.execute(f'ALTER TABLE metrics ADD CONSTRAINT "{name}" {definition}')
        for _, definition in idx:
            # the index of a partitioned table reads "ON ONLY metrics", which would create it
            # without its partitions' indexes (invalid, and every read a sequential scan)
            c.execute(definition.replace(" ON ONLY ", " ON ", 1))
        # 50k alerts spread over the hosts and the last two weeks
        c.execute(
            "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity,"
            " ts_event, state, rule, message, opened_at, updated_at, resolved_at) "
            "SELECT 'a' || g, %s, 'host-' || lpad((g %% %s)::text, 3, '0'), 'cpu_load', 95,"
            " CASE WHEN g %% 3 = 0 THEN 'critical' ELSE 'warning' END, now() - g * interval '20 s',"
            " CASE WHEN g %% 10 = 0 THEN 'open' ELSE 'resolved' END, 'cpu_load', 'bench',"
            " now() - g * interval '20 s', now() - g * interval '20 s' + interval '5 min',"
            " CASE WHEN g %% 10 = 0 THEN NULL"
            " ELSE now() - g * interval '20 s' + interval '5 min' END "
            "FROM generate_series(1, 50000) g",
            (tenant, HOSTS),
        )
        c.execute("VACUUM ANALYZE metrics")
        c.execute("VACUUM ANALYZE alerts")
        n = c.execute("SELECT count(*) FROM metrics").fetchone()[0]
        print(
            f"loaded {n:,} metric rows + 50,000 alerts in {time.monotonic() - t0:.0f}s", flush=True
        )


@contextlib.contextmanager
def database(base: Settings, keep: str | None, rows: int):
    """Settings of a loaded database: a scratch one (dropped after), or ``keep`` (reused if
    loaded)."""
    if keep is None:
        with scratch(base, partitions=1) as s:
            load(s, rows, TENANT)
            yield s
        return
    s = base.model_copy(
        update={
            "pg_database": keep,
            "consumer_group_prefix": f"bench-{keep}",
            **{
                f"topic_{k}": f"bench-{keep}-{k}"
                for k in ("raw", "metric", "enriched", "score", "alert", "dlq")
            },
            "topic_partitions": 1,
        }
    )
    with connect(base, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (keep,)).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{keep}"')
    with connect(s) as c:
        migrate(c)
        have = c.execute("SELECT count(*) FROM metrics WHERE tenant_id = %s", (TENANT,)).fetchone()[
            0
        ]
    kq.create_topics(s)
    want = rows // (HOSTS * len(METRICS)) * HOSTS * len(METRICS)
    if have != want:
        if have:
            raise SystemExit(
                f"database {keep!r} holds {have:,} bench rows, not {want:,}; drop it or use another"
            )
        load(s, rows, TENANT)
    else:
        print(f"reusing database {keep!r} ({have:,} metric rows)", flush=True)
    yield s


# --- server --------------------------------------------------------------------------------------


def serve(s: Settings, workers: int) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ)
    for k, v in s.model_dump().items():
        env[f"EVENTOPS_{k.upper()}"] = (
            v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)
        )
    env["EVENTOPS_RATE_LIMIT_RPS"] = "0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-keep-alive",
            "60",
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    ready = 0
    while time.monotonic() < deadline and ready < 4 * workers:  # every worker answers ready
        try:
            ready += httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            pass
        time.sleep(0.1 if ready else 0.3)
    if ready < 4 * workers:
        proc.kill()
        raise SystemExit("API did not become ready")
    return proc, url


# --- load generators -----------------------------------------------------------------------------


def path_for(template: str, rnd: random.Random) -> str:
    start6h = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 6 * 3600))
    return template.format(host=f"host-{rnd.randrange(HOSTS):03d}", start6h=start6h)


def run_wrk(lua: Path, url: str, key: str, template: str, clients: int, seconds: float) -> dict:
    env = {**os.environ, "BENCH_KEY": key, "BENCH_PATH": template}
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(lua),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    r = json.loads(line[6:])
    return {
        "requests": r["requests"],
        "seconds": r["duration_us"] / 1e6,
        "p50": r["p50_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "max": r["max_us"] / 1000,
        "errors": r["status_errors"] + r["socket_errors"],
    }


async def _httpx_loop(url: str, key: str, template: str, clients: int, seconds: float) -> dict:
    rnd = random.Random(1)
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        # one client (one keep-alive connection) per task: a single AsyncClient shared by 50
        # tasks spends its time in its connection pool's bookkeeping (~175 req/s on /healthz)
        nonlocal errors
        async with httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=1),
            timeout=30,
        ) as client:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    r = await client.get(path_for(template, rnd))
                    errors += r.status_code != 200
                except httpx.TransportError:
                    errors += 1
                lat.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    took = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {
        "requests": len(lat),
        "seconds": took,
        "p50": q[49],
        "p99": q[98],
        "max": max(lat),
        "errors": errors,
    }


def run_httpx(url: str, key: str, template: str, clients: int, seconds: float) -> dict:
    return asyncio.run(_httpx_loop(url, key, template, clients, seconds))


class LoadGen:
    """A closed loop of ``clients`` connections against one path template, in another process."""

    def __init__(self, url: str, key: str, tmp: Path) -> None:
        self.url, self.key = url, key
        self.tool = "wrk" if shutil.which("wrk") else "httpx"
        if self.tool == "wrk":
            self.lua = tmp / "bench_api.lua"
            self.lua.write_text(WRK_LUA % {"hosts": HOSTS})
        else:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")
            )

    def run(self, template: str, clients: int, seconds: float) -> dict:
        if self.tool == "wrk":
            r = run_wrk(self.lua, self.url, self.key, template, clients, seconds)
        else:
            r = self.pool.submit(run_httpx, self.url, self.key, template, clients, seconds).result()
        if r["errors"]:
            raise SystemExit(
                f"{template}: {r['errors']} failed requests (non-200 or socket errors)"
            )
        r["rps"] = r["requests"] / r["seconds"]
        return r

    def close(self) -> None:
        if self.tool != "wrk":
            self.pool.shutdown()


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds over all endpoints; each statistic is the median over the rounds",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="API processes sharing the port (see module docstring)",
    )
    ap.add_argument(
        "--db", default=None, help="keep the loaded database under this name and reuse it"
    )
    a = ap.parse_args()
    loop = (
        ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
        + "/"
        + ("httptools" if importlib.util.find_spec("httptools") else "h11")
    )
    with database(Settings(), a.db, a.rows) as s, tempfile.TemporaryDirectory() as tmp:
        with connect(s) as c:
            key = auth.create_key(c, TENANT, "read", f"bench-{uuid.uuid4().hex[:6]}")[1]
        proc, url = serve(s, a.workers)
        gen = LoadGen(url, key, Path(tmp))
        print(
            f"server: eventops api --workers {a.workers} ({loop}); "
            f"load generator: {gen.tool}, closed loop; "
            f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
                for name, tpl in ENDPOINTS.items():  # answers 200 before it is timed
                    r = c.get(path_for(tpl, random.Random(0)))
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: {r.status_code} {r.text[:200]}")
            solo: dict[str, dict] = {}
            out: dict[str, dict] = {}
            for name, tpl in ENDPOINTS.items():  # one client: the cost of the request itself
                gen.run(tpl, 1, 1)
                solo[name] = r = gen.run(tpl, 1, 3)
                print(
                    f"{name:<28} c1   p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
                    f"{r['rps']:6.0f} req/s",
                    flush=True,
                )
            # rounds over all endpoints: a burst of noise from the (shared) host lands in one
            # measurement of one round, and the median over rounds sets it aside
            rounds: dict[str, list[dict]] = {name: [] for name in ENDPOINTS}
            for i in range(a.repeat):
                for name, tpl in ENDPOINTS.items():
                    gen.run(tpl, a.clients, 2)  # warm-up: connections, pool, prepared statements
                    rounds[name].append(r := gen.run(tpl, a.clients, a.duration))
                    print(
                        f"{name:<28} c{a.clients:<3} p50 {r['p50']:7.1f} ms  "
                        f"p99 {r['p99']:7.1f} ms  "
                        f"{r['rps']:6.0f} req/s  ({r['requests']:,} requests)  round {i + 1}",
                        flush=True,
                    )
            out = {
                name: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "rps")}
                for name, rs in rounds.items()
            }
            for name, r in out.items():
                print(
                    f"{name:<28} c{a.clients:<3} median of {a.repeat}: p50 {r['p50']:7.1f} ms  "
                    f"p99 {r['p99']:7.1f} ms  {r['rps']:6.0f} req/s",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(10)
            gen.close()
    base = out["healthz"]
    rows = []
    for name, r in out.items():
        for stat in ("p50", "p99"):
            rows.append(
                {
                    "name": f"api_{name}_{stat}_c{a.clients}",
                    "value": round(r[stat], 2),
                    "unit": "ms",
                    "baseline": round(base[stat], 2),
                    "ratio": round(r[stat] / base[stat], 2),
                }
            )
        rows.append(
            {
                "name": f"api_{name}_rps_c{a.clients}",
                "value": round(r["rps"], 1),
                "unit": "req/s",
                "baseline": round(base["rps"], 1),
                "ratio": round(r["rps"] / base["rps"], 3),
            }
        )
    for name, r in solo.items():
        rows.append(
            {
                "name": f"api_{name}_p50_c1",
                "value": round(r["p50"], 2),
                "unit": "ms",
                "baseline": round(solo["healthz"]["p50"], 2),
                "ratio": round(r["p50"] / solo["healthz"]["p50"], 2),
            }
        )
    write_results("api", rows)
    worst = max((r["p99"], n) for n, r in out.items() if n != "healthz")
    print(
        f"load generator: {gen.tool}; target p99 < {TARGET_P99_MS:.0f} ms at {a.clients} clients: "
        f"{'met' if worst[0] < TARGET_P99_MS else 'NOT met'}"
        f" (worst {worst[1]} p99 {worst[0]:.1f} ms)"
    )


if __name__ == "__main__":
    main()
