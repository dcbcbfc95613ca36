"""A labelled synthetic evaluation corpus of the kinds ``nab-dev`` lacks, in NAB's file layout.

:func:`write_corpus` writes ``<dir>/data/<kind>/<name>.csv`` (``timestamp,value``), a NAB
``<dir>/windows.json`` (``"<kind>/<name>.csv"`` -> ``[[start, end], ...]``) and
``<dir>/anomalies.json`` (what was injected where: ``type``, ``start``, ``end`` per anomaly), fully
determined by the seed.  Every series is generated here from general knowledge of such telemetry
(no benchmark data is read or copied); ``eventops eval`` backtests it as its set (b).

==============  ===================================================================================
kind            series (5-minute samples unless said otherwise)
==============  ===================================================================================
cloudCPU        CPU % of single instances (bounded 0-100, quantised, some with a daily pattern):
                level shift, sparse spike + slow ramp to saturation, change of variance; one
                series with a nightly batch job and short bursts and no anomaly
cloudNetwork    bytes per interval, log-normal and bursty (Pareto bursts): traffic drop (instance
                out of the load balancer), huge spike + sustained x3 level, slow ramp; one series
                with 6-hourly backups and bursts, no anomaly
cloudDisk       disk write bytes, mostly near zero with log-rotation/backup spikes: sustained heavy
                writes, a spike far above the usual ones + a change of variance, slow ramp; one
                series of hourly/daily jobs, no anomaly
cloudLatency    request latency (a floor plus right-skewed noise): level shift, two sparse spikes,
                drift + change of variance; one series with periodic GC pauses, no anomaly
burstyCounts    mention counts (negative binomial with a daily cycle and heavy-tailed benign
                bursts that decay within ~1 h), 4 weeks: sustained surges lasting hours, drops to
                near zero; one series with bursts only
trafficSensor   freeway occupancy / speed / travel time, irregular sampling (jitter, missing rows,
                gaps, drop-outs reading 0), weekday rush hours and quieter weekends:
                incident-like congestion of 30-120 min outside rush hours, a stuck sensor
flatStuck       a quantised daily series and a step-quantised queue length that get stuck for
                hours, a flat line that steps away; one flat line without anomaly
missingData     daily-pattern series with gaps of hours (missing rows, never labelled): a spike
                and a level shift, a slow ramp; one series with gaps only
machineSensors  3 machines x 5 correlated sensors (temperature, pressure, flow, vibration,
                current) at 10 s for 5 hours, ``<machine>.<sensor>.csv``: faults of 2-20 minutes
                that move 3-4 sensors at once (some only subtly)
==============  ===================================================================================

Labelled windows follow NAB's rule for every kind but ``machineSensors``: window length = 10 % of
the series' rows / number of anomalies, centred on the row where the anomaly starts, clipped to
the series and merged where two overlap.  A ``machineSensors`` fault's window is the fault segment
itself, on each sensor the fault moves (a sensor the fault does not touch carries no label for
it), so per-window ROC AUC can be measured on sustained faults.  Anomalies start after the first
30 % of a series (NAB's probation is 15 %).  Gaps, drop-outs and benign bursts are never labelled:
they are what a detector must not page on.

``scale`` shortens every series (tests use ~0.2); anomalies keep their relative positions.

>>> import tempfile, json, pathlib
>>> root = write_corpus(pathlib.Path(tempfile.mkdtemp()), scale=0.2)
>>> sorted(p.name for p in (root / "data").iterdir()) == sorted(KINDS)
True
>>> w = json.loads((root / "windows.json").read_text())
>>> w["cloudCPU/cpu_nightly_job.csv"], len(w["cloudCPU/cpu_level_shift.csv"])
([], 1)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["KINDS", "write_corpus"]

KINDS = (
    "cloudCPU",
    "cloudNetwork",
    "cloudDisk",
    "cloudLatency",
    "burstyCounts",
    "trafficSensor",
    "flatStuck",
    "missingData",
    "machineSensors",
)
START = np.datetime64("2015-02-01T00:00:00", "s")  # a Sunday
STEP_S = 300
DAY = 86400
#: sensor name -> decimals written, for machineSensors
SENSORS = {"temperature": 2, "pressure": 3, "flow": 2, "vibration": 3, "current": 2}


@dataclass
class _Series:
    """One generated series: times (seconds since START), values, and the injected anomalies."""

    kind: str
    name: str
    t: np.ndarray  # int64 (n,), increasing
    v: np.ndarray  # float64 (n,)
    decimals: int
    anomalies: list[tuple[str, int, int]] = field(default_factory=list)  # type, t0, t1 (seconds)
    exact: bool = False  # window = the anomaly segment itself (machineSensors)


def _rows(days: float, scale: float, step: int = STEP_S) -> int:
    return max(int(days * scale * DAY / step), 200)


def _daily(t: np.ndarray, peak_h: float = 14.0) -> np.ndarray:
    """A smooth daily cycle in [-1, 1], highest at ``peak_h``."""
    return np.cos(2 * np.pi * (t / 3600.0 - peak_h) / 24.0)


def _at(n: int, frac: float) -> int:
    return min(max(int(frac * n), 0), n - 1)


def _dur(n: int, rows: int, cap: float = 0.25) -> int:
    """An anomaly length in rows, at most ``cap`` of the series (short series in tests)."""
    return max(1, min(rows, int(cap * n)))


def _span(n: int, frac: float, rows: int, cap: float = 0.25) -> tuple[int, int]:
    """First row (at ``frac`` of the series) and length of an anomaly that ends in the series."""
    i = _at(n, frac)
    return i, max(1, min(_dur(n, rows, cap), n - 1 - i))


# --- cloud instance metrics -------------------------------------------------------------------
# Each generator builds ``level`` and ``noise`` on a regular 5-minute grid, injects anomalies into
# them (recording (type, start row, end row)) and maps level + noise to the metric's own scale.

Inject = list[tuple[str, int, int]]


def _shift(a: np.ndarray, i0: int, i1: int, mag: float) -> None:
    a[i0:i1] += mag


def _ramp(a: np.ndarray, i0: int, i1: int, mag: float, stay: bool = True) -> None:
    a[i0:i1] += np.linspace(0.0, mag, i1 - i0)
    if stay:
        a[i1:] += mag


def _cloud_cpu(rng: np.random.Generator, name: str, n: int) -> tuple[np.ndarray, Inject, int]:
    t = np.arange(n) * STEP_S
    base = {"cpu_level_shift": 14.0, "cpu_spikes_drift": 28.0, "cpu_variance": 8.0}.get(name, 20.0)
    amp = {"cpu_spikes_drift": 9.0, "cpu_nightly_job": 7.0}.get(name, 0.0)
    level = base + amp * _daily(t) + np.cumsum(rng.normal(0, 0.05, n)).clip(-3, 3)
    noise = rng.normal(0, 1.0 if name == "cpu_variance" else 2.0, n)
    extra = np.zeros(n)
    inj: Inject = []
    if name == "cpu_level_shift":
        i = _at(n, 0.55)
        _shift(level, i, n, 30.0)
        inj.append(("level_shift", i, n - 1))
    elif name == "cpu_spikes_drift":
        i = _at(n, 0.35)
        extra[i : i + 2] += 55.0
        inj.append(("spike", i, i + 1))
        i, k = _span(n, 0.7, 432)
        _ramp(level, i, i + k, 50.0)
        inj.append(("ramp", i, n - 1))
    elif name == "cpu_variance":
        i, k = _span(n, 0.6, 576)
        noise[i : i + k] *= 7.0
        inj.append(("variance", i, i + k - 1))
    else:  # cpu_nightly_job: a 30-minute batch job at 02:00 and short bursts, all benign
        hour = (t / 3600.0) % 24
        extra[(hour >= 2.0) & (hour < 2.5)] += rng.uniform(55, 65)
        burst = rng.random(n) < 0.01
        extra[burst] += rng.uniform(10, 25, int(burst.sum()))
    v = np.clip(level + noise + extra, 0.0, 100.0)
    if name in ("cpu_level_shift", "cpu_nightly_job"):
        v = np.round(v * 2) / 2  # 0.5 % steps (a 2-vCPU instance's agent)
    return v, inj, 3


def _cloud_network(rng: np.random.Generator, name: str, n: int) -> tuple[np.ndarray, Inject, int]:
    t = np.arange(n) * STEP_S
    level = np.log(rng.uniform(2e7, 8e7)) + 0.6 * _daily(t, 15.0)
    noise = rng.normal(0, 0.35, n)
    # bursty: Pareto-sized multipliers on ~2 % of the rows, one to three rows long
    burst = np.flatnonzero(rng.random(n) < (0.04 if name == "net_backups" else 0.02))
    for i in burst:
        noise[i : i + int(rng.integers(1, 4))] += np.log1p(min(rng.pareto(1.8) * 1.5, 7.0))
    inj: Inject = []
    if name == "net_drop":
        i, k = _span(n, 0.5, 240)
        _shift(level, i, i + k, np.log(0.08))
        inj.append(("level_shift", i, i + k - 1))
    elif name == "net_spike_shift":
        i = _at(n, 0.4)
        noise[i] += np.log(40.0)
        inj.append(("spike", i, i))
        i = _at(n, 0.75)
        _shift(level, i, n, np.log(3.0))
        inj.append(("level_shift", i, n - 1))
    elif name == "net_ramp":
        i, k = _span(n, 0.55, 576)
        _ramp(level, i, i + k, 1.6)
        inj.append(("ramp", i, n - 1))
    else:  # net_backups: a 15-minute backup every 6 hours
        phase = (t % (6 * 3600)) < 900
        noise[phase] += np.log(8.0)
    return np.round(np.exp(level + noise)), inj, 0


def _cloud_disk(rng: np.random.Generator, name: str, n: int) -> tuple[np.ndarray, Inject, int]:
    t = np.arange(n) * STEP_S
    p_write = np.full(n, 0.35)
    level = np.full(n, np.log(2e4))
    sigma = np.full(n, 1.0)
    extra = np.zeros(n)
    minute = (t // 60) % 60
    hour = (t / 3600.0) % 24
    extra[minute == 0] += 1.5e6 * rng.uniform(0.7, 1.3, int((minute == 0).sum()))  # log rotation
    backup = (hour >= 3.0) & (hour < 3.25)
    extra[backup] += 4e7 * rng.uniform(0.8, 1.2, int(backup.sum()))
    inj: Inject = []
    if name == "disk_sustained":
        i, k = _span(n, 0.45, 72)
        p_write[i : i + k] = 1.0
        level[i : i + k] += np.log(400.0)
        inj.append(("level_shift", i, i + k - 1))
    elif name == "disk_spike_variance":
        i = _at(n, 0.35)
        extra[i] += 6e8
        inj.append(("spike", i, i))
        i, k = _span(n, 0.7, 288)
        p_write[i : i + k] = 0.95
        sigma[i : i + k] = 2.5
        inj.append(("variance", i, i + k - 1))
    elif name == "disk_ramp":
        i, k = _span(n, 0.55, 576)
        _ramp(level, i, i + k, 4.0)
        p_write[i:] = np.linspace(0.35, 1.0, n - i)
        inj.append(("ramp", i, n - 1))
    writes = rng.random(n) < p_write
    v = np.where(writes, np.exp(level + sigma * rng.normal(0, 1, n)), 0.0) + extra
    return np.round(v), inj, 0


def _cloud_latency(rng: np.random.Generator, name: str, n: int) -> tuple[np.ndarray, Inject, int]:
    t = np.arange(n) * STEP_S
    floor = rng.uniform(0.06, 0.12)
    level = np.log(0.03) + 0.25 * _daily(t)
    g = rng.gamma(2.0, 0.5, n)  # mean 1, right-skewed
    spread = np.ones(n)
    tail = rng.random(n) < 0.01
    g[tail] *= rng.uniform(2, 4, int(tail.sum()))
    inj: Inject = []
    if name == "lat_level":
        i, k = _span(n, 0.5, 432)
        _shift(level, i, i + k, np.log(2.5))
        inj.append(("level_shift", i, i + k - 1))
    elif name == "lat_spikes":
        for frac in (0.4, 0.75):
            i = _at(n, frac)
            g[i : i + 2] = 25.0
            inj.append(("spike", i, i + 1))
    elif name == "lat_drift_variance":
        i, k = _span(n, 0.45, 576)
        _ramp(level, i, i + k, 1.2, stay=False)
        inj.append(("ramp", i, i + k - 1))
        i, k = _span(n, 0.82, 144)
        spread[i : i + k] = 4.0
        inj.append(("variance", i, i + k - 1))
    else:  # lat_gc: a GC pause every 2 hours
        gc = (t % 7200) == 0
        g[gc] *= 5.0
    g = np.maximum(1.0 + (g - 1.0) * spread, 0.05)
    return floor + np.exp(level) * g, inj, 4


_Gen = Callable[..., tuple[np.ndarray, Inject, int]]
_CLOUD: dict[str, tuple[_Gen, tuple[str, ...]]] = {
    "cloudCPU": (
        _cloud_cpu, ("cpu_level_shift", "cpu_spikes_drift", "cpu_variance", "cpu_nightly_job")
    ),
    "cloudNetwork": (_cloud_network, ("net_drop", "net_spike_shift", "net_ramp", "net_backups")),
    "cloudDisk": (_cloud_disk, ("disk_sustained", "disk_spike_variance", "disk_ramp", "disk_cron")),
    "cloudLatency": (_cloud_latency, ("lat_level", "lat_spikes", "lat_drift_variance", "lat_gc")),
}  # fmt: skip


def _regular(kind: str, name: str, v: np.ndarray, inj: Inject, decimals: int) -> _Series:
    t = np.arange(v.size, dtype=np.int64) * STEP_S
    return _Series(kind, name, t, v, decimals, [(a, int(t[i0]), int(t[i1])) for a, i0, i1 in inj])


# --- bursty counts ------------------------------------------------------------------------------


def _counts(rng: np.random.Generator, name: str, n: int) -> _Series:
    t = np.arange(n, dtype=np.int64) * STEP_S
    rate = rng.uniform(15, 45) * np.exp(0.6 * _daily(t, 20.0) + 0.1 * _daily(t / 7.0))
    mult = np.ones(n)
    # benign bursts: ~1 per 1.5 days (2 per day on the bursts-only series), heavy-tailed size,
    # decaying with a time constant of 15-60 minutes
    n_b = rng.poisson(n * STEP_S / DAY / (0.5 if name == "counts_benign" else 1.5))
    for i in rng.integers(0, n, n_b):
        size = min(rng.pareto(1.5) * 2.0, 20.0)
        tau = rng.uniform(3, 12)  # rows
        k = np.arange(n - i)
        mult[i:] += size * np.exp(-k / tau)
    inj: list[tuple[str, int, int]] = []
    plan = {
        "counts_surges": [
            ("surge", 0.35, 60, 9.0), ("drop", 0.55, 48, 0.02), ("surge", 0.72, 36, 8.0)
        ],
        "counts_drop": [("surge", 0.45, 60, 10.0), ("drop", 0.8, 72, 0.01)],
    }.get(name, [])  # fmt: skip
    for typ, frac, rows, factor in plan:
        i, k = _span(n, frac, rows, 0.1)
        if typ == "surge":  # a plateau that builds up over ~30 min and fades over ~1 h
            ramp = np.minimum(np.minimum(np.arange(k) / 6.0, (k - np.arange(k)) / 12.0), 1.0)
            mult[i : i + k] *= 1.0 + (factor - 1.0) * ramp
        else:
            mult[i : i + k] *= factor
        inj.append((typ, int(t[i]), int(t[i + k - 1])))
    lam = rate * mult * rng.gamma(8.0, 1 / 8.0, n)  # negative binomial: gamma-mixed Poisson
    return _Series("burstyCounts", name, t, rng.poisson(lam).astype(np.float64), 0, inj)


# --- freeway sensors ----------------------------------------------------------------------------


def _congestion(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Congestion index in [0, 1]: weekday rush hours at 08:00 and 17:30, quieter weekends."""
    day = t // DAY
    hour = (t % DAY) / 3600.0
    weekday = ((day + 6) % 7) < 5  # START is a Sunday: day 0 -> weekday index 6
    gain = rng.uniform(0.8, 1.15, int(day.max()) + 1)[day]
    am = 0.75 * np.exp(-0.5 * ((hour - 8.0) / 0.8) ** 2)
    pm = 0.9 * np.exp(-0.5 * ((hour - 17.5) / 1.1) ** 2)
    weekend = 0.25 * np.exp(-0.5 * ((hour - 14.0) / 2.5) ** 2)
    c = np.where(weekday, am + pm, weekend) * gain + 0.03
    return np.clip(c + rng.normal(0, 0.02, t.size), 0.0, 1.0)


