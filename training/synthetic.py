"""Labelled synthetic series in the NAB file layout, so tests and notebooks need no download.

:func:`write_nab_like` writes ``data/artificialWithAnomaly/<name>.csv`` (``timestamp,value``,
5-minute samples, 14 days from 2014-04-01) and a NAB ``windows.json`` into a directory: the same
layout as a NAB checkout, so :func:`training.datasets.from_csv` and ``eventops backtest`` read it
unchanged.  The six kinds follow the shapes of NAB's ``artificialWithAnomaly`` category, generated
here from a seed (no NAB data is copied):

======================  ==========================================================================
kind                    anomaly
======================  ==========================================================================
daily_jumpsup           one day's plateau rises well above the usual level
daily_jumpsdown         one day's plateau stays well below the usual level
daily_flatmiddle        the signal is stuck at its middle value for most of a day
daily_nojump            one day has no plateau at all (the daily rise is missing)
increase_spike_density  a quiet series whose spikes become several times as frequent for a day
load_balancer_spikes    a burst of large spikes on a noisy level
======================  ==========================================================================

Each series has one labelled window centred on its anomaly, 10 % of the series long (NAB's own
rule: window length = 10 % of the data / number of anomalies).

>>> import tempfile, json, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> root = write_nab_like(d)
>>> sorted(p.name for p in (root / "data" / "artificialWithAnomaly").iterdir())[:2]
['art_daily_flatmiddle.csv', 'art_daily_jumpsdown.csv']
>>> len(json.loads((root / "windows.json").read_text()))
6
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["KINDS", "write_nab_like"]

CATEGORY = "artificialWithAnomaly"
STEP_S = 300
DAYS = 14
START = pd.Timestamp("2014-04-01 00:00:00")
#: the day (0-based) that carries the anomaly, per kind
_ANOMALY_DAY = {
    "daily_jumpsup": 9,
    "daily_jumpsdown": 9,
    "daily_flatmiddle": 9,
    "daily_nojump": 9,
    "increase_spike_density": 6,
    "load_balancer_spikes": 10,
}
KINDS = tuple(_ANOMALY_DAY)


def _daily(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A daily plateau: ~20 at night, ~80 from about 09:00 to 17:00, smooth edges, noise."""
    hour = (t / 3600.0) % 24
    rise = 1 / (1 + np.exp(-(hour - 9) * 2.5))
    fall = 1 / (1 + np.exp((hour - 17) * 2.5))
    return 20 + 60 * rise * fall + rng.normal(0, 1.5, t.size)


def _series(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """Values of one kind and the (start, end) seconds of its anomaly since :data:`START`."""
    n = DAYS * 86400 // STEP_S
    t = np.arange(n, dtype=np.float64) * STEP_S
    day = _ANOMALY_DAY[kind]
    d0, d1 = day * 86400.0, (day + 1) * 86400.0
    on_day = (t >= d0) & (t < d1)
    if kind.startswith("daily_"):
        v = _daily(t, rng)
        hour = (t / 3600.0) % 24
        if kind == "daily_jumpsup":
            span = on_day & (hour >= 9) & (hour < 17)
            v[span] += 45
        elif kind == "daily_jumpsdown":
            span = on_day & (hour >= 9) & (hour < 17)
            v[span] -= 35
        elif kind == "daily_flatmiddle":
            span = on_day & (hour >= 3) & (hour < 21)
            v[span] = 50 + rng.normal(0, 0.2, int(span.sum()))
        else:  # daily_nojump
            span = on_day
            v[span] = 20 + rng.normal(0, 1.5, int(span.sum()))
        idx = np.flatnonzero(span)
        return v, (t[idx[0]], t[idx[-1]])
    v = rng.normal(10, 1.0, n)
    if kind == "increase_spike_density":
        p = np.where(on_day, 0.08, 0.006)
        spikes = rng.random(n) < p
        v[spikes] += rng.uniform(40, 60, int(spikes.sum()))
        return v, (d0, d1 - STEP_S)
    # load_balancer_spikes: a noisier level with rare spikes, then a dense burst of big ones
    v = rng.normal(30, 3.0, n)
    rare = rng.random(n) < 0.004
    v[rare] += rng.uniform(20, 30, int(rare.sum()))
    b0 = d0 + 10 * 3600.0
    burst = (t >= b0) & (t < b0 + 4 * 3600.0) & (rng.random(n) < 0.5)
    v[burst] += rng.uniform(60, 90, int(burst.sum()))
    return v, (b0, b0 + 4 * 3600.0)


def write_nab_like(directory: Path, seed: int = 0) -> Path:
    """Write the six labelled series and ``windows.json`` under ``directory``; return it.

    Deterministic for a given ``seed``.
    """
    root = Path(directory)
    data = root / "data" / CATEGORY
    data.mkdir(parents=True, exist_ok=True)
    n = DAYS * 86400 // STEP_S
    stamps = START + pd.to_timedelta(np.arange(n) * STEP_S, unit="s")
    text = stamps.strftime("%Y-%m-%d %H:%M:%S")
    half = 0.05 * n * STEP_S  # NAB: windows are 10 % of the data, centred on the anomaly
    windows: dict[str, list[list[str]]] = {}
    for k, kind in enumerate(KINDS):
        rng = np.random.default_rng([seed, k])
        v, (a, b) = _series(kind, rng)
        name = f"art_{kind}.csv"
        pd.DataFrame({"timestamp": text, "value": np.round(v, 6)}).to_csv(data / name, index=False)
        mid = (a + b) / 2
        lo = START + pd.Timedelta(seconds=max(0.0, mid - half))
        hi = START + pd.Timedelta(seconds=min((n - 1) * STEP_S, mid + half))
        windows[f"{CATEGORY}/{name}"] = [
            [lo.strftime("%Y-%m-%d %H:%M:%S.%f"), hi.strftime("%Y-%m-%d %H:%M:%S.%f")]
        ]
    (root / "windows.json").write_text(json.dumps(windows, indent=2) + "\n")
    return root
