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
