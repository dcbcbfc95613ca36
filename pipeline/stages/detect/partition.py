"""Partition state: everything the detect stage keeps for one input partition, and its
checkpoint format.

A :class:`PartitionState` holds the series registry (``(tenant, host, metric) -> int code``,
a metric family per ``(tenant, metric)`` and a host code per ``(tenant, host)``), the
:class:`features.windows.WindowAggregator`, the :class:`models.ensemble.Ensemble`, the
threshold-rule tracker (:class:`~pipeline.stages.detect.rule_alerts.RuleAlerts`) and the
anomaly-alert tracker (:class:`~pipeline.stages.detect.score_alerts.ScoreAlerts`).

Checkpoints (:meth:`PartitionState.dumps`, :meth:`PartitionState.loads`) are a pickled dict of
plain data and numpy arrays (:meth:`PartitionState.to_state`). Versions:

1. (no ``version`` key) written before the detect package: the rule tracker's series were
   pickled as ``pipeline.stages.detect.SeriesAlert`` objects. :func:`load_state` maps that
   class path onto :class:`~pipeline.stages.detect.rule_alerts.SeriesAlert`.
2. ``version = 2``: the rule tracker's series as tuples (:meth:`RuleAlerts.to_state`); no class
   of this project is pickled, so moving code no longer breaks checkpoints.

The window aggregator's state carries a version of its own (:mod:`features.windows`).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from core.batch import MetricBatch, factorize
from features.windows import WindowAggregator
from models.ensemble import Ensemble
from models.presets import default_ensemble
from models.rules import RuleSet
from pipeline.stages.detect.rule_alerts import RuleAlerts, SeriesAlert
from pipeline.stages.detect.score_alerts import ScoreAlerts

#: version of :meth:`PartitionState.to_state` (see the module docstring)
STATE_VERSION = 2

#: class paths pickled by older checkpoints -> the class that reads them now
_MOVED = {("pipeline.stages.detect", "SeriesAlert"): SeriesAlert}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        moved = _MOVED.get((module, name))
        return moved if moved is not None else super().find_class(module, name)


def load_state(blob: bytes) -> dict:
    """A checkpoint blob's state dict, of any version (older class paths mapped)."""
    return _Unpickler(io.BytesIO(blob)).load()


class PartitionState:
    """Everything detect keeps for one input partition."""

    def __init__(
        self,
        rules: RuleSet,
        window_s: float,
        lateness_s: float,
        ensemble: Ensemble | None = None,
        idle_close_s: float | None = None,
    ) -> None:
        self.keys: dict[tuple[str, str, str], int] = {}
        self.names: list[tuple[str, str, str]] = []
        #: metric family per (tenant, metric): detectors share a family's prior and River model,
        #: so a family never spans tenants (one tenant's values cannot move another's baselines;
        #: checkpoints written when families were keyed by metric alone keep those codes)
        self.families: dict[tuple[str, str] | str, int] = {}
        self.family: list[int] = []
        self.hosts: dict[tuple[str, str], int] = {}
        self.host: list[int] = []
        self._host_codes = np.empty(0, np.int64)
        self.agg = WindowAggregator(
            window_s=window_s, allowed_lateness_s=lateness_s, idle_close_s=idle_close_s
        )
        self.ensemble = ensemble or default_ensemble()
        self.rule_alerts = RuleAlerts(rules)
        self.score_alerts = ScoreAlerts(gate=self.ensemble.opening_gate())

    def codes(self, b: MetricBatch) -> np.ndarray:
        """Series codes of a batch's events; new series are registered (per unique series)."""
        ut, ct = factorize(b.tenant_id)
        uh, ch = factorize(b.host)
        um, cm = factorize(b.metric)
        combo = (ct.astype(np.int64) * len(uh) + ch) * len(um) + cm
        uniq, inv = np.unique(combo, return_inverse=True)
        out = np.empty(uniq.size, np.int64)
        nh, nm = len(uh), len(um)
        for j, k in enumerate(uniq.tolist()):
            key = (ut[k // (nh * nm)], uh[(k // nm) % nh], um[k % nm])
            code = self.keys.get(key)
            if code is None:
                code = self.keys[key] = len(self.names)
                self.names.append(key)
                fam = self.families.setdefault((key[0], key[2]), len(self.families))
                self.family.append(fam)
                self.host.append(self.hosts.setdefault(key[:2], len(self.hosts)))
            out[j] = code
        return out[inv]

    def host_codes(self, series: np.ndarray) -> np.ndarray:
        """int64 host code (one per ``(tenant, host)``) of each series code."""
        if self._host_codes.size != len(self.host):
            self._host_codes = np.asarray(self.host, np.int64)
        return self._host_codes[series]

    def to_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "names": list(self.names),
            "families": dict(self.families),
            "family": list(self.family),
            "agg": self.agg.to_state(),
            "ensemble": self.ensemble.to_state(),
            "rule_alerts": self.rule_alerts.to_state(),
            "score_alerts": self.score_alerts.to_state(),
        }

    def dumps(self) -> bytes:
        """The checkpoint blob of this state."""
        return pickle.dumps(self.to_state(), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def loads(
        cls, blob: bytes, rules: RuleSet, idle_close_s: float | None = None
    ) -> PartitionState:
        """Back from a checkpoint blob of any version (see the module docstring)."""
        return cls.from_state(load_state(blob), rules, idle_close_s)

    @classmethod
    def from_state(
        cls, st: dict, rules: RuleSet, idle_close_s: float | None = None
    ) -> PartitionState:
        """Rebuild from :meth:`to_state`; ``idle_close_s`` is the running configuration's (it
        also applies to checkpoints written before event time was kept per host)."""
        version = st.get("version", 1)
        if version > STATE_VERSION:
            raise ValueError(
                f"detect state version {version} is newer than this code's ({STATE_VERSION})"
            )
        ps = cls.__new__(cls)
        ps.names = [tuple(n) for n in st["names"]]
        ps.keys = {n: i for i, n in enumerate(ps.names)}
        ps.families, ps.family = dict(st["families"]), list(st["family"])
        # host codes are derived from the names (checkpoints older than them restore too)
        ps.hosts, ps.host = {}, []
        for n in ps.names:
            ps.host.append(ps.hosts.setdefault(n[:2], len(ps.hosts)))
        ps._host_codes = np.empty(0, np.int64)
        ps.agg = WindowAggregator.from_state(
            st["agg"], host_of=np.asarray(ps.host, np.int64), idle_close_s=idle_close_s
        )
        ps.ensemble = Ensemble.from_state(st["ensemble"])
        ps.rule_alerts = RuleAlerts.from_state(st["rule_alerts"], rules)
        ps.score_alerts = ScoreAlerts.from_state(st["score_alerts"])
        return ps
