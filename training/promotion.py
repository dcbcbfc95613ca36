"""Candidate vs champion on the same labelled set; promotion, challenger, rollback.

Rule (:func:`decide`): a candidate must pass the guardrails -- alert volume
(``alerts_per_series_day <= max_alerts_per_series_day``, an alert being a run of consecutive
windows scoring ``>= alert_threshold``) and scoring latency (``latency_ms_per_10k <=
max_latency_ms_per_10k``).  With no champion, passing the guardrails is enough.  Otherwise
the candidate's ``metric`` (default the NAB standard score, 0-100) must beat the champion's by
at least ``margin``.  A candidate that passes the guardrails but is not better becomes the
``challenger`` (shadow scoring) unless ``challenger=False``.

This module decides; :mod:`registry.aliases` writes the outcome to MLflow (the tags it writes
are listed in :mod:`registry.tags`):

* on the candidate version: its decision (``promoted`` / ``rejected``), reason, metrics and the
  champion's (JSON), the champion version compared with (or ``none``), the policy, the time;
* on a promoted version: the champion it replaced (what ``registry.aliases.rollback`` restores);
* on the registered model: the last decision (JSON) and when each alias moved.

The operator overrides (``eventops models promote|rollback``) are :func:`registry.aliases.promote`
and :func:`registry.aliases.rollback`: alias moves without an evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from models.batch import BatchModel
from registry.aliases import alias_version, move_alias, promote, record_decision, tag_decision
from registry.client import client as make_client
from registry.loading import load_version
from registry.tags import CHALLENGER, CHAMPION
from training.datasets import WindowDataset
from training.evaluate import evaluate

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = [
    "Decision",
    "PromotionPolicy",
    "decide",
    "decide_replay",
    "record_replay_decision",
    "evaluate_and_promote",
    "evaluate_model",
    "evaluate_scores",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionPolicy:
    """When a candidate may replace the champion.

    Attributes
    ----------
    metric : str
        Key of :func:`evaluate_scores` compared (higher = better).
    margin : float
        Required improvement over the champion, in units of ``metric``.
    max_alerts_per_series_day : float
        Guardrail on alert volume at ``alert_threshold``.
    max_latency_ms_per_10k : float
        Guardrail on scoring time of a 10k-window batch.
    alert_threshold : float
        Score at which a window counts as alerting (the ensemble's ``warning`` level).
    """

    metric: str = "nab_standard"
    margin: float = 1.0
    max_alerts_per_series_day: float = 6.0
    max_latency_ms_per_10k: float = 500.0
    alert_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.margin < 0 or self.max_alerts_per_series_day <= 0:
            raise ValueError("margin must be >= 0 and max_alerts_per_series_day > 0")
        if self.max_latency_ms_per_10k <= 0 or not 0 < self.alert_threshold <= 1:
            raise ValueError("max_latency_ms_per_10k > 0 and alert_threshold in (0, 1]")


@dataclass
class Decision:
    """Outcome of one candidate evaluation."""

    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None
    challenger: bool = False
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def action(self) -> str:
        return "promoted" if self.promoted else "rejected"


# --- metrics ----------------------------------------------------------------------------------


def _alert_runs(ds: WindowDataset, scores: np.ndarray, thr: float) -> int:
    """Alert events: runs of consecutive windows of one series scoring ``>= thr``."""
    s = ds.X["series"]
    hot = scores >= thr
    if not hot.any():
        return 0
    order = np.lexsort((ds.X["start"], s))
    hs, ss = hot[order], s[order]
    start = hs.copy()
    start[1:] &= ~(hs[:-1] & (ss[1:] == ss[:-1]))
    return int(start.sum())


def evaluate_scores(
    ds: WindowDataset, scores: np.ndarray, alert_threshold: float = 0.5
) -> dict[str, float]:
    """Backtest metrics of per-window ``scores`` on the labelled ``ds`` (flat dict, JSON-safe).

    ``nab_*``: NAB-style scores per profile (0 = null, 100 = perfect; threshold optimised);
    ``precision``/``recall``/``f1``/``mean_delay_s`` event-wise at the standard threshold;
    ``alerts_per_series_day`` at ``alert_threshold``.
    """
    rep = evaluate(ds.labelled(scores))
    ev = rep["events"]
    out = {
        "nab_standard": rep["nab"]["standard"]["score"],
        "nab_low_fp": rep["nab"]["reward_low_FP"]["score"],
        "nab_low_fn": rep["nab"]["reward_low_FN"]["score"],
        "nab_threshold": rep["nab"]["standard"]["threshold"],
        "precision": ev["precision"],
        "recall": ev["recall"],
        "f1": ev["f1"],
        "tp": ev["tp"],
        "fp": ev["fp"],
        "fn": ev["fn"],
        "mean_delay_s": ev["mean_delay_s"],
        "alerts_per_series_day": _alert_runs(ds, scores, alert_threshold)
        / max(ds.series_days(), 1e-9),
        "eval_windows": len(ds),
        "eval_labelled_windows": rep["nab"]["standard"]["windows"],
    }
    return {k: _clean(v) for k, v in out.items()}


def _clean(v: Any) -> float | None:
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return None
    return round(v, 6)


def evaluate_model(
    model: BatchModel, ds: WindowDataset, policy: PromotionPolicy | None = None
) -> dict[str, float]:
    """Score every window of ``ds`` with ``model`` (10k batches, timed) and evaluate."""
    policy = policy or PromotionPolicy()
    n = len(ds)
    scores = np.empty(n)
    t = 0.0
    for lo in range(0, n, 10_000):
        part = ds.take(np.arange(lo, min(lo + 10_000, n)))
        t0 = time.perf_counter()
        scores[lo : lo + len(part["series"])] = model.score_many(part)
        t += time.perf_counter() - t0
    m = evaluate_scores(ds, scores, policy.alert_threshold)
    m["latency_ms_per_10k"] = round(1000.0 * t * 10_000 / max(n, 1), 3)
    return m


def guardrail_failures(metrics: dict[str, Any], policy: PromotionPolicy) -> list[str]:
    """Human-readable guardrail violations (empty = passes)."""
    out = []
    a = metrics.get("alerts_per_series_day")
    if a is None or a > policy.max_alerts_per_series_day:
        out.append(f"alerts_per_series_day {a} > {policy.max_alerts_per_series_day}")
    lat = metrics.get("latency_ms_per_10k")
    if lat is None or lat > policy.max_latency_ms_per_10k:
        out.append(f"latency_ms_per_10k {lat} > {policy.max_latency_ms_per_10k}")
    if metrics.get(policy.metric) is None:
        out.append(f"{policy.metric} is undefined on this labelled set")
    return out


def decide(
    candidate: dict[str, Any], champion: dict[str, Any] | None, policy: PromotionPolicy
) -> tuple[bool, str]:
    """``(promote, reason)`` for a candidate's metrics against the champion's (``None``: none).

    >>> p = PromotionPolicy(margin=1.0)
    >>> ok = {"nab_standard": 40.0, "alerts_per_series_day": 1, "latency_ms_per_10k": 9}
    >>> decide(ok, None, p)
    (True, 'first model: passes guardrails (nab_standard 40.0)')
    >>> decide(ok, {**ok, "nab_standard": 39.5}, p)[1]
    'not better by margin: nab_standard 40.0 vs champion 39.5 (margin 1.0)'
    >>> decide({**ok, "alerts_per_series_day": 50}, None, p)[1]
    'guardrail: alerts_per_series_day 50 > 6.0'
    """
    fails = guardrail_failures(candidate, policy)
    if fails:
        return False, "guardrail: " + "; ".join(fails)
    c = candidate[policy.metric]
    if champion is None:
        return True, f"first model: passes guardrails ({policy.metric} {c})"
    h = champion.get(policy.metric)
    if h is None:
        return True, f"champion's {policy.metric} is undefined; candidate {c}"
    if c >= h + policy.margin:
        return True, f"better: {policy.metric} {c} vs champion {h} (margin {policy.margin})"
    return (
        False,
        f"not better by margin: {policy.metric} {c} vs champion {h} (margin {policy.margin})",
    )


def decide_replay(
    arms: dict[str, dict[str, Any]],
    in_sample: dict[str, dict[str, Any]],
    policy: PromotionPolicy,
) -> tuple[bool, str]:
    """``(promote, reason)`` from the out-of-sample replay of :func:`training.replay.judge`.

    The candidate must pass the guardrails on the evaluation part and beat, by ``margin``, the
    current champion -- or, for a first model, the ensemble alone (a batch model that adds
    nothing to the ensemble is not worth its latency). The reason states both numbers and the
    candidate's in-sample figure.

    >>> p = PromotionPolicy(margin=1.0)
    >>> m = lambda nab: {"nab_standard": nab, "alerts_per_series_day": 1, "latency_ms_per_10k": 9}
    >>> ok, why = decide_replay({"ensemble": m(44.0), "candidate": m(41.2)},
    ...                         {"candidate": m(63.5)}, p)
    >>> ok
    False
    >>> print(why)
    not better out of sample: nab_standard 41.2 vs ensemble alone 44.0 (margin 1.0; in sample 63.5)
    >>> decide_replay({"ensemble": m(44.0), "champion": m(46.0), "candidate": m(47.5)},
    ...               {"candidate": m(50.0)}, p)[1]
    'better out of sample: nab_standard 47.5 vs champion 46.0 (margin 1.0; in sample 50.0)'
    """
    cand = arms["candidate"]
    fails = guardrail_failures(cand, policy)
    if fails:
        return False, "guardrail (out of sample): " + "; ".join(fails)
    base, label = ("champion", "champion") if "champion" in arms else ("ensemble", "ensemble alone")
    c, b = cand[policy.metric], arms[base].get(policy.metric)
    ins = in_sample.get("candidate", {}).get(policy.metric)
    tail = f"(margin {policy.margin}; in sample {ins})"
    if b is None:
        return True, f"{label}'s {policy.metric} is undefined; candidate {c} out of sample {tail}"
    if c >= b + policy.margin:
        return True, f"better out of sample: {policy.metric} {c} vs {label} {b} {tail}"
    return False, f"not better out of sample: {policy.metric} {c} vs {label} {b} {tail}"


def record_replay_decision(
    settings: Settings,
    name: str,
    version: str,
    ok: bool,
    reason: str,
    arms: dict[str, dict[str, Any]],
    policy: PromotionPolicy,
    *,
    champion_version: str | None,
    tracking_uri: str | None = None,
    promote_alias: bool = True,
    challenger: bool = True,
) -> Decision:
    """Write a replay decision on version ``version`` of ``name`` and move the aliases.

    ``promote_alias=False`` records the evaluation (decision ``would_promote`` /
    ``rejected``) and never moves the champion (a notebook run without its ``PROMOTE``
    parameter)."""
    client = make_client(settings, tracking_uri)
    brief = {a: {k: m.get(k) for k in _BRIEF} for a, m in arms.items()}
    base = arms.get("champion") or arms.get("ensemble")
    return _write_outcome(
        client, name, version, ok, reason, arms["candidate"], champion_version, base, policy,
        champion_tag={"arms": arms}, promote_alias=promote_alias, challenger=challenger,
        extra={"out_of_sample": brief},
    )  # fmt: skip


def _write_outcome(
    client: Any,
    name: str,
    version: str,
    ok: bool,
    reason: str,
    cand: dict[str, Any],
    champion_version: str | None,
    champion_metrics: dict[str, Any] | None,
    policy: PromotionPolicy,
    *,
    champion_tag: Any,
    promote_alias: bool = True,
    challenger: bool = True,
    extra: dict[str, Any] | None = None,
) -> Decision:
    """Tag the decision on the version; then promote it, or make it challenger (it passed the
    guardrails) and record why it was not promoted."""
    d = Decision(version, ok and promote_alias, reason, cand, champion_version, champion_metrics)
    action = "would_promote" if ok and not promote_alias else d.action
    tag_decision(
        client, name, version, action=action, reason=reason, metrics=cand,
        champion_metrics=champion_tag, compared_with=champion_version, policy=asdict(policy),
        decided_at=d.decided_at,
    )  # fmt: skip
    if d.promoted:
        promote(client, name, version, reason)
    else:
        d.challenger = promote_alias and challenger and not guardrail_failures(cand, policy)
        if d.challenger:
            move_alias(client, name, CHALLENGER, version, action="challenger", reason=reason)
        record_decision(
            client, name,
            {"action": action, "version": version, "previous": champion_version,
             "reason": reason, "at": d.decided_at, "challenger": d.challenger, **(extra or {})},
        )  # fmt: skip
    log.info("%s v%s %s: %s", name, version, action, reason)
    return d


#: the figures of each arm kept in the last-decision tag (the API and the dashboard show them)
_BRIEF = ("nab_standard", "precision", "recall", "f1", "alerts_per_series_day",
          "feedback_precision", "feedback_recall", "latency_ms_per_10k")  # fmt: skip


# --- the decision, recorded in the registry ---------------------------------------------------


def evaluate_and_promote(
    settings: Settings,
    version: str | int,
    ds: WindowDataset,
    policy: PromotionPolicy | None = None,
    *,
    tracking_uri: str | None = None,
    candidate_metrics: dict[str, Any] | None = None,
    challenger: bool = True,
    name: str | None = None,
) -> Decision:
    """Evaluate ``version`` and the current champion on ``ds``; promote, or reject with a reason.

    ``candidate_metrics`` skips re-scoring the candidate when the caller just evaluated it on
    the same ``ds``.  Tags described in the module docstring are written either way.
    """
    policy = policy or PromotionPolicy()
    client = make_client(settings, tracking_uri)
    name, version = name or settings.model_name, str(version)
    if candidate_metrics is None:
        cand = load_version(client, name, version, tracking_uri)
        candidate_metrics = evaluate_model(cand, ds, policy)
    champ_v = alias_version(client, name, CHAMPION)
    champ_m = None
    if champ_v is not None and champ_v != version:
        champ_m = evaluate_model(load_version(client, name, champ_v, tracking_uri), ds, policy)
    ok, reason = decide(candidate_metrics, champ_m, policy)
    return _write_outcome(
        client, name, version, ok, reason, candidate_metrics, champ_v, champ_m, policy,
        champion_tag=champ_m, challenger=challenger,
    )  # fmt: skip
