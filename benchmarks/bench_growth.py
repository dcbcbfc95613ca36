"""Growth benchmark: does the sink's ingest rate hold as the tables grow, and does retention
(dropping a day's partition) disturb ingest?

Two scratch databases side by side: one empty, one filled with ``--rows`` metric rows (50M by
default) spread over ``--days`` daily partitions before today, plus one ``features`` and one
``scores`` row per 6 metric rows (60 s windows over 10 s samples), written quickly with
``INSERT … SELECT generate_series``: ``--series`` series (hosts × 4 metrics, agent-style tags,
``topic:partition:offset`` event ids), so the indexes have realistic sizes. Then:

1. **ingest**: micro-batches of ``--batch`` events (one sample of every series) plus their
   closed windows go through :class:`storage.sink.Sink` ``write`` — the call a chained worker's
   writer thread makes — into today's partitions. Runs alternate between the empty and the
   filled database (the machine is shared and noisy; only ratios within one run compare); each
   run's rate is rows / time spent in ``write``. A third configuration writes into yesterday's
   partition of the filled database (a partition that already holds a day of rows: what growth
   *within* a partition costs). Medians of ``--runs`` short runs, and the median of the per-round
   ratios (each round runs the configurations back to back, so they share the machine's load).
2. **retention**: while a writer thread keeps ingesting into the filled database, the
   maintenance job drops the oldest day's ``metrics`` partition (``DETACH`` + ``DROP``, see
   :func:`storage.partitions.maintain`), ``--drops`` times (a day each). Reported: the drop's
   duration, the longest ``write`` overlapping it against the median ``write``, the ingest rate
   in the second around the drop against the steady rate before it, and ingest errors (must be 0).

Results: printed and saved to benchmarks/results/growth.json. The databases are dropped at the
end (``--keep`` keeps them). Disk: ~400 bytes per metric row with its indexes and windows
(50M rows: 19.4 GB); check ``df -h`` first.

    python -m benchmarks.bench_growth [--rows 50000000] [--days 7] [--runs 5] [--drops 3]
    python -m benchmarks.bench_growth --rows 2000000      # quick run
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
from psycopg import sql

from benchmarks.common import RESULTS, median, write_results
from core.batch import MetricBatch
from core.settings import Settings
from pipeline.stages.detect.window_rows import WindowRows
from storage.connect import connect
from storage.migrate import migrate
from storage.partitions import PartitionPolicy, maintain, partition_name
from storage.sink import Sink
from storage.tenants import create_tenant

DAY = 86400
METRICS = ("cpu_load", "mem_used", "disk_io", "net_rx")
TAGS = {"dc": "eu1", "env": "prod", "team": "payments"}
TENANT = "bench"


@contextmanager
def database(base: Settings, keep: bool):
    name = f"eventops_growth_{uuid.uuid4().hex[:8]}"
    admin = connect(base, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    s = base.model_copy(update={"pg_database": name})
    try:
        with connect(s) as conn:
            migrate(conn)
            create_tenant(conn, TENANT)
        yield s
    finally:
        if not keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")
        admin.close()


def obj(xs) -> np.ndarray:
    a = np.empty(len(xs), dtype=object)
    a[:] = xs
    return a


class Feed:
    """Micro-batches as a chained worker's sink receives them: one sample of every series per
    batch (10 s apart), the windows that close with it (1 series in 6 per batch), fresh ids."""

    def __init__(self, series: int, t0: float, offset0: int) -> None:
        self.series, self.t0, self.offset = series, t0, offset0
        self.tick = 0
        s = np.arange(series)
        self.host = obj([f"host-{i // 4:05d}" for i in s])
        self.metric = obj([METRICS[i % 4] for i in s])
        tags = {h: dict(TAGS) for h in set(self.host)}  # enrich hands one dict per source
        self.tags = obj([tags[h] for h in self.host])
        self.tenant = obj([TENANT] * series)
        self.rng = np.random.default_rng(7)

    def next(self) -> tuple[MetricBatch, WindowRows]:
        n, k = self.series, self.tick
        self.tick += 1
        ids = obj([f"ingest.raw.agent:{i % 6}:{self.offset + i}" for i in range(n)])
        self.offset += n
        ts = self.t0 + k * 10.0 + (np.arange(n) % 97) * 0.01
        value = np.round(self.rng.uniform(0, 100, n), 2)
        batch = MetricBatch(
            ids,
            self.tenant,
            self.host,
            self.metric,
            value,
            ts,
            obj(["percent"] * n),
            self.tags,
            np.arange(n, dtype=np.int64) % 6,
        )
        sel = np.flatnonzero(np.arange(n) % 6 == k % 6)
        m = len(sel)
        start = np.full(m, self.t0 + (k // 6) * 60.0)
        f = {
            key: self.rng.uniform(0, 100, m)
            for key in ("mean", "std", "min", "max", "last", "slope", "change", "gap")
        }
        f["count"] = np.full(m, 6, np.int64)
        f.update(
            host_metrics=np.full(m, 4.0),
            host_deviating=np.zeros(m),
            host_max_z=self.rng.uniform(0, 2, m),
            host_mean_z=self.rng.uniform(0, 1, m),
        )
        windows = WindowRows(
            self.tenant[sel],
            self.host[sel],
            self.metric[sel],
            start,
            start + 60.0,
            f,
            self.rng.uniform(0, 0.3, m),
            obj(["ok"] * m),
            [{"rules": 0.0, "seasonal": 0.12, "ewma": 0.08}] * m,
            self.rng.uniform(0, 100, m),
            [{}] * m,
            ["3"] * m,
        )
        return batch, windows


def fill(s: Settings, rows: int, days: int, series: int, today: float) -> dict:
    """``rows`` metric rows over the ``days`` days before ``today``, windows 1 per 6 rows.

    Each day is loaded into a plain table, indexed (a sorted build: the indexes come out more
    compact than ones grown by inserts), then ATTACHed as that day's partition; the parent's
    indexes match the built ones, so ATTACH only validates the bounds.
    """
    per_day = rows // days
    per_series = max(per_day // series, 1)
    step = DAY / per_series
    wins = max(per_series // 6, 1)
    wstep = DAY / wins
    t0 = time.monotonic()
    win_key = (
        "%(t)s, 'host-' || lpad((s / 4)::text, 5, '0'), (%(m)s::text[])[mod(s, 4) + 1],"
        " to_timestamp(%(day)s + floor(k * %(step)s)),"
        " to_timestamp(%(day)s + floor(k * %(step)s) + 60)"
    )
    gen = " FROM generate_series(0, %(per)s - 1) k CROSS JOIN generate_series(0, %(n)s - 1) s"
    with connect(s) as conn:
        for d in range(days, 0, -1):
            day = today - d * DAY
            base = (days - d) * per_series * series
            p = {
                t: sql.Identifier(partition_name(t, day)) for t in ("metrics", "features", "scores")
            }
            with conn.transaction():
                for t, ident in p.items():
                    conn.execute(
                        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                            ident, sql.Identifier(t)
                        )
                    )
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {}"
                        " (event_id, tenant_id, host, metric, value, ts_event, unit, tags)"
                        " SELECT 'ingest.raw.agent:' || mod(s, 6) || ':'"
                        " || (%(base)s + k * %(n)s + s),"
                        " %(t)s, 'host-' || lpad((s / 4)::text, 5, '0'),"
                        " (%(m)s::text[])[mod(s, 4) + 1],"
                        " round((random() * 100)::numeric, 2)::float8,"
                        " to_timestamp(%(day)s + k * %(step)s + mod(s, 97) * 0.01),"
                        " 'percent', %(tags)s::jsonb"
                    ).format(p["metrics"])
                    + sql.SQL(gen),
                    dict(
                        base=base,
                        n=series,
                        t=TENANT,
                        m=list(METRICS),
                        day=day,
                        step=step,
                        tags='{"dc": "eu1", "env": "prod", "team": "payments"}',
                        per=per_series,
                    ),
                )
                win = dict(per=wins, n=series, t=TENANT, m=list(METRICS), day=day, step=wstep)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (tenant_id, host, metric, window_start, window_end,"
                        " count, mean, std, min, max, last, slope, change, gap, host_metrics,"
                        " host_deviating, host_max_z, host_mean_z) SELECT "
                        + win_key
                        + ", 6, random() * 100, random() * 5, random() * 50,"
                        " 50 + random() * 50, random() * 100, random() - 0.5, random() - 0.5,"
                        " 0, 4, 0, random() * 2, random()" + gen
                    ).format(p["features"]),
                    win,
                )
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (tenant_id, host, metric, window_start, window_end,"
                        " score, severity, components, actual, expected,"
                        " explanation, model_version) SELECT "
                        + win_key
                        + ', random() * 0.3, \'ok\', \'{{"rules": 0.0, "seasonal": 0.12,'
                        ' "ewma": 0.08}}\','
                        " random() * 100, random() * 100, '{{}}', '3'" + gen
                    ).format(p["scores"]),
                    win,
                )
                m = p["metrics"]
                conn.execute(
                    sql.SQL(
                        "CREATE INDEX ON {} (tenant_id, host, metric, ts_event DESC)"
                        " INCLUDE (value)"
                    ).format(m)
                )
                conn.execute(
                    sql.SQL("CREATE UNIQUE INDEX {} ON {} (tenant_id, event_id)").format(
                        sql.Identifier(partition_name("metrics", day) + "_tenant_event"), m
                    )
                )
                for t in ("features", "scores"):
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {} ADD PRIMARY KEY (tenant_id, host, metric, window_start)"
                        ).format(p[t])
                    )
                a, b = (
                    sql.Literal(datetime.fromtimestamp(day, UTC)),
                    sql.Literal(datetime.fromtimestamp(day + DAY, UTC)),
                )
                for t, ident in p.items():
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})"
                        ).format(sql.Identifier(t), ident, a, b)
                    )
            done = (days - d + 1) * per_series * series
            print(f"  filled {done:,} metric rows ({time.monotonic() - t0:.0f} s)", flush=True)
    with connect(s, autocommit=True) as c:  # settle: what autovacuum would do in the background
        for table in ("metrics", "features", "scores"):
            c.execute(f"VACUUM (ANALYZE) {table}")
        c.execute("CHECKPOINT")
        size = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        stored = c.execute("SELECT count(*) FROM metrics").fetchone()[0]
    return {
        "metric_rows": int(stored),
        "per_series_per_day": per_series,
        "database_bytes": int(size),
        "fill_seconds": round(time.monotonic() - t0, 1),
    }


def ingest_run(sink: Sink, feed: Feed, batches: int) -> tuple[float, list[float]]:
    """Rows per second spent in ``Sink.write`` over ``batches`` batches, and each write's
    seconds."""
    took, rows = [], 0
    for _ in range(batches):
        batch, windows = feed.next()
        t = time.perf_counter()
        n, _ = sink.write(batch, (), windows)
        took.append(time.perf_counter() - t)
        rows += n
    return rows / sum(took), took


class Writer(threading.Thread):
    """Keeps ingesting into a database; records (start, end, rows) of every write."""

    def __init__(self, s: Settings, feed: Feed) -> None:
        super().__init__(daemon=True)
        self.s, self.feed = s, feed
        self.stop_ = threading.Event()
        self.log: list[tuple[float, float, int]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            with connect(self.s) as conn:
                sink = Sink(conn)
                while not self.stop_.is_set():
                    batch, windows = self.feed.next()
                    t = time.monotonic()
                    n, _ = sink.write(batch, (), windows)
                    self.log.append((t, time.monotonic(), n))
        except BaseException as e:  # noqa: BLE001 - reported in the results
            self.errors.append(e)


def rate_between(log: list[tuple[float, float, int]], a: float, b: float) -> float:
    """Rows/s committed in [a, b] (a write counts in proportion to its overlap)."""
    rows = 0.0
    for s, e, n in log:
        overlap = min(e, b) - max(s, a)
        if overlap > 0 and e > s:
            rows += n * overlap / (e - s)
    return rows / (b - a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rows", type=int, default=50_000_000, help="metric rows in the filled database"
    )
    ap.add_argument("--days", type=int, default=7, help="daily partitions they are spread over")
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=5, help="batches of --series events per run")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--drops", type=int, default=3, help="day partitions dropped under ingest")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    a = ap.parse_args()
    if a.drops >= a.days:
        ap.error("--drops must be smaller than --days")
    base = Settings()
    du = shutil.disk_usage(RESULTS.parent)
    print(
        f"disk: {du.free / 1e9:.0f} GB free; the filled database needs ~{a.rows * 400 / 1e9:.1f} GB"
    )
    if du.free < a.rows * 400 * 1.3:
        raise SystemExit(f"not enough disk for --rows {a.rows:,}: {du.free / 1e9:.0f} GB free")
    today = time.time() // DAY * DAY
    with database(base, a.keep) as empty, database(base, a.keep) as full:
        print(
            f"filling {a.rows:,} metric rows over {a.days} days ({a.series:,} series) ...",
            flush=True,
        )
        info = fill(full, a.rows, a.days, a.series, today)
        print(
            f"  {info['metric_rows']:,} rows, database {info['database_bytes'] / 1e9:.1f} GB, "
            f"{info['fill_seconds']:.0f} s"
        )
        offsets = iter(range(10**12, 10**15, 10**10))  # id ranges that never meet the fill's
        conns = {k: connect(s) for k, s in (("empty", empty), ("full", full), ("full_old", full))}
        sinks = {k: Sink(c) for k, c in conns.items()}
        feeds = {
            "empty": Feed(a.series, today + 600, next(offsets)),
            "full": Feed(a.series, today + 600, next(offsets)),
            "full_old": Feed(a.series, today - DAY + 43200, next(offsets)),
        }
        for k in sinks:  # warm-up: partitions known, staging tables and caches ready
            ingest_run(sinks[k], feeds[k], 3)
        rates: dict[str, list[float]] = {k: [] for k in sinks}
        lat: dict[str, list[float]] = {k: [] for k in sinks}
        order = list(sinks)
        for r in range(a.runs):
            for k in order if r % 2 == 0 else order[::-1]:
                rate, took = ingest_run(sinks[k], feeds[k], a.batches)
                rates[k].append(rate)
                lat[k] += took
            print(
                f"  run {r + 1}: "
                + ", ".join(f"{k} {rates[k][-1]:,.0f}" for k in order)
                + " rows/s",
                flush=True,
            )
        for c in conns.values():
            c.close()

        drops = []
        with connect(full) as conn:
            for i in range(a.drops):
                w = Writer(full, Feed(a.series, today + 1200 + i * 3000, next(offsets)))
                w.start()
                time.sleep(3.0)
                t0 = time.monotonic()
                rep = maintain(
                    conn, PartitionPolicy(ahead_days=0, retention_days={"metrics": a.days - 1 - i})
                )
                t1 = time.monotonic()
                time.sleep(3.0)
                w.stop_.set()
                w.join(60)
                steady = rate_between(w.log, t0 - 2.5, t0 - 0.5)
                around = rate_between(w.log, t0 - 0.5, t1 + 0.5)
                during = [e - s for s, e, _ in w.log if s < t1 and e > t0]
                normal = [e - s for s, e, _ in w.log if e < t0]
                drops.append(
                    dict(
                        dropped=rep.dropped,
                        drop_s=sum(rep.drop_seconds),
                        maintain_s=t1 - t0,
                        attempts=sum(rep.drop_attempts),
                        detach_s=sum(rep.drop_wait_seconds),
                        steady=steady,
                        around=around,
                        max_during=max(during or [0.0]),
                        median_write=median(normal),
                        errors=len(w.errors),
                        error=repr(w.errors[0]) if w.errors else "",
                    )
                )
                d = drops[-1]
                print(
                    f"  drop {i + 1}: {', '.join(rep.dropped) or 'nothing'}"
                    f" in {d['drop_s'] * 1e3:.0f} ms"
                    f" ({d['attempts']} tries, {d['detach_s'] * 1e3:.0f} ms in DETACH);"
                    f" ingest {d['around']:,.0f} rows/s around it vs {steady:,.0f} before;"
                    " longest write"
                    f" {d['max_during'] * 1e3:.0f} ms vs median {d['median_write'] * 1e3:.0f} ms;"
                    f" errors {d['errors']}",
                    flush=True,
                )

    e, f, o = (median(rates[k]) for k in ("empty", "full", "full_old"))
    # paired: the two databases' runs of one round ran back to back, under the same load
    paired = median([b / a for a, b in zip(rates["empty"], rates["full"], strict=True)])
    paired_old = median([b / a for a, b in zip(rates["empty"], rates["full_old"], strict=True)])
    n = f"{info['metric_rows'] / 1e6:.0f}M"
    results = [
        {
            "name": "sink ingest, empty database (median)",
            "value": round(e),
            "unit": "rows/s",
            "runs": [round(x) for x in rates["empty"]],
            "write_ms_p50": round(median(lat["empty"]) * 1e3, 1),
        },
        {
            "name": f"sink ingest, after {n} metric rows (median)",
            "value": round(f),
            "unit": "rows/s",
            "baseline": round(e),
            "ratio": round(f / e, 3),
            "paired_ratio": round(paired, 3),
            "runs": [round(x) for x in rates["full"]],
            "write_ms_p50": round(median(lat["full"]) * 1e3, 1),
            **info,
        },
        {
            "name": f"sink ingest into a filled day partition, {n} rows (median)",
            "value": round(o),
            "unit": "rows/s",
            "baseline": round(e),
            "ratio": round(o / e, 3),
            "paired_ratio": round(paired_old, 3),
            "runs": [round(x) for x in rates["full_old"]],
            "write_ms_p50": round(median(lat["full_old"]) * 1e3, 1),
        },
        {
            "name": "retention: drop of a day's metrics partition under ingest (median)",
            "value": round(median([d["drop_s"] for d in drops]) * 1e3, 1),
            "unit": "ms",
            "drops": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
                for d in drops
            ],
        },
        {
            "name": "retention: ingest around the drop (median)",
            "value": round(median([d["around"] for d in drops])),
            "unit": "rows/s",
            "baseline": round(median([d["steady"] for d in drops])),
            "ratio": round(median([d["around"] / d["steady"] for d in drops if d["steady"]]), 3),
            "errors": sum(d["errors"] for d in drops),
        },
        {
            "name": "retention: longest write overlapping the drop (median)",
            "value": round(median([d["max_during"] for d in drops]) * 1e3, 1),
            "unit": "ms",
            "baseline": round(median([d["median_write"] for d in drops]) * 1e3, 1),
            "ratio": round(median([d["max_during"] / d["median_write"] for d in drops]), 2),
        },
    ]
    cfg = {
        "batch_events": a.series,
        "batches_per_run": a.batches,
        "rounds": a.runs,
        "days": a.days,
        "series": a.series,
    }
    results[0].update(cfg)
    write_results("growth", results)
    print(
        f"paired ratio (median of per-round full/empty): {paired:.3f}; into a filled partition: "
        f"{paired_old:.3f}"
    )


if __name__ == "__main__":
    main()
