"""Combine component detectors into one score, a severity and an explanation.

:class:`Ensemble` owns the detector set used by the detect stage, backtests and training; its
:meth:`Ensemble.process` is the one call per batch of closed windows: it scores every window with
every component *before* learning it (prequential, no look-ahead), combines, applies the alert
cooldown, then learns.  Windows of the same series in one batch are processed in order (rounds).

Combination: ``score = 1 - prod_i (1 - w_i s_i)`` ("noisy-or" of weighted component scores,
``combine="noisy_or"``), or the weighted ``max`` / ``mean``.  After a window scores
``>= cooldown_level``, the next ``cooldown`` windows of the series are multiplied by
``cooldown_factor`` (an alert that is already open should not fire again; NAB-style scoring also
rewards only the first detection).  With ``calibrate=True`` each component's raw score is
first replaced by its per-series tail rarity (:mod:`models.likelihood`).

Record gate (``record_halflife > 0``): a component's score only counts fully when the window is
at least as surprising as the worst one the series has produced in its recent memory.  Per series
and component the ensemble keeps ``M``, a running maximum of past surprises that decays by half
every ``record_halflife`` windows, and multiplies the score by ``min(1, u / max(M, floor))``, with
``u = s / (1 - s)`` the surprise on the score's own log-rarity scale (``s = u / (1 + u)``, see
:func:`models.baselines.tail_score`).  A series that already produced big spikes (a load balancer,
a bursty ad exchange) has its smaller spikes damped, while a quiet series keeps full scores on its
first deviation and any series keeps them on a new record -- the per-series "is this worse than
what we have seen lately" that operators apply by hand (and NAB rewards only the first detection).
State: one float per series and component.

Severity: ``ok`` / ``warning`` (``>= warning``) / ``critical`` (``>= critical``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from models.base import Detector, VectorDetector, _grow, rounds, take
from models.episodes import OpeningGate
from models.likelihood import ScoreLikelihood

__all__ = ["SEVERITIES", "Ensemble", "EnsembleResult"]

#: Severity labels indexed by the codes in :attr:`EnsembleResult.severity`.
SEVERITIES: tuple[str, ...] = ("ok", "warning", "critical")


@dataclass
class EnsembleResult:
    """Scores of one batch of windows (row order of the input ``X``).

    Attributes
    ----------
    score : numpy.ndarray
        float64 (n,), in [0, 1].
    severity : numpy.ndarray
        int8 (n,), index into :data:`SEVERITIES`.
    components : dict of str to numpy.ndarray
        Component scores, float64 (n,) each.
    expected, scale : numpy.ndarray
        Expected value of the window mean and its typical deviation, from the highest-scoring
        component that can tell (NaN when none can).
    actual : numpy.ndarray
        The window mean.
    confidence : numpy.ndarray
        float64 (n,) in [0, 1]: how much of the series' own history backs the score
        (windows learnt / ``min_windows``); below 1 the series is *warming* and is scored
        partly from the population of similar series.
    """

    score: np.ndarray
    severity: np.ndarray
    components: dict[str, np.ndarray]
    expected: np.ndarray
    scale: np.ndarray
    actual: np.ndarray
    confidence: np.ndarray

    @property
    def warming(self) -> np.ndarray:
        """bool (n,): the series had less than ``min_windows`` windows of its own history."""
        return self.confidence < 1.0

    def explain(self, i: int, fired: float = 0.5) -> dict[str, Any]:
        """Explanation of row ``i``: components that fired, actual vs expected, top components."""
        comps = {k: float(v[i]) for k, v in self.components.items()}
        top = sorted(comps.items(), key=lambda kv: -kv[1])
        return {
            "score": float(self.score[i]),
            "severity": SEVERITIES[int(self.severity[i])],
            "fired": [k for k, v in top if v >= fired],
            "actual": float(self.actual[i]),
            "expected": None if np.isnan(self.expected[i]) else float(self.expected[i]),
            "typical_deviation": None if np.isnan(self.scale[i]) else float(self.scale[i]),
            "top": [{"component": k, "score": round(v, 4)} for k, v in top[:3]],
            "confidence": round(float(self.confidence[i]), 4),
            "warming": bool(self.confidence[i] < 1.0),
        }


class Ensemble:
    """The detector set plus the combination rule.

    Parameters
    ----------
    components : dict of str to Detector
        Named component detectors.
    weights : dict of str to float, optional
        Weight in [0, 1] per component (default 1).
    combine : {"noisy_or", "max", "mean"}
    warning, critical : float
        Severity thresholds on the combined score.
    cooldown : int
        Windows after a firing window during which scores are damped (0 = off).
    cooldown_level, cooldown_factor : float
        Score that starts a cooldown; multiplier applied during it.
    likelihood, short_alpha, long_alpha, likelihood_decades : bool, float
        Optional HTM-style post-processing of the *combined* score (off by default).
    min_windows : int
        Windows a series learns before the likelihood/calibration scores it.
    calibrate : bool
        Calibrate every component's raw score per series against that series' own score
        history (:class:`models.likelihood.ScoreLikelihood`) before combining, so that one
        threshold means the same rarity on every series.
    calib_alpha, calib_floor, calib_decades : float
        Parameters of that calibration (memory, standard-deviation floor, score-0.5 rarity).
    record_halflife : float
        Half-life in windows of the record gate's running maximum (0 = no record gate).
    record_floor : float
        Floor of the running maximum, in decades of rarity (``u * calib_decades``): surprises
        below ``10**-record_floor`` never damp later scores.

    Examples
    --------
    >>> import numpy as np
    >>> from models.baselines import EWMAZScore
    >>> ens = Ensemble({"ewma": EWMAZScore(alpha=0.1, warmup=3)})
    >>> X = {"series": np.zeros(30, np.int64), "mean": np.r_[np.ones(29), 50.0]}
    >>> X["mean"][::2] += 0.1
    >>> res = ens.process(X)
    >>> float(res.score[-1]) > 0.8, res.explain(29)["fired"]
    (True, ['ewma'])
    """

    def __init__(
        self,
        components: dict[str, Detector],
        weights: dict[str, float] | None = None,
        combine: str = "noisy_or",
        warning: float = 0.5,
        critical: float = 0.8,
        cooldown: int = 0,
        cooldown_level: float = 0.8,
        cooldown_factor: float = 0.5,
        likelihood: bool = False,
        short_alpha: float = 0.2,
        long_alpha: float = 0.001,
        likelihood_decades: float = 4.0,
        min_windows: int = 100,
        calibrate: bool = False,
        calib_alpha: float = 0.001,
        calib_floor: float = 0.05,
        calib_decades: float = 4.0,
        record_halflife: float = 0.0,
        record_floor: float = 1.0,
        open_horizon: int = 100,
        open_blocks: int = 10,
        seasonal_cap: float = 0.0,
        seasonal: str = "seasonal",
        capped: tuple[str, ...] = ("ewma_slow", "ewma_value", "ewma_diff", "mad"),
    ) -> None:
        if not components:
            raise ValueError("an ensemble needs at least one component")
        if combine not in ("noisy_or", "max", "mean"):
            raise ValueError(f"unknown combine rule {combine!r}")
        weights = dict(weights or {})
        unknown = set(weights) - set(components)
        if unknown:
            raise ValueError(f"weights for unknown components: {sorted(unknown)}")
        if any(not 0.0 <= w <= 1.0 for w in weights.values()):
            raise ValueError("weights must be in [0, 1]")
        if not 0.0 <= warning <= critical <= 1.0:
            raise ValueError("need 0 <= warning <= critical <= 1")
        if cooldown < 0 or not 0.0 <= cooldown_factor <= 1.0:
            raise ValueError("cooldown must be >= 0 and cooldown_factor in [0, 1]")
        self.components = dict(components)
        self.weights = {k: float(weights.get(k, 1.0)) for k in components}
        self.combine = combine
        self.warning, self.critical = float(warning), float(critical)
        self.cooldown = int(cooldown)
        self.cooldown_level, self.cooldown_factor = float(cooldown_level), float(cooldown_factor)
        self._left = np.zeros(0)  # cooldown windows left per series
        if not (0 < short_alpha < 1 and 0 < long_alpha < 1 and likelihood_decades > 0):
            raise ValueError("short_alpha, long_alpha in (0, 1) and likelihood_decades > 0")
        self.likelihood = bool(likelihood)
        self.short_alpha, self.long_alpha = float(short_alpha), float(long_alpha)
        self.likelihood_decades, self.min_windows = float(likelihood_decades), int(min_windows)
        # per-series statistics of the raw combined score (anomaly likelihood)
        self._lk = np.zeros((0, 4))  # n, short mean, long mean, long var
        # per-component calibration of raw scores against each series' own score history
        self.calibrate = bool(calibrate)
        self.calib_alpha, self.calib_floor = float(calib_alpha), float(calib_floor)
        self.calib_decades = float(calib_decades)
        self._cal = {
            k: ScoreLikelihood(calib_alpha, calib_floor, calib_decades, self.min_windows)
            for k in self.components
        }
        if record_halflife < 0 or record_floor < 0:
            raise ValueError("record_halflife and record_floor must be >= 0")
        self.record_halflife, self.record_floor = float(record_halflife), float(record_floor)
        self._rec = {k: np.zeros(0) for k in self.components}  # decayed max surprise per series
        self._count = np.zeros(0)  # windows learnt per series (confidence / warming)
        if seasonal_cap < 0:
            raise ValueError("seasonal_cap must be >= 0")
        self.seasonal_cap, self.seasonal = float(seasonal_cap), seasonal
        self.capped = tuple(capped)
        # the alert layer's opening rule (models.episodes); configuration only, no state here
        OpeningGate(open_horizon, open_blocks)  # validates
        self.open_horizon, self.open_blocks = int(open_horizon), int(open_blocks)

    # ------------------------------------------------------------------ scoring
    def _combine(self, comp: dict[str, np.ndarray]) -> np.ndarray:
        ws = [(self.weights[k], v) for k, v in comp.items()]
        if self.combine == "max":
            return np.max([w * v for w, v in ws], axis=0)
        if self.combine == "mean":
            return cast(np.ndarray, sum(w * v for w, v in ws) / max(sum(w for w, _ in ws), 1e-12))
        keep = np.ones_like(ws[0][1])
        for w, v in ws:
            keep = keep * (1.0 - w * v)
        return 1.0 - keep

    def _round(self, X: dict[str, np.ndarray], learn: bool):
        s = np.asarray(X["series"], np.int64)
        comp = {k: d.score_many(X) for k, d in self.components.items()}
        if self.calibrate:
            raw_comp = comp
            comp = {k: self._cal[k].score(s, v) for k, v in raw_comp.items()}
            if learn:
                for k, v in raw_comp.items():
                    self._cal[k].learn(s, v)
        if self.record_halflife > 0:
            comp = self._record(s, comp, learn)
        if self.seasonal_cap > 0:
            comp = self._cap_by_season(X, comp)
        raw = np.clip(self._combine(comp), 0.0, 1.0)
        if self.likelihood:
            raw = self._likelihood(s, raw, learn)
        if self.cooldown:
            self._left = _grow(self._left, int(s.max()) + 1, 0.0)
            left = self._left[s]
            score = np.where(left > 0, raw * self.cooldown_factor, raw)
            if learn:
                fire = score >= self.cooldown_level
                self._left[s] = np.where(fire, self.cooldown, np.maximum(left - 1, 0))
        else:
            score = raw
        # expected value and band: from the highest-scoring component that has one (every
        # component with history has one, so a window lacks a band only on a series' first)
        exp = np.full(s.size, np.nan)
        sc = np.full(s.size, np.nan)
        best = np.full(s.size, -np.inf)
        for k, d in self.components.items():
            # a component modelling the window mean itself (not its change) can tell
            mean_model = getattr(d, "feature", "mean") == "mean" and not getattr(d, "diff", False)
            if hasattr(d, "expected_many") and mean_model:
                e, sd = d.expected_many(X)
                # compared to 1e-9: a last-bit difference of two near-equal scores (a batch
                # split changes summation order) must not switch the expectation shown
                c = np.round(comp[k], 9)
                better = (c > best) & np.isfinite(e)
                exp, sc = np.where(better, e, exp), np.where(better, sd, sc)
                best = np.where(better, c, best)
        self._count = _grow(self._count, int(s.max()) + 1, 0.0)
        conf = np.minimum(self._count[s] / max(self.min_windows, 1), 1.0)
        if learn:
            for d in self.components.values():
                d.learn_many(X)
            self._count[s] += 1.0
        return score, comp, exp, sc, conf

    def _cap_by_season(self, X: dict[str, np.ndarray], comp: dict[str, np.ndarray]):
        """Where the seasonal profile knows the window's slot, cap the non-seasonal level
        components at ``seasonal_cap`` times its score: what happens every night at 02:00 (a
        batch job, a backup) is no anomaly however far it is from the all-day level."""
        det = self.components.get(self.seasonal)
        if det is None or not hasattr(det, "ready_many"):
            return comp
        ready = det.ready_many(X)
        cap = self.seasonal_cap * comp[self.seasonal]
        return {
            k: np.where(ready, np.minimum(v, cap), v) if k in self.capped else v
            for k, v in comp.items()
        }

    def _record(self, s: np.ndarray, comp: dict[str, np.ndarray], learn: bool):
        """Damp component scores that do not exceed the series' decayed record surprise."""
        keep = 0.5 ** (1.0 / self.record_halflife)
        floor = self.record_floor / self.calib_decades
        out = {}
        for k, v in comp.items():
            rec = self._rec[k] = _grow(self._rec[k], int(s.max()) + 1, 0.0)
            u = v / np.maximum(1.0 - v, 1e-12)
            m = rec[s]
            out[k] = v * np.minimum(1.0, u / np.maximum(m, floor))
            if learn:
                rec[s] = np.maximum(u, m * keep)
        return out

    def _likelihood(self, s: np.ndarray, raw: np.ndarray, learn: bool) -> np.ndarray:
        """Calibrate ``raw`` per series: how unusual is its short-term average (HTM-style)."""
        from models.baselines import tail_score

        self._lk = _grow(self._lk, int(s.max()) + 1, 0.0)
        n, sm, lm, lv = self._lk[s].T
        a_s = np.maximum(self.short_alpha, 1.0 / (n + 1))
        sm_new = sm + a_s * (raw - sm)
        sd = np.sqrt(lv) + 1e-3
        z = np.maximum(sm_new - lm, 0.0) / sd
        out = np.where(n >= self.min_windows, tail_score(z, self.likelihood_decades), 0.0)
        if learn:
            a_l = np.maximum(self.long_alpha, 1.0 / (n + 1))
            d = raw - lm
            self._lk[s, 0] = n + 1
            self._lk[s, 1] = sm_new
            self._lk[s, 2] = lm + a_l * d
            self._lk[s, 3] = (1 - a_l) * (lv + a_l * d * d)
        return out

    def process(
        self, X: dict[str, np.ndarray], learn: bool | np.ndarray = True, on_round=None
    ) -> EnsembleResult:
        """Score the windows ``X`` (then learn them when ``learn``); see :class:`EnsembleResult`.

        ``learn`` may be a bool per window: windows where it is false (inside a maintenance
        window) are scored like the others but not learnt, after the batch's learnt windows.
        ``on_round(done, total)`` is called after each round (progress reporting).
        """
        s = np.asarray(X["series"], np.int64)
        n = s.size
        score = np.zeros(n)
        exp, sc = np.full(n, np.nan), np.full(n, np.nan)
        comp = {k: np.zeros(n) for k in self.components}
        conf = np.zeros(n)
        if isinstance(learn, np.ndarray):
            keep = np.flatnonzero(learn)
            skip = np.flatnonzero(~learn)
            parts = [(keep[r], True) for r in rounds(s[keep])]
            if skip.size:
                parts.append((skip, False))
        else:
            parts = [(r, learn) for r in (rounds(s) if learn else [np.arange(n)])]
        for r, lr in parts:
            Xr = X if r.size == n else take(X, r)
            sr, cr, er, scr, cfr = self._round(Xr, lr)
            score[r], exp[r], sc[r], conf[r] = sr, er, scr, cfr
            for k in comp:
                comp[k][r] = cr[k]
            if on_round is not None:
                on_round(int(r.size), n)
        sev = np.zeros(n, np.int8)
        sev[score >= self.warning] = 1
        sev[score >= self.critical] = 2
        actual = np.asarray(X.get("mean", np.full(n, np.nan)), np.float64)
        return EnsembleResult(score, sev, comp, exp, sc, actual, conf)

    def opening_gate(self) -> OpeningGate:
        """A fresh alert-opening gate with this ensemble's rule (:mod:`models.episodes`)."""
        return OpeningGate(self.open_horizon, self.open_blocks)

    def score_many(self, X: dict[str, np.ndarray]) -> np.ndarray:
        """Combined score without learning or touching the cooldown state."""
        return self.process(X, learn=False).score

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Picklable checkpoint: configuration plus every component's state."""
        return {
            "config": {
                "weights": dict(self.weights),
                "combine": self.combine,
                "warning": self.warning,
                "critical": self.critical,
                "cooldown": self.cooldown,
                "cooldown_level": self.cooldown_level,
                "cooldown_factor": self.cooldown_factor,
                "likelihood": self.likelihood,
                "short_alpha": self.short_alpha,
                "long_alpha": self.long_alpha,
                "likelihood_decades": self.likelihood_decades,
                "min_windows": self.min_windows,
                "calibrate": self.calibrate,
                "calib_alpha": self.calib_alpha,
                "calib_floor": self.calib_floor,
                "calib_decades": self.calib_decades,
                "record_halflife": self.record_halflife,
                "record_floor": self.record_floor,
                "open_horizon": self.open_horizon,
                "open_blocks": self.open_blocks,
                "seasonal_cap": self.seasonal_cap,
                "seasonal": self.seasonal,
                "capped": self.capped,
            },
            "likelihood_state": self._lk.copy(),
            "calibration_state": {k: c.to_state() for k, c in self._cal.items()},
            "record_state": {k: r.copy() for k, r in self._rec.items()},
            "components": {
                k: {"class": type(d).__name__, "state": d.to_state()}
                for k, d in self.components.items()
            },
            "cooldown_left": self._left.copy(),
            "count": self._count.copy(),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], registry: dict[str, type[Detector]] | None = None
    ) -> Ensemble:
        """Rebuild from :meth:`to_state`; ``registry`` maps class names to detector classes."""
        reg = dict(default_registry())
        reg.update(registry or {})
        comps: dict[str, Detector] = {}
        for k, c in state["components"].items():
            if c["class"] not in reg:
                raise ValueError(f"unknown detector class {c['class']!r}")
            comps[k] = reg[c["class"]].from_state(c["state"])
        ens = cls(comps, **state["config"])
        ens._left = np.array(state["cooldown_left"], np.float64)
        ens._lk = np.array(state["likelihood_state"], np.float64).reshape(-1, 4)
        for k, c in state.get("calibration_state", {}).items():
            ens._cal[k] = ScoreLikelihood.from_state(c)
        for k, r in state.get("record_state", {}).items():
            ens._rec[k] = np.array(r, np.float64)
        if "count" in state:
            ens._count = np.array(state["count"], np.float64)
        elif ens._cal:  # checkpoints before the count: the calibration counts the same windows
            ens._count = next(iter(ens._cal.values())).state[:, 0].copy()
        return ens

    def clone(self) -> Ensemble:
        return copy.deepcopy(self)


def default_registry() -> dict[str, type[Detector]]:
    """Detector classes known to :meth:`Ensemble.from_state`."""
    from models import baselines, batch, context, hostcorr, online

    out: dict[str, type[Detector]] = {}
    for mod in (baselines, context, hostcorr, online, batch):
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, Detector):
                out[name] = obj
    return out


def is_vectorized(det: Detector) -> bool:
    """True when ``det`` scores batches without a Python loop per window."""
    return isinstance(det, VectorDetector)
