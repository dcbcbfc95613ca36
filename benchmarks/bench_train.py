"""Training and hot-swap timings.  Run: ``python -m benchmarks.bench_train [--quick]``.

Measures, against the real PostgreSQL-backed MLflow store (a scratch database copied from the
migrated template, dropped afterwards) with a temporary artifact root:

* fit of an IsolationForest (100 trees, 256 samples) + calibration on 100k windows;
* evaluation of the candidate on the labelled set (NAB + event metrics, 10k-window batches);
* log (params, metrics, signature, input example, skops model with explicit pip_requirements)
  + register -- the baseline is the same ``log_model`` letting MLflow infer requirements;
* the whole ``train_and_register`` (fit + evaluate + log + register + promotion decision);
* alias change -> :class:`registry.watcher.ChampionWatcher` serving the new version
  (``measure_swap_delay``: alias write + wait for the next poll + background load; each
  measurement starts at a random phase of the poll cycle), at the
  default ``poll_s=2.0`` and at ``poll_s=0.5``; baseline = the 10 s requirement.

* ``train_and_judge`` on a demo-sized tenant (simulated 12 hosts x 4 metrics, 10 s samples,
  6 h; 3 h with ``--quick``): the three replays through the detect stage, the MLflow run
  (datasets, table, plot, model) and the decision;
* alias change of one tenant -> the :class:`registry.watcher.TenantWatcher` of a detect worker
  serving it, with 20 tenant models registered (one registry query per poll for all).

The 100k windows are the NAB dev series (5-min samples, 30-min windows) tiled with fresh series
codes, plus injected anomalies.  Writes ``benchmarks/results/train.json``.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS
from core.settings import REPO_ROOT, Settings

NAB = REPO_ROOT.parent / "shared" / "datasets" / "nab-dev"


def dataset(n_windows: int):
    from training.datasets import WindowDataset, from_csv, inject_anomalies

    nab = NAB
    if not nab.exists():  # a plain clone: the synthetic series in NAB's layout
        from training.synthetic import write_nab_like

        nab = write_nab_like(Path(tempfile.mkdtemp(prefix="nab-like-")))
    base = from_csv(nab / "data", nab / "windows.json")
    reps = -(-n_windows // len(base))
    X = {k: np.concatenate([v] * reps)[:n_windows] for k, v in base.X.items()}
    k = base.n_series
    X["series"] = X["series"] + k * np.repeat(np.arange(reps), len(base))[:n_windows]
    n_series = int(X["series"].max()) + 1
    names = [f"{base.names[i % k]}#{i // k}" for i in range(n_series)]
    labels = {i: base.labels.get(i % k, []) for i in range(n_series)}
    ds = WindowDataset(X, names, labels, {}, {i: base.window_s[i % k] for i in range(n_series)})
    return inject_anomalies(ds, per_series=2, seed=0)


def sim_events(tenant: str, hours: float):
    """Simulator events (12 hosts x 4 metrics, 10 s) of ``hours`` as replay columns."""
    import orjson

    from pipeline.simulate import Simulator
    from training.replay import Events

    sim = Simulator(hosts=12, tenant=tenant, seed=7, interval=10.0,
                    start=time.time() - hours * 3600, anomaly_rate=0.003)  # fmt: skip
    recs = [orjson.loads(e) for evs in sim.events(ticks=int(hours * 360)) for e in evs]
    col = {k: np.array([r[k] for r in recs], dtype=object) for k in ("host", "metric")}
    import pandas as pd

    ts = pd.to_datetime([r["ts_event"] for r in recs], utc=True).as_unit("ns").asi8 / 1e9
    val = np.array([r["value"] for r in recs], np.float64)
    return Events(tenant, col["host"], col["metric"], ts, val, 60.0)


def judge_rows(s: Settings, quick: bool) -> list[dict]:
    """``train_and_judge`` phases on a demo-sized tenant; tenant-watcher swap delays."""
    from registry.aliases import promote
    from registry.client import client
    from registry.names import tenant_model
    from registry.watcher import TenantWatcher
    from training.promotion import PromotionPolicy
    from training.train import TrainConfig, train_and_judge

    ev = sim_events("bench", 3.0 if quick else 6.0)
    cfg = TrainConfig(params={"n_estimators": 100})
    t0 = time.perf_counter()
    j = train_and_judge(s, "bench", ev, cfg, PromotionPolicy(), promote=False)
    total = time.perf_counter() - t0
    windows = len(j.report.replays["ensemble"])
    out = [
        {"name": "judge_events", "value": len(ev), "unit": "events"},
        {"name": "judge_windows_per_replay", "value": windows, "unit": "windows"},
        {"name": "judge_replays_3_arms_s", "value": j.timings["replay_s"], "unit": "s"},
        {"name": "judge_log_register_s", "value": j.timings["log_register_s"], "unit": "s"},
        {"name": "judge_decide_s", "value": j.timings["decide_s"], "unit": "s"},
        {"name": "train_and_judge_total_s", "value": total, "unit": "s"},
    ]
    c = client(s)
    # 20 tenants' registered models; the watcher follows all of them, one tenant's alias moves
    for k in range(19):
        c.create_registered_model(tenant_model(s, f"other{k}"))
    promote(c, tenant_model(s, "bench"), j.version)
    w = TenantWatcher(s, poll_s=0.5).start()
    delays = []
    try:
        assert w.wait_for(j.version, 60, tenant="bench"), w.last_error
        v2 = train_and_judge(s, "bench", ev, cfg, PromotionPolicy(), promote=False).version
        rng = np.random.default_rng(0)
        for v in [v2, j.version] * (2 if quick else 4):
            time.sleep(rng.uniform(0, 0.5))
            t0 = time.perf_counter()
            promote(c, tenant_model(s, "bench"), v, reason="bench")
            assert w.wait_for(v, 30, tenant="bench"), w.last_error
            delays.append(time.perf_counter() - t0)
    finally:
        w.stop()
    out.append({"name": "tenant_alias_to_swap_delay_median_poll_0.5s", "unit": "s",
                "value": statistics.median(delays), "baseline": 10.0})  # fmt: skip
    return out


def main(quick: bool = False) -> None:
    import mlflow
    import mlflow.sklearn

    from registry import scratch
    from registry.client import client, ensure_experiment, use
    from registry.watcher import ChampionWatcher, measure_swap_delay
    from training.promotion import PromotionPolicy, evaluate_model
    from training.train import SKOPS_TRUSTED, TrainConfig, fit, log_and_register, train_and_register

    logging.basicConfig(level=logging.WARNING)
    n = 20_000 if quick else 100_000
    base = Settings()
    s = scratch.create_scratch_store(base, prefix="mlflow_bench")
    s = s.model_copy(update={"mlflow_artifacts": Path(tempfile.mkdtemp(prefix="bench-mlruns-"))})
    rows = []
    try:
        ds = dataset(n)
        cfg = TrainConfig(params={"n_estimators": 100, "max_samples": 256})
        t0 = time.perf_counter()
        model = fit(ds, cfg)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = evaluate_model(model, ds, PromotionPolicy())
        eval_s = time.perf_counter() - t0
        log_and_register(s, model, cfg, ds, metrics)  # warm-up (first use of the sklearn flavour)
        t0 = time.perf_counter()
        log_and_register(s, model, cfg, ds, metrics)
        logreg_s = time.perf_counter() - t0
        # baseline: the same log_model letting MLflow infer the requirements
        use(s)
        exp = ensure_experiment(s, "bench-baseline")
        with mlflow.start_run(experiment_id=exp):
            t0 = time.perf_counter()
            mlflow.sklearn.log_model(
                model.estimator,
                name="model",
                registered_model_name=s.model_name + "-baseline",
                serialization_format="skops",
                skops_trusted_types=SKOPS_TRUSTED,
            )
            infer_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = train_and_register(s, ds, cfg)
        total_s = time.perf_counter() - t0

        c = client(s)
        v1, v2 = "1", r.version
        delays = {}
        rng = np.random.default_rng(0)
        for poll in (2.0, 0.5):
            w = ChampionWatcher(s, poll_s=poll).start()
            try:
                measure_swap_delay(w, c, v1, timeout=30)  # warm-up: first load imports mlflow
                ds_ = []
                for v in [v2, v1] * (2 if quick else 5):
                    # start at a random phase of the poll cycle, as a real promotion would
                    time.sleep(rng.uniform(0, poll))
                    ds_.append(measure_swap_delay(w, c, v, timeout=30))
            finally:
                w.stop()
            delays[poll] = ds_
        rows += judge_rows(s, quick)
        rows += [
            {"name": f"fit_isolation_forest_{n // 1000}k_windows_s", "value": fit_s, "unit": "s"},
            {"name": f"evaluate_{n // 1000}k_windows_s", "value": eval_s, "unit": "s"},
            {"name": "log_and_register_s", "value": logreg_s, "unit": "s", "baseline": infer_s},
            {
                "name": f"train_log_register_promote_{n // 1000}k_windows_s",
                "value": total_s,
                "unit": "s",
            },
            {
                "name": "scoring_windows_per_s",
                "value": 1e7 / metrics["latency_ms_per_10k"],
                "unit": "windows/s",
            },
        ]
        for poll, xs in delays.items():
            rows.append(
                {
                    "name": f"alias_to_swap_delay_median_poll_{poll}s",
                    "unit": "s",
                    "value": statistics.median(xs),
                    "baseline": 10.0,
                }
            )
            rows.append(
                {
                    "name": f"alias_to_swap_delay_max_poll_{poll}s",
                    "unit": "s",
                    "value": max(xs),
                    "baseline": 10.0,
                }
            )
    finally:
        scratch.drop_scratch_store(s)
    for row in rows:
        row["value"] = round(float(row["value"]), 4)
        row.setdefault("baseline", None)
        row["ratio"] = round(row["value"] / row["baseline"], 3) if row["baseline"] else None
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "train.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:  # seconds need decimals (common.write_results rounds to integers)
        base = f"  baseline {r['baseline']:.3f}  ratio {r['ratio']:.3f}" if r["baseline"] else ""
        print(f"{r['name']:<48} {r['value']:>12.3f} {r['unit']}{base}")
    print(f"-> {path}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