def _incident_time(rng: np.random.Generator, t: np.ndarray, frac: float) -> int:
    """A row near ``frac`` of the series at a time of day outside rush hours (10:30-14:00)."""
    i = _at(t.size, frac)
    day0 = int(t[i] // DAY) * DAY
    return int(np.searchsorted(t, day0 + int(rng.uniform(10.5, 14.0) * 3600)))


def _traffic(rng: np.random.Generator, name: str, n: int) -> _Series:
    t = np.arange(n, dtype=np.int64) * STEP_S
    c = _congestion(rng, t)
    inj: list[tuple[str, int, int]] = []
    plan = {
        "occupancy_a": [("incident", 0.45, 18), ("incident", 0.78, 12)],
        "speed_b": [("incident", 0.5, 24), ("stuck", 0.72, 60)],
        "traveltime_c": [("stuck", 0.35, 48), ("incident", 0.62, 9)],
    }[name]
    stuck: list[tuple[int, int]] = []
    for typ, frac, rows in plan:
        k = _dur(n, rows, 0.05)
        if typ == "incident":  # fast onset, slower clearance
            i = min(_incident_time(rng, t, frac), n - k - 1)
            shape = np.minimum(np.arange(k) / 2.0, 1.0) * np.minimum(
                (k - np.arange(k)) / (k / 3), 1.0
            )
            c[i : i + k] = np.clip(c[i : i + k] + 0.75 * shape, 0, 1)
        else:
            i = _at(n, frac)
            stuck.append((i, k))
        inj.append((typ, int(t[i]), int(t[i + k - 1])))
    if name.startswith("occupancy"):
        v, dec = 2.0 + 30.0 * c + rng.normal(0, 0.6, n), 1
    elif name.startswith("speed"):
        v, dec = 67.0 - 45.0 * c + rng.normal(0, 1.5, n), 0
    else:
        v, dec = 3600.0 * 1.6 / np.maximum(67.0 - 45.0 * c + rng.normal(0, 1.5, n), 5.0), 0
    v = np.maximum(v, 0.0)
    for i, k in stuck:
        v[i : i + k] = np.round(v[i - 1], dec)
    labelled = np.zeros(n, dtype=bool)
    for _, a, b in inj:
        labelled[(t >= a - 3600) & (t <= b + 3600)] = True
    drop = (rng.random(n) < 0.006) & ~labelled  # drop-outs: the sensor reads 0
    v[drop] = 0.0
    keep = (rng.random(n) > 0.015) | labelled  # single missing rows
    for _ in range(3):  # gaps of 30 min to 3 hours, away from the anomalies
        g0, g = int(rng.integers(0, n)), int(rng.integers(6, 37))
        if not labelled[g0 : g0 + g].any():
            keep[g0 : g0 + g] = False
    jitter = rng.integers(-45, 46, n)
    jitter[0] = 0
    return _Series("trafficSensor", name, (t + jitter)[keep], v[keep], dec, inj)


# --- flat lines and stuck values --------------------------------------------------------------


def _flat(rng: np.random.Generator, name: str, n: int) -> _Series:
    t = np.arange(n, dtype=np.int64) * STEP_S
    inj: list[tuple[str, int, int]] = []
    if name == "stuck_temperature":
        v = np.round((21.0 + 3.0 * _daily(t, 15.0) + rng.normal(0, 0.4, n)) * 2) / 2
        i, k = _span(n, 0.55, 72)
        v[i : i + k] = v[i - 1]
        inj.append(("stuck", int(t[i]), int(t[i + k - 1])))
        dec = 1
    elif name == "stuck_queue":
        steps = np.where(rng.random(n) < 0.3, rng.choice([-1, 1], n), 0)
        v = np.zeros(n)
        q = 3.0
        for j in range(n):  # a bounded random walk of a queue length
            q = min(max(q + steps[j], 0.0), 8.0)
            v[j] = q
        i, k = _span(n, 0.45, 60)
        v[i : i + k] = v[i - 1]
        inj.append(("stuck", int(t[i]), int(t[i + k - 1])))
        dec = 0
    elif name == "flat_step":
        v = np.full(n, 12.0)
        for j in rng.integers(0, n, max(n // 288, 1)):  # rare benign 1-sample blips of one step
            v[j] = 12.5
        i, k = _span(n, 0.6, 96)
        v[i : i + k] = 7.0
        inj.append(("level_shift", int(t[i]), int(t[i + k - 1])))
        dec = 1
    else:  # flat_constant: nothing ever happens
        v, dec = np.full(n, 1.0), 1
    return _Series("flatStuck", name, t, v, dec, inj)


# --- missing data -------------------------------------------------------------------------------


def _missing(rng: np.random.Generator, name: str, n: int) -> _Series:
    t = np.arange(n, dtype=np.int64) * STEP_S
    level = 200.0 + 80.0 * _daily(t, 13.0)
    v = level + rng.normal(0, 8.0, n)
    inj: list[tuple[str, int, int]] = []
    if name == "gaps_spike_shift":
        i = _at(n, 0.4)
        v[i] += 150.0
        inj.append(("spike", int(t[i]), int(t[i])))
        i = _at(n, 0.7)
        v[i:] += 90.0
        inj.append(("level_shift", int(t[i]), int(t[-1])))
    elif name == "gaps_ramp":
        i, k = _span(n, 0.6, 576)
        v[i : i + k] += np.linspace(0, 160.0, k)
        v[i + k :] += 160.0
        inj.append(("ramp", int(t[i]), int(t[-1])))
    keep = np.ones(n, dtype=bool)
    near = np.zeros(n, dtype=bool)
    for _, a, _b in inj:
        near[np.abs(t - a) <= DAY // 2] = True
    placed = 0
    for _ in range(40):  # gaps of 2-8 hours, at least half a day from an anomaly's start
        if placed == 4:
            break
        g0, g = int(rng.integers(int(0.05 * n), n - 1)), int(rng.integers(24, 97))
        g = min(g, max(n // 20, 1))
        if not near[g0 : g0 + g].any() and keep[g0 : g0 + g].all():
            keep[g0 : g0 + g] = False
            placed += 1
    return _Series("missingData", name, t[keep], np.round(v[keep], 2), 2, inj)


# --- multi-sensor machines ----------------------------------------------------------------------

#: fault type -> {sensor: (relative change of the level, noise multiplier)}
FAULTS: dict[str, dict[str, tuple[float, float]]] = {
    "bearing_wear": {"vibration": (1.2, 2.5), "temperature": (0.04, 1.0), "current": (0.05, 1.0)},
    "valve_leak": {"pressure": (-0.18, 1.0), "flow": (0.07, 1.0), "current": (0.03, 1.0)},
    "blockage": {"flow": (-0.3, 1.0), "pressure": (0.12, 1.0), "current": (0.06, 1.0),
                 "temperature": (0.03, 1.0)},
    "cavitation": {"vibration": (0.3, 3.0), "flow": (-0.05, 3.0), "pressure": (-0.04, 3.0)},
}  # fmt: skip


def _machine(rng: np.random.Generator, machine: str, hours: float) -> list[_Series]:
    step = 10
    n = max(int(hours * 3600 / step), 200)
    t = np.arange(n, dtype=np.int64) * step
    # load: duty cycles of 20-40 minutes between two operating points, smoothed
    load = np.empty(n)
    j, hi = 0, True
    while j < n:
        k = int(rng.integers(120, 241))
        load[j : j + k] = rng.uniform(0.65, 0.85) if hi else rng.uniform(0.3, 0.45)
        j, hi = j + k, not hi
    kernel = np.ones(18) / 18
    load = np.convolve(np.pad(load, (17, 0), mode="edge"), kernel, mode="valid")
    load += np.cumsum(rng.normal(0, 0.002, n)).clip(-0.05, 0.05)
    lag = np.empty(n)  # temperature follows load with a ~10-minute time constant
    a, x = step / 600.0, load[0]
    for j in range(n):
        x += a * (load[j] - x)
        lag[j] = x
    levels = {
        "temperature": 38.0 + 25.0 * lag,
        "pressure": 2.0 + 1.6 * load,
        "flow": 18.0 + 30.0 * load,
        "vibration": 0.4 + 0.35 * load,
        "current": 4.0 + 11.0 * load,
    }
    noise_sd = {
        "temperature": 0.15,
        "pressure": 0.02,
        "flow": 0.35,
        "vibration": 0.03,
        "current": 0.12,
    }
    change = {s: np.zeros(n) for s in SENSORS}
    spread = {s: np.ones(n) for s in SENSORS}
    faults: list[tuple[str, int, int, tuple[str, ...]]] = []
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    n_faults = 3 if n >= 1200 else 1
    slots = np.linspace(0.3, 0.92, n_faults + 1)
    for f in range(n_faults):
        typ = kinds[f % len(kinds)]
        k = int(rng.integers(12, 121))  # 2-20 minutes
        k = min(k, int((slots[f + 1] - slots[f]) * n) - 1)
        i = int(rng.uniform(slots[f], slots[f + 1]) * n)
        i = min(i, int(slots[f + 1] * n) - k)
        ramp = np.minimum(np.arange(k) / 3.0, 1.0)  # onset within 30 s
        for s, (rel, sd) in FAULTS[typ].items():
            change[s][i : i + k] += rel * ramp
            spread[s][i : i + k] = sd
        faults.append((typ, int(t[i]), int(t[i + k - 1]), tuple(FAULTS[typ])))
    out = []
    for s, dec in SENSORS.items():
        noise = rng.normal(0, noise_sd[s], n)
        if s == "vibration":
            noise = np.abs(noise) + 0.02 * rng.standard_t(3, n).clip(-10, 10)
        v = levels[s] * (1.0 + change[s]) + noise * spread[s]
        inj = [(typ, a, b) for typ, a, b, moved in faults if s in moved]
        out.append(_Series("machineSensors", f"{machine}.{s}", t, np.round(v, dec), dec, inj, True))
    return out


# --- writing ------------------------------------------------------------------------------------


def _stamp(seconds: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(START + seconds.astype("timedelta64[s]"), unit="s")
    return np.char.replace(text, "T", " ")


def _iso(seconds: int) -> str:
    return str(_stamp(np.array([seconds], dtype=np.int64))[0])


def _windows(s: _Series) -> list[list[str]]:
    """NAB windows (or, for ``exact`` series, the anomaly segments) as timestamp strings."""
    if not s.anomalies:
        return []
    n = s.t.size
    if s.exact:
        spans = [(int(np.searchsorted(s.t, a)), int(np.searchsorted(s.t, b, "right")) - 1)
                 for _, a, b in s.anomalies]  # fmt: skip
    else:
        half = int(0.1 * n / len(s.anomalies)) // 2
        spans = []
        for _, a, _b in s.anomalies:
            r = min(int(np.searchsorted(s.t, a)), n - 1)
            spans.append((max(0, r - half), min(n - 1, r + half)))
    spans.sort()
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [[f"{x}.000000" for x in _stamp(s.t[[lo, hi]])] for lo, hi in merged]


def _generate(seed: int, scale: float) -> list[_Series]:
    out: list[_Series] = []
    for k, (kind, (gen, names)) in enumerate(_CLOUD.items()):
        for j, name in enumerate(names):
            rng = np.random.default_rng([seed, k, j])
            v, inj, dec = gen(rng, name, _rows(12, scale))
            out.append(_regular(kind, name, v, inj, dec))
    k = KINDS.index("burstyCounts")
    for j, name in enumerate(("counts_surges", "counts_drop", "counts_benign")):
        out.append(_counts(np.random.default_rng([seed, k, j]), name, _rows(28, scale)))
    k = KINDS.index("trafficSensor")
    for j, name in enumerate(("occupancy_a", "speed_b", "traveltime_c")):
        out.append(_traffic(np.random.default_rng([seed, k, j]), name, _rows(14, scale)))
    k = KINDS.index("flatStuck")
    for j, name in enumerate(("stuck_temperature", "stuck_queue", "flat_step", "flat_constant")):
        out.append(_flat(np.random.default_rng([seed, k, j]), name, _rows(7, scale)))
    k = KINDS.index("missingData")
    for j, name in enumerate(("gaps_spike_shift", "gaps_ramp", "gaps_benign")):
        out.append(_missing(np.random.default_rng([seed, k, j]), name, _rows(14, scale)))
    k = KINDS.index("machineSensors")
    for j in range(3):
        out += _machine(np.random.default_rng([seed, k, j]), f"machine{j + 1}", 5.0 * scale)
    return out


def write_corpus(directory: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Write the corpus under ``directory`` and return it; identical bytes for the same arguments.

    Parameters
    ----------
    directory : Path
        Created if missing; ``data/``, ``windows.json`` and ``anomalies.json`` are (over)written.
    seed : int
        Seeds every series (each from its own stream, so series do not depend on each other).
    scale : float
        Length factor of every series (1.0: ~138k rows, which backtest in about 10 s).
    """
    if not scale > 0:
        raise ValueError("scale must be > 0")
    root = Path(directory)
    windows: dict[str, list[list[str]]] = {}
    anomalies: dict[str, list[dict[str, str]]] = {}
    for s in _generate(seed, scale):
        rel = f"{s.kind}/{s.name}.csv"
        dest = root / "data" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        values = np.round(s.v, s.decimals)
        pd.DataFrame({"timestamp": _stamp(s.t), "value": values}).to_csv(
            dest, index=False, float_format=f"%.{s.decimals}f"
        )
        windows[rel] = _windows(s)
        anomalies[rel] = [
            {"type": typ, "start": _iso(a), "end": _iso(b)} for typ, a, b in s.anomalies
        ]
    (root / "windows.json").write_text(json.dumps(windows, indent=2) + "\n")
    (root / "anomalies.json").write_text(json.dumps(anomalies, indent=2) + "\n")
    return root
