"""Static threshold rules: the operator's file, compiled to arrays for vectorized evaluation.

A rule maps a metric (optionally for one tenant) to warning/critical thresholds, a direction,
a ``for`` duration and a hysteresis. :meth:`RuleSet.levels` gives, for a batch, each event's
rule index and two severity levels (0 ok, 1 warning, 2 critical): ``up`` against the
thresholds and ``down`` against the thresholds moved back by the hysteresis. An alert opens
or escalates on ``up`` and clears only on ``down`` (see :mod:`pipeline.stages.detect`).

>>> rs = RuleSet.from_toml('[[rule]]\\nmetric="cpu_load"\\nwarning=80\\ncritical=90\\nhysteresis=5')
>>> import numpy as np
>>> idx, up, down = rs.levels(np.array(["t", "t", "t"], dtype=object),
...                           np.array(["cpu_load"] * 3, dtype=object), np.array([50., 86., 92.]))
>>> up.tolist(), down.tolist()
([0, 1, 2], [0, 2, 2])
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class ConfigError(ValueError):
    """The rules file is invalid; the message names the rule and the field."""


_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(v: object) -> float:
    """Seconds from ``"90s"``, ``"2m"``, ``"1h"`` or a number of seconds.

    >>> parse_duration("2m"), parse_duration(15)
    (120.0, 15.0)
    """
    if isinstance(v, bool):
        raise ConfigError(f"bad duration {v!r}")
    if isinstance(v, int | float):
        if v < 0:
            raise ConfigError(f"negative duration {v!r}")
        return float(v)
    m = _DUR.match(str(v))
    if not m:
        raise ConfigError(f"bad duration {v!r}: use e.g. '30s', '5m', '1h'")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True, slots=True)
class Rule:
    metric: str
    tenant: str | None
    warning: float
    critical: float
    direction: str
    for_s: float
    hysteresis: float

    @property
    def name(self) -> str:
        scope = f"{self.tenant}/" if self.tenant else ""
        return f"threshold:{scope}{self.metric}"

    def threshold(self, level: int) -> float:
        return self.critical if level == 2 else self.warning


class RuleSet:
    """Compiled rules. Immutable; reloading builds a new one.

    Examples
    --------
    A tenant's own rule for a metric takes precedence over the rule for every tenant; events of a
    metric without a rule get index ``len(rules)`` (they never alert):

    >>> rs = RuleSet.from_toml('''
    ... [[rule]]
    ... metric = "cpu_load"
    ... warning = 80
    ... [[rule]]
    ... metric = "cpu_load"
    ... tenant = "acme"
    ... warning = 95
    ... critical = 99
    ... ''')
    >>> rs.rule_index(np.array(["acme", "beta", "acme"], dtype=object),
    ...               np.array(["cpu_load", "cpu_load", "disk"], dtype=object)).tolist()
    [1, 0, 2]
    >>> [r.name for r in rs.rules], rs.rules[0].critical  # no critical: never critical
    (['threshold:cpu_load', 'threshold:acme/cpu_load'], inf)

    ``direction = "below"`` alerts on low values; ``for`` is parsed to seconds:

    >>> rs = RuleSet.from_toml('''
    ... [[rule]]
    ... metric = "disk_free_pct"
    ... warning = 20
    ... critical = 10
    ... direction = "below"
    ... for = "5m"
    ... ''')
    >>> tenant = np.array(["t"] * 3, dtype=object)
    >>> metric = np.array(["disk_free_pct"] * 3, dtype=object)
    >>> rs.levels(tenant, metric, np.array([50.0, 15.0, 5.0]))[1].tolist()  # up
    [0, 1, 2]
    >>> float(rs.for_s[0])
    300.0

    A rule that cannot be right is refused, with the rule and the field:

    >>> RuleSet.from_toml('[[rule]]\\nmetric="x"\\nwarning=10\\ncritical=20\\ndirection="below"')
    Traceback (most recent call last):
    ...
    models.rules.ConfigError: <rules> rule #1: critical must be beyond warning for direction below
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._index: dict[tuple[str | None, str], int] = {}
        for i, r in enumerate(rules):
            key = (r.tenant, r.metric)
            if key in self._index:
                raise ConfigError(f"duplicate rule for metric {r.metric!r} tenant {r.tenant!r}")
            self._index[key] = i
        sign = np.array([1.0 if r.direction == "above" else -1.0 for r in rules] + [1.0])
        inf = np.inf
        self._sign = sign
        self._warn = np.array([r.warning for r in rules] + [inf]) * sign
        self._crit = np.array([r.critical for r in rules] + [inf]) * sign
        self._hyst = np.array([r.hysteresis for r in rules] + [0.0])
        self.for_s = np.array([r.for_s for r in rules] + [0.0])

    @classmethod
    def from_toml(cls, text: str, source: str = "<rules>") -> RuleSet:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: {e}") from e
        rules = []
        for n, raw in enumerate(doc.get("rule", []), 1):
            rules.append(_parse_rule(raw, f"{source} rule #{n}"))
        return cls(rules)

    @classmethod
    def load(cls, path: Path) -> RuleSet:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read rules file {path}: {e}") from e
        return cls.from_toml(text, str(path))

    def rule_index(self, tenant: np.ndarray, metric: np.ndarray) -> np.ndarray:
        """Index of the rule for each event, ``len(rules)`` where none applies (int64)."""
        none = len(self.rules)
        if not self.rules or not len(metric):
            return np.full(len(metric), none, dtype=np.int64)
        ct, ut = pd.factorize(tenant)
        cm, um = pd.factorize(metric)
        uniq, inv = np.unique(ct.astype(np.int64) * len(um) + cm, return_inverse=True)
        idx = np.empty(len(uniq), dtype=np.int64)
        for j, k in enumerate(uniq.tolist()):
            t, m = ut[k // len(um)], um[k % len(um)]
            idx[j] = self._index.get((t, m), self._index.get((None, m), none))
        return idx[inv]

    def levels(
        self, tenant: np.ndarray, metric: np.ndarray, value: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per event: rule index, ``up`` level and ``down`` (hysteresis) level, int8."""
        idx = self.rule_index(tenant, metric)
        v = value * self._sign[idx]
        w, c, h = self._warn[idx], self._crit[idx], self._hyst[idx]
        up = (v >= w).astype(np.int8) + (v >= c)
        down = (v > w - h).astype(np.int8) + (v > c - h)
        return idx, up, down


def _parse_rule(raw: dict, where: str) -> Rule:
    known = {"metric", "tenant", "warning", "critical", "direction", "for", "hysteresis"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: 'metric' is required")
    direction = raw.get("direction", "above")
    if direction not in ("above", "below"):
        raise ConfigError(f"{where}: direction must be 'above' or 'below'")
    warn: Any = raw.get("warning")
    crit: Any = raw.get("critical")
    if warn is None and crit is None:
        raise ConfigError(f"{where}: give 'warning' and/or 'critical'")
    for k, v in (("warning", warn), ("critical", crit), ("hysteresis", raw.get("hysteresis", 0))):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"{where}: {k} must be a number")
    sgn = 1 if direction == "above" else -1
    inf = float("inf") * sgn
    warn = float(warn) if warn is not None else float(crit)
    crit = float(crit) if crit is not None else inf
    if sgn * crit < sgn * warn:
        raise ConfigError(f"{where}: critical must be beyond warning for direction {direction}")
    hyst = float(raw.get("hysteresis", 0.0))
    if hyst < 0:
        raise ConfigError(f"{where}: hysteresis must be >= 0")
    return Rule(
        metric=metric,
        tenant=raw.get("tenant"),
        warning=warn,
        critical=crit,
        direction=direction,
        for_s=parse_duration(raw.get("for", 0)),
        hysteresis=hyst,
    )


class RulesFile:
    """A rules file that reloads itself when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime = self.path.stat().st_mtime_ns
        self.rules = RuleSet.load(self.path)

    def poll(self) -> bool:
        """Reload if changed; returns True when a new rule set took effect.

        A broken edit raises :class:`ConfigError` and the previous rules stay in force.
        """
        mtime = self.path.stat().st_mtime_ns
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        self.rules = RuleSet.load(self.path)
        return True
