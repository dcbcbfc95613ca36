"""``eventops eval``: an evaluation of the detectors that cannot flatter itself (ARCHITECTURE.md).

Three labelled sets, each backtested once per detector configuration with
:func:`training.backtest.run_backtest` (the live window/feature/detector code) and scored by
:func:`training.evaluate.evaluate`:

(a) ``loko`` -- leave-one-kind-out on a NAB-layout directory (``nab-dev``).  Kinds are the
    top-level folders of ``<dir>/data``; a fold is a kind with labelled windows.  Every candidate
    configuration (``models.presets.TUNING_GRID``: name -> ``default_ensemble`` overrides; just
    ``{"default": {}}`` when the grid is absent) runs once over all files; then, per fold, the
    candidate with the best *standard* score on the other kinds is chosen, each profile's NAB
    threshold is chosen on the other kinds too, and the left-out kind is scored with them.
    Series without windows (``artificialNoAnomaly``) are on the training side of every fold; the
    false-positive events the chosen threshold gives on them are reported per fold.  Reported:
    every fold, the mean over folds, the folds pooled into one NAB corpus score, and the default
    configuration's in-sample figures next to its leave-one-kind-out ones.
(b) ``synthetic`` -- the corpus of :mod:`training.corpus` (kinds nab-dev lacks), written with a
    fixed seed under ``out_dir``.
(c) ``simulator`` -- the injected anomalies of :class:`pipeline.simulate.Simulator` on seeds no
    test uses (:data:`SIM_SEEDS`): every (host, metric) is a CSV ``<metric>/s<seed>-<host>.csv``;
    an anomaly labels the metric it moves, its window = the injected samples padded by
    :data:`SIM_PAD_S` (5 minutes) on each side.

For (b) and (c): NAB standard / low-FP / low-FN (threshold optimised over the set, as NAB does),
event-wise precision / recall / F1 at the standard threshold, ROC / PR AUC of the per-row belief
over post-probation rows, and the same per kind at the set's thresholds, with false-alarm
episodes (runs of detections outside windows) per series-day.

``ablation=True`` also runs every entry of ``models.presets.ABLATIONS`` (name -> overrides;
without it, each component of ``DEFAULTS["components"]`` removed in turn) on nab-dev in-sample,
(b) and (c), for one table of standard score and ROC AUC per configuration.  A backtest is run
once per (configuration, set) and reused.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.backtest import BacktestConfig, run_backtest
from training.corpus import write_corpus
from training.evaluate import PROFILES

__all__ = [
    "QUICK",
    "SETS",
    "SIM_PAD_S",
    "SIM_SEEDS",
    "EvalSize",
    "ablations",
    "candidates",
    "loko_select",
    "print_eval",
    "run_eval",
    "write_simulated",
]

log = logging.getLogger(__name__)

SETS = ("loko", "synthetic", "simulator")
#: seeds of the simulator set: used by no test and no benchmark
SIM_SEEDS = (101, 202, 303)
#: seconds of padding on each side of an injected anomaly's samples
SIM_PAD_S = 300.0
#: which metric each injected anomaly kind moves (pipeline/simulate.py)
SIM_METRIC = {
    "cpu_spike": "cpu_load",
    "latency_spike": "latency_p99",
    "traffic_drop": "req_rate",
    "memory_leak": "mem_used_pct",
}
SIM_START = pd.Timestamp("2024-03-04 00:00:00")
#: profile -> short column title
_SHORT = {"standard": "standard", "reward_low_FP": "low-FP", "reward_low_FN": "low-FN"}


@dataclass(frozen=True)
class EvalSize:
    """How big sets (b) and (c) are."""

    corpus_scale: float = 1.0
    corpus_seed: int = 0
    sim_hosts: int = 2
    sim_days: float = 3.0
    sim_interval: float = 60.0


#: a few seconds in all: for tests
QUICK = EvalSize(corpus_scale=0.15, sim_hosts=1, sim_days=0.5)


def candidates(configs: dict[str, dict] | None = None) -> dict[str, dict]:
    """``configs``, else ``models.presets.TUNING_GRID``, else ``{"default": {}}``."""
    if configs:
        return dict(configs)
    from models import presets

    grid = getattr(presets, "TUNING_GRID", None)
    return dict(grid) if grid else {"default": {}}


def ablations() -> dict[str, dict]:
    """``models.presets.ABLATIONS``, else each default component removed in turn."""
    from models import presets

    abl = getattr(presets, "ABLATIONS", None)
    if abl:
        return dict(abl)
    comps = tuple(presets.DEFAULTS["components"])
    if len(comps) < 2:
        return {}
    return {f"-{c}": {"components": tuple(x for x in comps if x != c)} for c in comps}


def write_simulated(
    directory: Path,
    seeds: tuple[int, ...] = SIM_SEEDS,
    hosts: int = 2,
    days: float = 3.0,
    interval: float = 60.0,
    pad_s: float = SIM_PAD_S,
) -> Path:
    """Simulator runs as labelled CSVs in NAB's layout under ``directory``; return it.

    ``data/<metric>/s<seed>-<host>.csv`` for every (seed, host, metric) and ``windows.json``:
    each injected anomaly labels the metric it moves from its first to its last sample,
    padded by ``pad_s`` on each side, overlapping windows merged, clipped to the series.
    """
    from pipeline.simulate import METRICS, Simulator

    root = Path(directory)
    ticks = int(days * 86400 / interval)
    start = SIM_START.timestamp()
    stamps = (SIM_START + pd.to_timedelta(np.arange(ticks) * interval, unit="s")).strftime(
        "%Y-%m-%d %H:%M:%S"
    )
    t_end = start + (ticks - 1) * interval
    windows: dict[str, list[list[str]]] = {}
    for seed in seeds:
        sim = Simulator(hosts=hosts, tenant="eval", seed=seed, interval=interval, start=start)
        vals = np.stack([sim.values(start + k * interval) for k in range(ticks)])
        for h, host in enumerate(sim.names):
            for m, metric in enumerate(METRICS):
                rel = f"{metric}/s{seed}-{host}.csv"
                dest = root / "data" / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"timestamp": stamps, "value": np.round(vals[:, h, m], 4)}).to_csv(
                    dest, index=False
                )
                spans = sorted(
                    (max(a.start - pad_s, start), min(a.end - interval + pad_s, t_end))
                    for a in sim.anomalies
                    if a.host == host and SIM_METRIC[a.kind] == metric and a.start <= t_end
                )
                merged: list[list[float]] = []
                for lo, hi in spans:
                    if merged and lo <= merged[-1][1]:
                        merged[-1][1] = max(merged[-1][1], hi)
                    else:
                        merged.append([lo, hi])
                windows[rel] = [
                    [pd.Timestamp(x, unit="s").strftime("%Y-%m-%d %H:%M:%S.%f") for x in w]
                    for w in merged
                ]
    (root / "windows.json").write_text(json.dumps(windows, indent=2) + "\n")
    return root


# --- running --------------------------------------------------------------------------------


class _Runs:
    """One backtest per (set, configuration), kept for reuse."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.reports: dict[tuple[str, str], dict[str, Any]] = {}

    def run(
        self,
        set_name: str,
        root: Path | list[Path],
        name: str,
        overrides: dict,
        families: str = "none",
        windows: Path | None = None,
    ) -> dict[str, Any]:
        """Backtest ``root`` (NAB layout; several: their ``data`` dirs with ``windows``)."""
        key = (set_name, json.dumps(overrides, sort_keys=True, default=str), families)
        if key not in self.reports:
            safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) or "config"
            roots = root if isinstance(root, list) else [root]
            t0 = time.perf_counter()
            report = run_backtest(
                [r / "data" for r in roots],
                windows or roots[0] / "windows.json",
                self.out_dir / "runs" / set_name / safe,
                BacktestConfig(
                    detectors=dict(overrides), progress=False, write_csv=False, families=families
                ),
            )
            log.info("%s / %s: %.1f s", set_name, name, time.perf_counter() - t0)
            self.reports[key] = report
        return self.reports[key]


