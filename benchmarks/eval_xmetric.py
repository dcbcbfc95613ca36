"""Do the per-host cross-metric features help the batch model?
Run: ``python -m benchmarks.eval_xmetric [--quick] [--seeds N] [--seed-base K]``.

Per seed, three simulator runs go through the live detect stage (60 s windows, the columns the
sink stores): a *history* to train on (with the simulator's anomalies, which are labelled and left
out of the fit, as ``training.train.fit`` does with labels), and two held-out runs from other
seeds.  Three labelled sets are built from the held-out runs:

* ``simulator`` -- the simulator's own anomalies (``cpu_spike``, ``latency_spike``,
  ``traffic_drop``, ``memory_leak``: each moves *one* metric of a host), labelled on that series
  from 2 windows before to 8 after (the padding of ``inject_anomalies``);
* ``injected`` -- a clean run plus :func:`training.datasets.inject_anomalies` (2 per series,
  spikes / level shifts / dropouts, each on one series): the promotion path's labelled set;
* ``host_incidents`` -- a clean run plus :func:`training.datasets.inject_host_incidents`
  (2 per host: all four metrics of the host shift by 3 robust scales for 3 windows).

For each detector family a model is fitted on the history's raw window features with and without
:data:`features.cross.CROSS_FEATURES` (same seed) and evaluated on the same labelled sets with
:func:`training.promotion.evaluate_model` (the numbers promotion compares).  Prints mean and
standard deviation over seeds, and the paired difference; writes
``benchmarks/results/xmetric.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS

WINDOW_S = 60.0
METRIC_OF = {
    "cpu_spike": "cpu_load",
    "latency_spike": "latency_p99",
    "traffic_drop": "req_rate",
    "memory_leak": "mem_used_pct",
}
KEYS = ("nab_standard", "nab_low_fp", "f1", "precision", "recall", "alerts_per_series_day")


def simulate(seed: int, hosts: int, ticks: int, anomaly_rate: float):
    """Windows of a simulator run through the detect stage, as a labelled WindowDataset."""
    from models.rules import RuleSet
    from pipeline.simulate import Simulator
    from pipeline.stages.detect.stage import DetectStage
    from pipeline.stages.detect.window_rows import WindowRows
    from pipeline.stages.normalize import NormalizeConfig, Normalizer
    from training.datasets import from_frame

    day = 86400.0
    sim = Simulator(
        hosts=hosts,
        tenant="sim",
        seed=seed,
        interval=10.0,
        start=(time.time() // day - 3) * day,
        anomaly_rate=anomaly_rate,
    )
    norm, det = Normalizer(NormalizeConfig()), DetectStage(RuleSet([]), window_s=WINDOW_S)
    parts, buf, off = [], [], 0

    def push(raws):
        b, dead = norm(raws, "raw", [0] * len(raws), range(off, off + len(raws)))
        if dead:
            raise RuntimeError(f"{len(dead)} simulated events rejected")
        parts.append(det(b).windows)

    for evs in sim.events(ticks=ticks):
        buf.extend(evs)
        if len(buf) >= 20_000:
            push(buf)
            off += len(buf)
            buf = []
    if buf:
        push(buf)
    parts.append(det.flush().windows)
    rows = WindowRows.concat([p for p in parts if p is not None])
    df = pd.DataFrame(
        {
            "tenant_id": rows.tenant_id.astype(str),
            "host": rows.host.astype(str),
            "metric": rows.metric.astype(str),
            "start": rows.start,
            "end": rows.end,
            **rows.features,
        }
    )
    labels: dict[str, list[tuple[float, float]]] = {}
    for a in sim.anomalies:
        name = f"sim/{a.host}/{METRIC_OF[a.kind]}"
        labels.setdefault(name, []).append((a.start - 2 * WINDOW_S, a.end + 8 * WINDOW_S))
    return from_frame(df, labels=labels)


def main(quick: bool = False, seeds: int | None = None, seed_base: int = 0) -> dict:
    from features.cross import CROSS_FEATURES
    from features.windows import FEATURES
    from training.datasets import inject_anomalies, inject_host_incidents
    from training.promotion import evaluate_model
    from training.train import TrainConfig, fit

    hosts, ticks = (10, 4320) if quick else (20, 8640)  # half a day / a day of 10 s samples
    n_seeds = seeds or (2 if quick else 3)
    sets_ = ("simulator", "injected", "host_incidents")
    fams = ("isolation_forest", "robust_z")
    variants = {"base": FEATURES, "base+cross": FEATURES + CROSS_FEATURES}
    res: dict = {f: {s: {v: {k: [] for k in KEYS} for v in variants} for s in sets_} for f in fams}
    t0 = time.perf_counter()
    sizes = {}
    for k in range(n_seeds):
        sk = seed_base + k
        history = simulate(100 + sk, hosts, ticks, 0.002)
        sim_eval = simulate(200 + sk, hosts, ticks, 0.002)
        clean = simulate(300 + sk, hosts, ticks, 0.0)
        labelled = {
            "simulator": sim_eval,
            "injected": inject_anomalies(clean, per_series=2, seed=sk),
            "host_incidents": inject_host_incidents(clean, per_host=2, magnitude=3.0, seed=sk),
        }
        sizes = {"history": history.summary(), **{n: d.summary() for n, d in labelled.items()}}
        for fam in fams:
            for v, feats in variants.items():
                model = fit(history, TrainConfig(family=fam, features=feats, seed=sk))
                for name, ds in labelled.items():
                    m = evaluate_model(model, ds)
                    for key in KEYS:
                        res[fam][name][v][key].append(m[key])
        print(f"seed {k}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = {
        "config": {
            "hosts": hosts,
            "ticks": ticks,
            "interval_s": 10.0,
            "window_s": WINDOW_S,
            "seeds": n_seeds,
            "seed_base": seed_base,
            "datasets": sizes,
        },
        "results": res,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "xmetric.json").write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"{n_seeds} seeds, {hosts} hosts x 4 metrics, {ticks} ticks of 10 s, 60 s windows; "
        "mean (sd) over seeds; diff = paired (base+cross) - base"
    )
    for fam in fams:
        for name in sets_:
            print(f"\n{fam} / {name}")
            print(f"  {'metric':<22}{'base':>18}{'base+cross':>18}{'diff':>18}")
            r = res[fam][name]
            for key in KEYS:
                a, b = r["base"][key], r["base+cross"][key]
                d = [y - x for x, y in zip(a, b, strict=True) if x is not None and y is not None]
                print(f"  {key:<22}{_ms(a):>18}{_ms(b):>18}{_ms(d):>18}")
    return out


def _ms(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = float(np.mean(xs))
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:8.3f} ({sd:.3f})"


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[args.index("--seeds") + 1]) if "--seeds" in args else None
    base = int(args[args.index("--seed-base") + 1]) if "--seed-base" in args else 0
    main(quick="--quick" in args, seeds=n, seed_base=base)
