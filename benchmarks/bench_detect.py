"""Detect-stage throughput and memory.  Run: ``python -m benchmarks.bench_detect [--quick]``.

Measures, in one run (so ratios are side by side):

* events/s from decoded numpy columns: window aggregation (60 s windows, 10k series, 4 per
  host, event time per host as in the detect stage) + the per-host cross-metric features
  (``features.cross``, as the detect stage adds them) + the shipped detector set
  (``models.presets.default_ensemble()``) on the closed windows;
* events/s including ``orjson`` decode of ~180-byte JSON events into columns;
* peak RSS vs active series (1k / 10k / 100k), each in a fresh subprocess (``ru_maxrss``);
* the baseline: a naive per-event pure-Python implementation (dicts) of the same aggregation and
  an EWMA z-score on closed windows.

Writes ``benchmarks/results/detect.json`` as ``[{"name", "value", "unit", "baseline", "ratio"}]``.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "detect.json"


def make_events(n_series: int, per_series: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_series * per_series
    s = np.tile(np.arange(n_series, dtype=np.int64), per_series)
    ts = 1.7e9 + np.repeat(np.arange(per_series), n_series) * 6.0 + rng.uniform(0, 6, n)
    v = rng.normal(50, 5, n)
    return s, ts, v


def detector_pipeline():
    from features.windows import WindowAggregator
    from models.presets import default_ensemble

    agg = WindowAggregator(window_s=60.0, allowed_lateness_s=5.0, idle_close_s=600.0)
    ens = default_ensemble()
    return agg, ens


def detector_input(cw, host_of: np.ndarray) -> dict:
    """Closed windows as the detect stage hands them to the detectors (+ cross-metric columns)."""
    from features.cross import cross_metric_features

    X = cw.columns()
    X.update(cross_metric_features(host_of[cw.series], X["start"], X))
    return X


def run_columns(s, ts, v, batch: int = 100_000) -> tuple[float, int]:
    agg, ens = detector_pipeline()
    host_of = np.arange(int(s.max()) + 1, dtype=np.int64) // 4  # 4 metrics per host
    n_win = 0
    t0 = time.perf_counter()
    for i in range(0, s.size, batch):
        sl = slice(i, i + batch)
        cw = agg.push(s[sl], ts[sl], v[sl], host=host_of[s[sl]])
        if len(cw):
            ens.process(detector_input(cw, host_of))
            n_win += len(cw)
    cw = agg.flush()
    ens.process(detector_input(cw, host_of))
    return time.perf_counter() - t0, n_win + len(cw)


def make_json(s, ts, v) -> list[bytes]:
    import orjson

    return [
        orjson.dumps(
            {
                "tenant_id": "acme",
                "source_id": f"host-{int(a) % 997:04d}",
                "metric": f"cpu_load_{int(a):06d}",
                "ts": float(b),
                "value": float(c),
                "tags": {"dc": "eu-west-1", "role": "web"},
                "event_id": f"ev-{i:012d}",
            }
        )  # fmt: skip
        for i, (a, b, c) in enumerate(zip(s, ts, v, strict=False))
    ]


def run_json(msgs: list[bytes], batch: int = 10_000) -> float:
    import orjson

    agg, ens = detector_pipeline()
    codes: dict[tuple[str, str, str], int] = {}
    hosts: dict[tuple[str, str], int] = {}
    host_of: list[int] = []  # per series code, extended per new series (as the detect stage)

    def host_codes() -> np.ndarray:
        for key in list(codes)[len(host_of) :]:
            host_of.append(hosts.setdefault(key[:2], len(hosts)))
        return np.asarray(host_of, np.int64)

    t0 = time.perf_counter()
    for i in range(0, len(msgs), batch):
        evs = [orjson.loads(m) for m in msgs[i : i + batch]]
        s = np.fromiter(
            (codes.setdefault((e["tenant_id"], e["source_id"], e["metric"]), len(codes))
             for e in evs),
            np.int64, len(evs),
        )  # fmt: skip
        ts = np.fromiter((e["ts"] for e in evs), np.float64, len(evs))
        v = np.fromiter((e["value"] for e in evs), np.float64, len(evs))
        hc = host_codes()
        cw = agg.push(s, ts, v, host=hc[s])
        if len(cw):
            ens.process(detector_input(cw, hc))
    ens.process(detector_input(agg.flush(), host_codes()))
    return time.perf_counter() - t0


def run_naive(s, ts, v) -> float:
    """Per-event pure Python: dict of open windows, EWMA z-score per series on close."""
    t0 = time.perf_counter()
    open_w: dict[tuple[int, int], list[float]] = {}
    ewma: dict[int, list[float]] = {}
    max_ts = -math.inf
    closed_upto = -(2**62)
    for a, b, c in zip(s.tolist(), ts.tolist(), v.tolist(), strict=False):
        w = int(b // 60.0)
        if w < closed_upto:
            continue
        acc = open_w.get((a, w))
        if acc is None:
            acc = open_w[(a, w)] = [0, 0.0, 0.0, math.inf, -math.inf, 0.0]
        acc[0] += 1
        acc[1] += c
        acc[2] += c * c
        acc[3] = min(acc[3], c)
        acc[4] = max(acc[4], c)
        acc[5] = c
        if b > max_ts:
            max_ts = b
            upto = int((max_ts - 5.0) // 60.0)
            if upto > closed_upto:
                closed_upto = upto
                for key in [k for k in open_w if k[1] < closed_upto]:
                    n, sm, sq, *_ = open_w.pop(key)
                    mean = sm / n
                    st = ewma.setdefault(key[0], [0.0, 0.0, 0])
                    z = abs(mean - st[0]) / (math.sqrt(st[1]) + 1e-9)
                    _ = 1 - math.exp(-z)
                    d = mean - st[0]
                    st[0] += 0.02 * d
                    st[1] = 0.98 * (st[1] + 0.02 * d * d)
    return time.perf_counter() - t0


def rss_child(n_series: int) -> None:
    s, ts, v = make_events(n_series, 30)
    run_columns(s, ts, v, batch=max(100_000, n_series * 2))
    # VmHWM (peak RSS of this process image); ru_maxrss can be inherited from the parent
    hwm = [
        ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")
    ]
    kib = float(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(kib / 1024)  # MiB


def state_bytes_per_series(n_series: int = 10_000) -> float:
    """Pickled detector state (the default ensemble after 30 windows a series) per series."""
    import pickle

    from models.presets import default_ensemble

    rng = np.random.default_rng(1)
    n = 30
    X = {
        "series": np.tile(np.arange(n_series, dtype=np.int64), n),
        "start": 1.7e9 + np.repeat(np.arange(n, dtype=np.float64), n_series) * 60.0,
        "mean": rng.normal(50, 5, n * n_series),
    }
    ens = default_ensemble()
    ens.process(X)
    return len(pickle.dumps(ens.to_state())) / n_series


def main(quick: bool = False) -> list[dict]:
    rows: list[dict] = []
    n_series, per = 10_000, (30 if quick else 100)
    s, ts, v = make_events(n_series, per)
    run_columns(*make_events(1000, 5))  # warm-up
    dt, n_win = min((run_columns(s, ts, v) for _ in range(2)), key=lambda r: r[0])
    ev_cols = s.size / dt
    k = min(s.size, 300_000)
    naive = k / run_naive(s[:k], ts[:k], v[:k])
    rows.append({"name": "naive_python_dicts_events_per_s", "value": round(naive),
                 "unit": "events/s", "baseline": None, "ratio": None})  # fmt: skip
    rows.append({"name": "detect_from_columns_events_per_s", "value": round(ev_cols),
                 "unit": "events/s", "baseline": round(naive),
                 "ratio": round(ev_cols / naive, 2)})  # fmt: skip
    m = min(s.size, 300_000)
    msgs = make_json(s[:m], ts[:m], v[:m])
    ev_json = m / run_json(msgs)
    rows.append({"name": "detect_incl_orjson_decode_events_per_s", "value": round(ev_json),
                 "unit": "events/s", "baseline": round(naive),
                 "ratio": round(ev_json / naive, 2)})  # fmt: skip
    rows.append({"name": "avg_json_event_bytes", "value": round(sum(map(len, msgs)) / m, 1),
                 "unit": "bytes", "baseline": None, "ratio": None})  # fmt: skip
    rows.append({"name": "detector_state_bytes_per_series",
                 "value": round(state_bytes_per_series(), 1),
                 "unit": "bytes", "baseline": None, "ratio": None})  # fmt: skip
    for ns in (1_000, 10_000, 100_000):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_detect", "--rss-child", str(ns)],
            capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        rows.append({"name": f"peak_rss_{ns}_series",
                     "value": round(float(out.stdout.split()[-1]), 1),
                     "unit": "MiB", "baseline": None, "ratio": None})  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print(f"{s.size} events, {n_series} series, {n_win} windows closed")
    for r in rows:
        extra = f"  ({r['ratio']}x naive)" if r["ratio"] else ""
        print(f"{r['name']:<42} {r['value']:>14,} {r['unit']}{extra}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rss-child":
        rss_child(int(sys.argv[2]))
    else:
        main(quick="--quick" in sys.argv)