def _nab_figures(ev: dict[str, Any]) -> dict[str, Any]:
    e = ev["events"]
    return {
        "nab": {
            p: {"score": r["score"], "threshold": r["threshold"]} for p, r in ev["nab"].items()
        },
        "events": {k: e[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
        "auc": ev.get("auc"),
        "windows": ev["nab"]["standard"]["windows"],
        "series": ev["n_series"],
    }


def _set_figures(report: dict[str, Any]) -> dict[str, Any]:
    ev = report["evaluation"]
    return {
        **_nab_figures(ev),
        "per_kind": ev.get("per_kind", {}),
        "rows": report["events"],
        "runtime_s": report["runtime_s"],
    }


def _pooled(folds: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for p in PROFILES:
        raw = sum(f["raw"][p] for f in folds)
        null = sum(f["null"][p] for f in folds)
        perfect = sum(f["perfect"][p] for f in folds)
        out[p] = 100.0 * (raw - null) / (perfect - null) if perfect > null else None
    return out


def _mean(folds: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for p in PROFILES:
        xs = [f["test"][p] for f in folds if f["test"][p] is not None]
        out[p] = float(np.mean(xs)) if xs else None
    return out


def loko_select(evals: dict[str, dict[str, Any]], fixed: str | None = None) -> dict[str, Any]:
    """Choose per fold, from training kinds only, the candidate; score the left-out kind.

    Parameters
    ----------
    evals : dict
        candidate name -> :func:`training.evaluate.evaluate` result over *all* series (its
        ``kind_folds`` hold, per left-out kind, each profile's threshold and score on the other
        kinds and the left-out kind's score at that threshold).
    fixed : str, optional
        Use this candidate in every fold (e.g. the default configuration) instead of choosing.

    Returns
    -------
    dict
        ``folds`` (per left-out kind: ``candidate``, ``train`` standard score of every
        candidate on the other kinds, ``test_by_candidate`` (what each would have scored on the
        left-out kind, for diagnosis only), ``test`` / ``threshold`` / ``no_anomaly_fp`` per
        profile, ``test_events``),
        ``mean`` and ``pooled`` (the left-out kinds scored as one NAB corpus) per profile.
        A tie goes to the candidate listed first.
    """
    names = [fixed] if fixed is not None else list(evals)
    kinds = sorted({k for n in names for k in evals[n]["kind_folds"]})
    folds = []
    for kind in kinds:
        train = {n: evals[n]["kind_folds"].get(kind, {}).get("standard", {}).get("train")
                 for n in names}  # fmt: skip
        best = max(names, key=lambda n: -np.inf if train[n] is None else train[n])
        f = evals[best]["kind_folds"][kind]
        folds.append(
            {
                "kind": kind,
                "candidate": best,
                "train": train,
                "test_by_candidate": {
                    n: evals[n]["kind_folds"].get(kind, {}).get("standard", {}).get("test")
                    for n in names
                },
                "test": {p: f[p]["test"] for p in PROFILES},
                "threshold": {p: f[p]["threshold"] for p in PROFILES},
                "raw": {p: f[p]["test_raw"] for p in PROFILES},
                "null": {p: f[p]["test_null"] for p in PROFILES},
                "perfect": {p: f[p]["test_perfect"] for p in PROFILES},
                "no_anomaly_fp": f["no_anomaly_fp"],
                "no_anomaly_series": f["no_anomaly_series"],
                "test_events": f["test_events"],
            }
        )
    return {"folds": folds, "mean": _mean(folds), "pooled": _pooled(folds)}


def _loko(runs: _Runs, nab_dir: Path, cands: dict[str, dict]) -> dict[str, Any]:
    default = next((n for n, ov in cands.items() if not ov), None)
    todo = dict(cands)
    if default is None:
        default = "default" if "default" not in cands else "DEFAULTS"
        todo[default] = {}
    evals = {n: runs.run("nab-dev", nab_dir, n, ov)["evaluation"] for n, ov in todo.items()}
    chosen = loko_select({n: evals[n] for n in cands})
    in_sample = {n: {p: ev["nab"][p]["score"] for p in PROFILES} for n, ev in evals.items()}
    best_in = max(cands, key=lambda n: in_sample[n]["standard"])
    kinds = sorted({k for k in evals[default]["per_kind"]})
    return {
        "kinds": kinds,
        "folds_kinds": [f["kind"] for f in chosen["folds"]],
        "candidates": {
            n: {k: list(v) if isinstance(v, tuple) else v for k, v in ov.items()}
            for n, ov in todo.items()
        },  # fmt: skip
        "selected": chosen,
        "default": {
            "name": default,
            "in_sample": _nab_figures(evals[default]),
            "loko": loko_select(evals, fixed=default),
        },
        "best_in_sample": {"name": best_in, "scores": in_sample[best_in]},
        "in_sample": in_sample,
    }


def _check_nab_dir(nab_dir: Path) -> None:
    if not (nab_dir / "data").is_dir() or not (nab_dir / "windows.json").is_file():
        raise FileNotFoundError(
            f"{nab_dir} is not a NAB-layout directory: expected {nab_dir}/data/ and "
            f"{nab_dir}/windows.json"
        )


def run_eval(
    nab_dir: Path | None,
    out_dir: Path,
    configs: dict[str, dict] | None = None,
    ablation: bool = False,
    sets: tuple[str, ...] | list[str] = SETS,
    quick: bool = False,
    size: EvalSize | None = None,
) -> dict[str, Any]:
    """Run the evaluation; return the result (also written to ``out_dir/eval.json``).

    Parameters
    ----------
    nab_dir : Path or None
        NAB-layout directory for set (a); ``None`` skips it (and the ablation's nab-dev column).
    out_dir : Path
        Where the generated sets, the backtest reports and ``eval.json`` go.
    configs : dict, optional
        Candidates for set (a): name -> ``default_ensemble`` overrides (default:
        :func:`candidates`).
    ablation : bool
        Also run :func:`ablations` on nab-dev in-sample, (b) and (c).
    sets : sequence of str
        Any of :data:`SETS`.
    quick, size
        Smaller sets (b) and (c): ``quick`` uses :data:`QUICK`; ``size`` overrides both.
    """
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"unknown sets {sorted(unknown)}: choose from {', '.join(SETS)}")
    sz = size or (QUICK if quick else EvalSize())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if nab_dir is not None:
        nab_dir = Path(nab_dir)
        _check_nab_dir(nab_dir)
    t0 = time.perf_counter()
    runs = _Runs(out_dir)
    result: dict[str, Any] = {"sets": list(sets), "skipped": {}, "size": sz.__dict__}
    roots: dict[str, Path] = {}
    for name in ("synthetic", "simulator"):  # regenerated: no file of an earlier size stays
        if name in sets and (out_dir / "sets" / name).is_dir():
            shutil.rmtree(out_dir / "sets" / name)
    if "synthetic" in sets:
        roots["synthetic"] = write_corpus(
            out_dir / "sets" / "synthetic", seed=sz.corpus_seed, scale=sz.corpus_scale
        )
    if "simulator" in sets:
        roots["simulator"] = write_simulated(
            out_dir / "sets" / "simulator", hosts=sz.sim_hosts, days=sz.sim_days,
            interval=sz.sim_interval,
        )  # fmt: skip
    if "loko" in sets:
        if nab_dir is None:
            result["skipped"]["loko"] = (
                "no NAB-layout data: give --data DIR (make eval DATA=DIR), e.g. "
                "../shared/datasets/nab-dev"
            )
        else:
            result["loko"] = _loko(runs, nab_dir, candidates(configs))
    for name, root in roots.items():
        result[name] = _set_figures(runs.run(name, root, "default", {}))
    if nab_dir is not None and "loko" in sets and "synthetic" in roots:
        result["pooled"] = _set_figures(_pooled_run(runs, out_dir, nab_dir, roots["synthetic"]))
    if "simulator" in roots:  # cold start: a metric's other hosts as the population, or none
        with_prior = runs.run("simulator", roots["simulator"], "population", {}, "folder")
        result["first_day"] = {
            "population prior": with_prior["evaluation"]["first_day"],
            "own history only": runs.run("simulator", roots["simulator"], "default", {})[
                "evaluation"
            ]["first_day"],
        }
        result["simulator_population"] = _set_figures(with_prior)
    if ablation:
        table: dict[str, dict[str, Any]] = {}
        for name, ov in {"default": {}, **ablations()}.items():
            row: dict[str, Any] = {"overrides": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in ov.items()}}  # fmt: skip
            if nab_dir is not None and "loko" in sets:
                row["nab-dev"] = _brief(runs.run("nab-dev", nab_dir, name, ov)["evaluation"])
            for s, root in roots.items():
                row[s] = _brief(runs.run(s, root, name, ov)["evaluation"])
            table[name] = row
        result["ablation"] = table
    result["backtests"] = len(runs.reports)
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _pooled_run(runs: _Runs, out_dir: Path, nab_dir: Path, synthetic: Path) -> dict[str, Any]:
    """nab-dev and the synthetic corpus backtested as one set: one NAB threshold for both, as a
    benchmark of many kinds is scored (a configuration that needs a different threshold per
    kind loses here what per-set thresholds hide)."""
    windows: dict[str, Any] = {}
    for root in (nab_dir, synthetic):
        w = json.loads((root / "windows.json").read_text())
        clash = set(w) & set(windows)
        if clash:
            raise ValueError(f"{root}: series also in nab-dev: {sorted(clash)[:3]}")
        windows.update(w)
    path = out_dir / "sets" / "pooled-windows.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(windows))
    return runs.run("pooled", [nab_dir, synthetic], "default", {}, windows=path)


def _brief(ev: dict[str, Any]) -> dict[str, Any]:
    return {
        "standard": ev["nab"]["standard"]["score"],
        "roc_auc": (ev.get("auc") or {}).get("roc"),
        "pr_auc": (ev.get("auc") or {}).get("pr"),
    }


# --- printing --------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, fmt)


def print_eval(result: dict[str, Any], console: Any = None) -> None:
    """Rich tables of a :func:`run_eval` result."""
    from rich.console import Console
    from rich.table import Table

    # a pipe or a log gets tables 160 columns wide, not 80
    con = console or Console(width=None if sys.stdout.isatty() else 160)
    for s, why in result.get("skipped", {}).items():
        con.print(f"set {s} skipped: {why}")
    lk = result.get("loko")
    if lk:
        t = Table(title="(a) leave-one-kind-out on nab-dev: candidate and thresholds chosen on "
                  "the other kinds, scores of the left-out kind")  # fmt: skip
        for c in ("left-out kind", "candidate", "train std", *_SHORT.values(), "P", "R",
                  "no-anomaly FP"):  # fmt: skip
            t.add_column(c, justify="left" if c in ("left-out kind", "candidate") else "right")
        sel = lk["selected"]
        for f in sel["folds"]:
            e = f["test_events"]
            t.add_row(
                f["kind"], f["candidate"], _f(f["train"][f["candidate"]]),
                *(_f(f["test"][p]) for p in PROFILES), _f(e["precision"], ".2f"),
                _f(e["recall"], ".2f"),
                f"{f['no_anomaly_fp']['standard']} on {f['no_anomaly_series']}",
            )  # fmt: skip
        for label, row in (("mean", sel["mean"]), ("pooled", sel["pooled"])):
            t.add_row(label, "", "", *(_f(row[p]) for p in PROFILES), "", "", "")
        con.print(t)
        d = lk["default"]
        t = Table(title=f"(a) default configuration ({d['name']}): in-sample vs leave-one-kind-out")
        for c in ("figure", *_SHORT.values(), "ROC AUC"):
            t.add_column(c, justify="left" if c == "figure" else "right")
        ins = d["in_sample"]
        t.add_row("in-sample (threshold on all nab-dev)",
                  *(_f(ins["nab"][p]["score"]) for p in PROFILES),
                  _f((ins.get("auc") or {}).get("roc"), ".3f"))  # fmt: skip
        t.add_row("LOKO mean over folds", *(_f(d["loko"]["mean"][p]) for p in PROFILES), "")
        t.add_row("LOKO pooled", *(_f(d["loko"]["pooled"][p]) for p in PROFILES), "")
        b = lk["best_in_sample"]
        if len(lk["in_sample"]) > 1:
            t.add_row(f"best candidate in-sample ({b['name']})",
                      *(_f(b["scores"][p]) for p in PROFILES), "")  # fmt: skip
        con.print(t)
    summary = [(n, result[n]) for n in ("synthetic", "simulator") if n in result]
    if lk:
        summary.insert(0, ("nab-dev (in-sample)", lk["default"]["in_sample"]))
    if "pooled" in result:
        summary.append(("nab-dev + synthetic, one threshold", result["pooled"]))
    if summary:
        t = Table(title="Sets, default configuration (NAB threshold optimised per set and profile)")
        for c in ("set", "series", "windows", *_SHORT.values(), "P", "R", "F1", "ROC AUC",
                  "PR AUC"):  # fmt: skip
            t.add_column(c, justify="left" if c == "set" else "right")
        for n, r in summary:
            e, a = r["events"], r.get("auc") or {}
            t.add_row(
                n, str(r["series"]), str(r["windows"]),
                *(_f(r["nab"][p]["score"]) for p in PROFILES),
                _f(e["precision"], ".2f"), _f(e["recall"], ".2f"), _f(e["f1"], ".2f"),
                _f(a.get("roc"), ".3f"), _f(a.get("pr"), ".3f"),
            )  # fmt: skip
        con.print(t)
    for n in ("synthetic", "simulator"):
        if n not in result:
            continue
        t = Table(
            title=f"({'b' if n == 'synthetic' else 'c'}) {n} per kind, at the set's thresholds"
        )
        for c in ("kind", "series", "windows", *_SHORT.values(), "P", "R", "F1", "ROC AUC",
                  "PR AUC", "FP/series-day"):  # fmt: skip
            t.add_column(c, justify="left" if c == "kind" else "right")
        for kind, k in result[n]["per_kind"].items():
            e, a = k["events"], k["auc"]
            t.add_row(
                kind, str(k["series"]), str(k["windows"]), *(_f(k["nab"][p]) for p in PROFILES),
                _f(e["precision"], ".2f"), _f(e["recall"], ".2f"), _f(e["f1"], ".2f"),
                _f(a["roc"], ".3f"), _f(a["pr"], ".3f"), _f(k["fp_per_series_day"], ".2f"),
            )  # fmt: skip
        con.print(t)
    fd = result.get("first_day")
    if fd:
        t = Table(title="(c) simulator, first day of every series (probation included)")
        for c in ("cold start", "windows", "detected", "rate", "false alarms", "per series",
                  "threshold"):  # fmt: skip
            t.add_column(c, justify="left" if c == "cold start" else "right")
        for name, r in fd.items():
            t.add_row(
                name, str(r["windows"]), str(r["detected"]), _f(r["detection_rate"], ".2f"),
                str(r["false_alarms"]), _f(r["false_alarms_per_series"], ".2f"),
                _f(r["threshold"], ".3f"),
            )  # fmt: skip
        con.print(t)
    abl = result.get("ablation")
    if abl:
        cols = [c for c in ("nab-dev", "synthetic", "simulator") if c in next(iter(abl.values()))]
        t = Table(title="Ablation: standard score and ROC AUC per set (nab-dev in-sample)")
        t.add_column("configuration")
        for c in cols:
            t.add_column(f"{c} std", justify="right")
            t.add_column(f"{c} AUC", justify="right")
        for name, row in abl.items():
            t.add_row(
                name,
                *(x for c in cols for x in (_f(row[c]["standard"]), _f(row[c]["roc_auc"], ".3f"))),
            )
        con.print(t)
    con.print(f"{result['backtests']} backtests in {result['runtime_s']} s")


def eval_command(
    data: Path | None = None,
    out: Path = Path("eval-out"),
    ablation: bool = False,
    sets: list[str] | None = None,
    quick: bool = False,
) -> None:
    """Leave-one-kind-out on nab-dev, the synthetic corpus and the simulator, scored NAB-style.

    --data: a NAB-layout directory for set (a), which is skipped without it; --sets: any of
    loko,synthetic,simulator (comma-separated or repeated); --ablation: also the ablation table;
    --quick: small sets (b) and (c), for a smoke test.  Tables printed, eval.json under --out.
    """
    import typer

    chosen = [x.strip() for s in (sets or [",".join(SETS)]) for x in s.split(",") if x.strip()]
    try:
        result = run_eval(data, out, ablation=ablation, sets=tuple(chosen), quick=quick)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    print_eval(result)
    typer.echo(f"report: {Path(out) / 'eval.json'}")
