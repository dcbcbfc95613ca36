"""A telemetry simulator: seasonal host metrics with injected anomalies, reproducible by seed.

Each host reports ``cpu_load`` (percent), ``mem_used_pct``, ``latency_p99`` (seconds) and
``req_rate`` (per second) every ``interval`` seconds of event time. Values follow a daily
cycle plus noise; with probability ``anomaly_rate`` per host and tick an anomaly starts
(``cpu_spike``, ``latency_spike``, ``traffic_drop``, ``memory_leak``) and lasts a few ticks.
The injected anomalies are kept in :attr:`Simulator.anomalies` as ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import orjson

from core.records import iso_z

METRICS = ("cpu_load", "mem_used_pct", "latency_p99", "req_rate")
UNITS = ("percent", "percent", "s", "per_s")
KINDS = ("cpu_spike", "latency_spike", "traffic_drop", "memory_leak")
DAY = 86400.0


@dataclass
class Anomaly:
    host: str
    kind: str
    start: float
    end: float


@dataclass
class Simulator:
    hosts: int = 10
    tenant: str = "demo"
    seed: int = 42
    interval: float = 10.0
    start: float = 0.0
    anomaly_rate: float = 0.002
    anomalies: list[Anomaly] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        h = self.hosts
        self.names = [f"host-{i:03d}" for i in range(h)]
        self.base = self.rng.uniform(20, 45, h)  # cpu baseline
        self.amp = self.rng.uniform(10, 25, h)  # daily amplitude
        self.phase = self.rng.uniform(-0.1, 0.1, h) * DAY
        self.mem = self.rng.uniform(40, 70, h)
        self.traffic = self.rng.uniform(50, 500, h)
        self._active: list[tuple[int, str, int]] = []  # (host, kind, ticks left)
        self.tick = 0

    def values(self, ts: float) -> np.ndarray:
        """Values of every (host, metric) at event time ``ts``: shape (hosts, 4)."""
        r = self.rng
        h = self.hosts
        day = np.sin(2 * math.pi * (ts + self.phase) / DAY - math.pi / 2) * 0.5 + 0.5
        cpu = self.base + self.amp * day + r.normal(0, 2.0, h)
        mem = self.mem + r.normal(0, 0.5, h)
        lat = 0.08 + 0.07 * day + np.abs(r.normal(0, 0.01, h))
        req = self.traffic * (0.4 + 0.6 * day) * r.normal(1, 0.03, h)
        v = np.stack([cpu, mem, lat, req], axis=1)
        starts = np.flatnonzero(r.random(h) < self.anomaly_rate)
        for i in starts:
            if any(a[0] == i for a in self._active):
                continue
            kind = KINDS[int(r.integers(len(KINDS)))]
            dur = int(r.integers(3, 12))
            self._active.append((int(i), kind, dur))
            self.anomalies.append(Anomaly(self.names[i], kind, ts, ts + dur * self.interval))
        still = []
        for i, kind, left in self._active:
            if kind == "cpu_spike":
                v[i, 0] = r.uniform(92, 99)
            elif kind == "latency_spike":
                v[i, 2] = r.uniform(2.5, 5.0)
            elif kind == "traffic_drop":
                v[i, 3] *= 0.05
            elif kind == "memory_leak":
                v[i, 1] = min(99.5, v[i, 1] + (12 - left) * 3.5)
            if left > 1:
                still.append((i, kind, left - 1))
        self._active = still
        v[:, 0] = np.clip(v[:, 0], 0, 100)
        v[:, 1] = np.clip(v[:, 1], 0, 100)
        return v

    def events(self, ticks: int | None = None) -> Iterator[list[bytes]]:
        """One list of encoded events per tick (``hosts × 4`` events)."""
        dumps = orjson.dumps
        while ticks is None or self.tick < ticks:
            ts = self.start + self.tick * self.interval
            v = self.values(ts).tolist()
            iso = iso_z(ts, "milliseconds")
            out = []
            for i, name in enumerate(self.names):
                row = v[i]
                for k, metric in enumerate(METRICS):
                    out.append(
                        dumps(
                            {
                                "event_id": (
                                    f"sim-{self.seed}-{self.tenant}-{name}-{metric}"
                                    f"-{int(ts * 1000)}"
                                ),
                                "tenant_id": self.tenant,
                                "host": name,
                                "metric": metric,
                                "value": round(row[k], 4),
                                "ts_event": iso,
                                "unit": UNITS[k],
                                "tags": {"source": "simulator"},
                            }
                        )
                    )
            self.tick += 1
            yield out
