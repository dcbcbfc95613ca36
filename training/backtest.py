"""Backtest: replay labelled CSV series through the live window/feature/detector code.

``run_backtest`` reads ``timestamp,value`` CSV files (files or directory trees), turns each file
into one series (code = file index), aggregates it with :func:`features.windows.window_features`
and scores the closed windows with the default :class:`models.ensemble.Ensemble` -- the same
objects the detect stage uses.  It writes ``timestamp,value,anomaly_score,window_score`` per input
file under ``out_dir`` (mirroring the input tree) and, when labelled windows are given, evaluates
with :mod:`training.evaluate` and writes ``report.json``.

``window_score`` is the per-window score (high for as long as an anomaly lasts);
``anomaly_score`` is the alert openings (:mod:`models.episodes`): the window score where the
alert layer would open an alert, 0 elsewhere -- for every threshold at once, so NAB's threshold
sweep scores exactly the alerts a user would get.

Window length: by default each file's window is **its own sampling interval** (the median positive
difference of its timestamps, so a 5-minute series gets 5-minute windows and an hourly series
hourly ones); files with the same interval share one aggregator.  ``BacktestConfig.window_s``
forces one length for every file.

No look-ahead: the score written on a row is the score of the latest window of that series whose
end is ``<=`` the row's timestamp, i.e. what the live detect stage (lateness 0) has emitted when
the row arrives.  A spike on row ``i`` therefore shows on row ``i + 1``; rows before the first
closed window get 0.  Rows whose timestamp goes backwards are aggregated into their own window
(the backtest pushes each file as one batch; nothing is late).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.cross import cross_metric_features
from features.windows import ClosedWindows, window_features
from models.episodes import opening_signal
from models.presets import default_ensemble
from training.evaluate import LabelledSeries, evaluate, load_windows

__all__ = ["BacktestConfig", "backtest_command", "discover_csvs", "print_report", "run_backtest"]

log = logging.getLogger(__name__)


@dataclass
class BacktestConfig:
    """Backtest settings.

    Attributes
    ----------
    window_s : float or None
        Window length in seconds; ``None`` = each file's own sampling interval.
    detectors : dict
        Overrides for :func:`models.presets.default_ensemble`.
    probation : float
        Fraction of each series never scored by the evaluation.
    progress : bool
        Show a rich progress bar.
    write_csv : bool
        Write the per-row score files.
    families : {"none", "folder"}
        Metric families (the population a new series is scored against while it warms up):
        ``"none"`` = every file its own; ``"folder"`` = the files of one folder are one metric
        of many hosts (e.g. ``cpu_load/<host>.csv``).
    """

    window_s: float | None = None
    detectors: dict[str, Any] = field(default_factory=dict)
    probation: float = 0.15
    progress: bool = True
    write_csv: bool = True
    families: str = "none"

    def __post_init__(self) -> None:
        if self.window_s is not None and not self.window_s > 0:
            raise ValueError("window_s must be > 0")
        if not 0 <= self.probation < 1:
            raise ValueError("probation must be in [0, 1)")
        if self.families not in ("none", "folder"):
            raise ValueError("families must be 'none' or 'folder'")


def discover_csvs(paths: list[Path]) -> list[tuple[Path, str]]:
    """``(file, relative name)`` for every CSV in ``paths`` (files or directory trees)."""
    out: list[tuple[Path, str]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += [(f, f.relative_to(p).as_posix()) for f in sorted(p.rglob("*.csv"))]
        elif p.is_file():
            out.append((p, p.name))
        else:
            raise FileNotFoundError(p)
    if not out:
        raise FileNotFoundError(f"no CSV files under {[str(p) for p in paths]}")
    return out


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    if not {"timestamp", "value"} <= set(df.columns):
        raise ValueError(f"{path}: expected columns timestamp,value")
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    return df


def _interval(ts: np.ndarray) -> float:
    d = np.diff(ts)
    d = d[d > 0]
    if d.size == 0:
        raise ValueError("cannot infer a sampling interval from fewer than two distinct times")
    return float(np.median(d))


def _row_scores(ts: np.ndarray, w_end: np.ndarray, w_score: np.ndarray) -> np.ndarray:
    """Score of the latest window with end <= ts for each row (0 before the first)."""
    k = np.searchsorted(w_end, ts, side="right") - 1
    return np.where(k >= 0, w_score[np.maximum(k, 0)], 0.0)


def _host_codes(rels: list[str]) -> list[int]:
    """Host code per file, by two layouts: ``dir/<host>.<metric>.csv`` files of one folder share
    a host (host-major), and so do files of the same name in different folders
    (``<metric>/<host>.csv``, metric-major).  NAB's file names are unique: one host each.

    >>> _host_codes(["m/a.temp.csv", "m/a.flow.csv", "m/b.temp.csv", "x/nyc_taxi.csv"])
    [0, 0, 1, 2]
    >>> _host_codes(["cpu/h1.csv", "cpu/h2.csv", "mem/h1.csv"])
    [0, 1, 0]
    """
    keys: dict[str, int] = {}
    out = []
    for rel in rels:
        folder, _, name = rel.rpartition("/")
        stem = name[:-4] if name.endswith(".csv") else name
        key = f"{folder}/{stem.split('.')[0]}" if "." in stem else f"*/{stem}"
        out.append(keys.setdefault(key, len(keys)))
    return out


def _match_windows(rel: str, windows: dict[str, list]) -> list | None:
    if rel in windows:
        return windows[rel]
    hits = [k for k in windows if rel.endswith(k) or k.endswith(rel)]
    return windows[hits[0]] if len(hits) == 1 else None


def run_backtest(
    paths: list[Path],
    windows_path: Path | None,
    out_dir: Path,
    config: BacktestConfig | None = None,
) -> dict[str, Any]:
    """Run the backtest; return the report (also written to ``out_dir/report.json``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = config or BacktestConfig()
    t0 = time.perf_counter()
    files = discover_csvs(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), disable=not cfg.progress, transient=False,
    )  # fmt: skip
    frames: list[pd.DataFrame] = []
    with progress:
        task = progress.add_task("read", total=len(files))
        for f, _ in files:
            frames.append(_read(f))
            progress.advance(task)
        ts_s = [df["timestamp"].to_numpy("datetime64[ns]").astype(np.int64) / 1e9 for df in frames]
        win_len = [cfg.window_s or _interval(t) for t in ts_s]
        closed: list[ClosedWindows] = []
        n_events = 0
        for wl in sorted(set(win_len)):
            idx = [i for i, w in enumerate(win_len) if w == wl]
            s = np.concatenate([np.full(ts_s[i].size, i, np.int64) for i in idx])
            t = np.concatenate([ts_s[i] for i in idx])
            v = np.concatenate([frames[i]["value"].to_numpy(np.float64) for i in idx])
            n_events += s.size
            # offline: every event counts, whatever the files' order (no lateness)
            closed.append(window_features(s, t, v, wl))
        cw = ClosedWindows.concat(closed)
        X = cw.columns()
        # the live detector input (features.cross): the files of one host (``_host_codes``)
        host = np.asarray(_host_codes([rel for _, rel in files]), np.int64)
        X["host"] = host[cw.series]
        if cfg.families == "folder":
            folders = [rel.rpartition("/")[0] for _, rel in files]
            codes = {f: i for i, f in enumerate(dict.fromkeys(folders))}
            X["family"] = np.asarray([codes[f] for f in folders], np.int64)[cw.series]
        X.update(cross_metric_features(X["host"], cw.start, X))
        ens = default_ensemble(**cfg.detectors)
        task = progress.add_task("detect", total=len(cw))
        res = ens.process(X, on_round=lambda k, n: progress.advance(task, k))
        # NAB detections = alert openings (models.episodes), for every threshold at once
        signal = opening_signal(ens.opening_gate(), cw.series, res.score)
    t_detect = time.perf_counter() - t0

    windows = load_windows(windows_path) if windows_path else None
    labelled: list[LabelledSeries] = []
    for i, ((_f, rel), df) in enumerate(zip(files, frames, strict=False)):
        m = cw.series == i
        order = np.argsort(cw.end[m], kind="stable")
        ends = cw.end[m][order]
        belief = _row_scores(ts_s[i], ends, res.score[m][order])
        scores = _row_scores(ts_s[i], ends, signal[m][order])
        if cfg.write_csv:
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(
                {"timestamp": df["timestamp"], "value": df["value"], "anomaly_score": scores,
                 "window_score": belief}
            ).to_csv(dest, index=False)  # fmt: skip
        if windows is not None:
            w = _match_windows(rel, windows)
            if w is None:
                log.warning("%s has no entry in %s; not evaluated", rel, windows_path)
                continue
            labelled.append(
                LabelledSeries(rel, df["timestamp"].to_numpy(), scores, w, cfg.probation, belief)
            )
    report: dict[str, Any] = {
        "files": len(files),
        "events": n_events,
        "windows": len(cw),
        "runtime_s": round(time.perf_counter() - t0, 3),
        "detect_runtime_s": round(t_detect, 3),
        "config": asdict(cfg),
        "window_s": {rel: wl for (_, rel), wl in zip(files, win_len, strict=False)},
    }
    if labelled:
        report["evaluation"] = evaluate(labelled)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def print_report(report: dict[str, Any]) -> None:
    """Rich table of the evaluation part of ``report``."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{report['files']} files, {report['events']} rows, {report['windows']} windows "
        f"in {report['runtime_s']} s"
    )
    ev = report.get("evaluation")
    if not ev:
        return
    t = Table(title="NAB-style score (threshold optimised per profile)")
    for c in ("profile", "score", "threshold", "windows"):
        t.add_column(c)
    for name, r in ev["nab"].items():
        t.add_row(name, f"{r['score']:.1f}", f"{r['threshold']:.4f}", str(r["windows"]))
    console.print(t)
    e = ev["events"]
    t2 = Table(title="Event-wise (standard threshold)")
    for c in ("precision", "recall", "F1", "TP", "FP", "FN", "mean delay"):
        t2.add_column(c)
    t2.add_row(
        f"{e['precision']:.3f}", f"{e['recall']:.3f}", f"{e['f1']:.3f}", str(e["tp"]),
        str(e["fp"]), str(e["fn"]), f"{e['mean_delay_s'] / 3600:.1f} h",
    )  # fmt: skip
    console.print(t2)


def backtest_command(
    paths: list[Path],
    windows: Path | None = None,
    out: Path = Path("backtest-out"),
    window_s: float | None = None,
    no_progress: bool = False,
) -> None:
    """Replay CSV series through the detectors; score them when --windows labels are given."""
    import typer

    try:
        report = run_backtest(
            paths, windows, out, BacktestConfig(window_s=window_s, progress=not no_progress)
        )
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    print_report(report)
