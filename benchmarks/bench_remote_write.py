"""Prometheus remote-write into PostgreSQL beside the Kafka path, in one run.

Both configurations store the same N simulator events (500 hosts, 4 gauges each) with one
chained worker (``normalize,enrich,detect,sink``):

- **kafka**: the events pre-loaded as JSON into the raw topic, then the worker started
  (``benchmarks.bench_e2e.run_pipeline``);
- **remote-write**: the same samples as remote-write 1.0 requests (snappy protobuf, 2,000
  samples each, built before the clock starts) posted by two sender threads to ``eventops
  api`` (Kafka mode: the API decodes, normalizes and produces), while the worker runs.

The rate is rows stored after the first batch's transaction over the time to the last
(``ingested_at``), as in ``bench_e2e``. The two share the machine's two cores with the API in
the remote-write run, which is the price being measured. Configurations alternate run by run;
medians of ``--runs``. Result: benchmarks/results/remote_write.json.

    python -m benchmarks.bench_remote_write [--events 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import defaultdict
from datetime import datetime

import cramjam
import httpx
import orjson

from benchmarks.bench_e2e import env_for, make_events, run_pipeline, stored_rate
from benchmarks.common import median, scratch, write_results
from core.settings import REPO_ROOT, Settings
from pipeline import kafka as kq
from pipeline.adapters import remote_write as rw
from serving import auth
from storage.connect import connect
from storage.tenants import create_tenant

SAMPLES_PER_REQUEST = 2000


def write_bodies(events: list[bytes], shards: int = 2) -> list[list[bytes]]:
    """The events as remote-write requests of up to SAMPLES_PER_REQUEST samples, in ``shards``
    lists: as Prometheus does, a series always goes to the same shard (by host here), and each
    shard sends its requests in time order, so no sample arrives behind its closed window."""
    series: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for raw in events:
        d = orjson.loads(raw)
        t = datetime.fromisoformat(d["ts_event"]).timestamp()
        series[(d["host"], d["metric"])].append((float(d["value"]), round(t * 1000)))
    out: list[list[bytes]] = []
    for shard in range(shards):
        flat = [
            (k, v, t)
            for k, samples in series.items()
            if zlib.crc32(k[0].encode()) % shards == shard
            for v, t in samples
        ]
        flat.sort(key=lambda x: x[2])
        bodies = []
        for i in range(0, len(flat), SAMPLES_PER_REQUEST):
            req = rw.WriteRequest()
            by: dict[tuple[str, str], list] = defaultdict(list)
            for k, v, t in flat[i : i + SAMPLES_PER_REQUEST]:
                by[k].append((v, t))
            for (host, metric), samples in by.items():
                ts = req.timeseries.add()
                for name, value in (("__name__", metric), ("instance", host)):
                    lb = ts.labels.add()
                    lb.name, lb.value = name, value
                for v, t in samples:
                    sample = ts.samples.add()
                    sample.value, sample.timestamp = v, t
            bodies.append(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
        out.append(bodies)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_remote_write(base: Settings, n: int) -> float:
    with scratch(base) as s:
        with connect(s) as conn:
            create_tenant(conn, "bench")
            key = auth.create_key(conn, "bench", "ingest", label="bench")[1]
            conn.commit()
        evs, _ = make_events(n, "bench")
        bodies = write_bodies(evs)
        port = _free_port()
        env = env_for(s)
        cli = [sys.executable, "-m", "cli", "--log-level", "WARNING"]
        procs = [
            subprocess.Popen(
                [*cli, "worker", "normalize,enrich,detect,sink"], env=env, cwd=REPO_ROOT
            ),
            subprocess.Popen(
                [
                    *cli,
                    "api",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                env=env,
                cwd=REPO_ROOT,
            ),
        ]
        url = f"http://127.0.0.1:{port}"
        conn = connect(s, autocommit=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("the API did not start")
                time.sleep(0.2)
            headers = {
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            }
            errors: list[str] = []

            def send(part: list[bytes]) -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    for body in part:
                        while True:
                            r = c.post("/api/v1/write", content=body, headers=headers)
                            if r.status_code == 503:  # backpressure: as Prometheus does
                                time.sleep(float(r.headers.get("Retry-After", "1")))
                                continue
                            if r.status_code != 200 or r.json()["dead_lettered"]:
                                errors.append(f"{r.status_code} {r.text[:200]}")
                            break

            senders = [threading.Thread(target=send, args=(b,), daemon=True) for b in bodies]
            for t in senders:
                t.start()
            last, moved = -1, time.monotonic()
            while (got := conn.execute("SELECT count(*) FROM metrics").fetchone()[0]) < n:
                if errors:
                    raise RuntimeError(f"remote-write failed: {errors[0]}")
                if got != last:
                    last, moved = got, time.monotonic()
                if time.monotonic() - moved > 60 or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"remote-write run stalled at {got} of {n} rows")
                time.sleep(0.5)
            for t in senders:
                t.join(60)
            rate = stored_rate(conn, n)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
            conn.close()
        return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    s = Settings()
    kq.wait_for_broker(s)
    rates: dict[str, list[float]] = {"kafka": [], "remote_write": []}
    for i in range(a.runs):
        rates["kafka"].append(run_pipeline(s, a.events, 1))
        rates["remote_write"].append(run_remote_write(s, a.events))
        print(
            f"run {i + 1}: kafka {rates['kafka'][-1]:,.0f} events/s, "
            f"remote-write {rates['remote_write'][-1]:,.0f} samples/s"
        )
    kafka = median(rates["kafka"])
    rw_rate = median(rates["remote_write"])
    rows = [
        {
            "name": "raw topic -> postgres, chained worker x1 (median)",
            "value": round(kafka, 1),
            "unit": "events/s",
            "runs": [round(r, 1) for r in rates["kafka"]],
            "events": a.events,
        },
        {
            "name": "remote-write -> api -> kafka -> worker x1 -> postgres (median)",
            "value": round(rw_rate, 1),
            "unit": "samples/s",
            "baseline": round(kafka, 1),
            "ratio": round(rw_rate / kafka, 2),
            "runs": [round(r, 1) for r in rates["remote_write"]],
            "events": a.events,
        },
    ]
    write_results("remote_write", rows)


if __name__ == "__main__":
    main()
