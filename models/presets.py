"""The default detector set (one configuration for live detection and backtests).

>>> ens = default_ensemble()
>>> sorted(ens.components)
['seasonal']
>>> sorted(default_ensemble(components=("ewma_value", "mad", "seasonal")).components)
['ewma_value', 'mad', 'seasonal']
"""

from __future__ import annotations

from typing import Any

from models.baselines import EWMAZScore, RobustMAD, SeasonalProfile
from models.ensemble import Ensemble

__all__ = ["DEFAULTS", "default_ensemble"]

#: Default parameters; ``default_ensemble(**overrides)`` replaces entries by name.
DEFAULTS: dict[str, Any] = {
    "value_alpha": 0.01,
    "diff_alpha": 0.01,
    "seasonal_alpha": 0.05,
    "mad_size": 64,
    "decades": 4.0,
    "warmup": 30,
    "combine": "max",
    "cooldown": 100,
    "cooldown_level": 0.7,
    "cooldown_factor": 0.3,
    "weights": None,
    "online": False,
    "likelihood": False,
    "short_alpha": 0.2,
    "long_alpha": 0.001,
    "likelihood_decades": 4.0,
    # Components switched on.  Tuned globally on nab-dev (see pipeline/backtest.py): the
    # hour-of-day profile alone scored best there; the others stay available by name.
    "components": ("seasonal",),
}


def default_ensemble(**overrides: Any) -> Ensemble:
    """Build the default :class:`~models.ensemble.Ensemble`; unknown keys raise."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown detector settings: {sorted(unknown)}")
    c = {**DEFAULTS, **overrides}
    d = c["decades"]
    comps = {
        "ewma_value": EWMAZScore("mean", alpha=c["value_alpha"], warmup=c["warmup"], decades=d),
        "ewma_diff": EWMAZScore(
            "mean", alpha=c["diff_alpha"], diff=True, warmup=c["warmup"], decades=d
        ),
        "seasonal": SeasonalProfile("mean", alpha=c["seasonal_alpha"], decades=d),
        "mad": RobustMAD("mean", size=c["mad_size"], decades=d),
    }
    unknown_c = set(c["components"]) - set(comps)
    if unknown_c:
        raise ValueError(f"unknown components: {sorted(unknown_c)}")
    comps = {k: v for k, v in comps.items() if k in c["components"]}
    if c["online"]:
        from models.online import FamilyHalfSpaceTrees

        comps["hst"] = FamilyHalfSpaceTrees()
    return Ensemble(
        comps,
        weights=c["weights"],
        combine=c["combine"],
        cooldown=c["cooldown"],
        cooldown_level=c["cooldown_level"],
        cooldown_factor=c["cooldown_factor"],
        likelihood=c["likelihood"],
        short_alpha=c["short_alpha"],
        long_alpha=c["long_alpha"],
        likelihood_decades=c["likelihood_decades"],
    )
