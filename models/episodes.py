"""Alert openings from window scores: the one repetition rule, shared by live alerts and backtests.

The per-window score says how anomalous a window is, for as long as the anomaly lasts; it is never
muted.  Repetition is the alert layer's business: an anomaly that lasts an hour is *one* alert.
The rule is threshold-free, so a backtest evaluates every threshold from one signal:

    a window *opens* (is a detection at threshold ``θ``) when its score is ``>= θ`` **and** it is
    higher than every score of its series in the preceding ``horizon`` windows.

So a sustained anomaly opens once (a worsening one again each time it sets a new high), and a
series whose score dropped back opens again after ``horizon`` windows -- the cooldown of an
alerting system, without a threshold built in.  The signal ``score * opens`` therefore holds, for
every ``θ`` at once, exactly the detections an alert layer with threshold ``θ`` would open.

:class:`OpeningGate` keeps the recent maximum per series in ``blocks`` blocks of
``horizon / blocks`` windows (a ring of block maxima; the look-back is between
``horizon - horizon / blocks`` and ``horizon`` windows): ``blocks`` floats per series.

>>> import numpy as np
>>> g = OpeningGate(horizon=20, blocks=4)
>>> score = np.r_[0.1, 0.7, 0.7, 0.69, np.full(30, 0.2), 0.6, 0.9]
>>> opens = [bool(g.step(np.array([0]), np.array([v]))[0]) for v in score]
>>> [i for i, o in enumerate(opens) if o]
[0, 1, 34, 35]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.base import _grow, rounds

__all__ = ["OpeningGate", "opening_signal"]


class OpeningGate:
    """Per-series "is this the highest score in the last ``horizon`` windows" (see module doc).

    Parameters
    ----------
    horizon : int
        Look-back in windows (a multiple of ``blocks``).
    blocks : int
        Block maxima kept per series.
    """

    def __init__(self, horizon: int = 100, blocks: int = 10) -> None:
        if blocks < 1 or horizon < blocks or horizon % blocks:
            raise ValueError("need horizon >= blocks >= 1 and horizon a multiple of blocks")
        self.horizon, self.blocks = int(horizon), int(blocks)
        self.size = self.horizon // self.blocks  # windows per block
        self.maxima = np.zeros((0, self.blocks))
        self.seen = np.zeros(0, np.int64)

    def _slots(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: its block slot, whether it starts a new block, the recent maximum before it."""
        known = s < self.seen.size
        seen = np.zeros(s.size, np.int64)
        seen[known] = self.seen[s[known]]
        slot = (seen // self.size) % self.blocks
        fresh = seen % self.size == 0
        m = np.zeros((s.size, self.blocks))
        m[known] = self.maxima[s[known]]
        m[fresh, slot[fresh]] = 0.0  # that slot held windows older than the horizon
        return slot, fresh, m.max(axis=1)

    def peek(self, s: np.ndarray, score: np.ndarray) -> np.ndarray:
        """bool (n,): rows above their series' recent maximum (``s`` distinct); pure."""
        s = np.asarray(s, np.int64)
        score = np.asarray(score, np.float64)
        return (score > self._slots(s)[2]) & (score > 0)

    def step(self, s: np.ndarray, score: np.ndarray) -> np.ndarray:
        """:meth:`peek`, then absorb the scores (``s`` must hold distinct series codes)."""
        s = np.asarray(s, np.int64)
        score = np.nan_to_num(np.asarray(score, np.float64), nan=0.0)
        if not s.size:
            return np.zeros(0, bool)
        slot, fresh, recent = self._slots(s)
        opens = (score > recent) & (score > 0)
        n = int(s.max()) + 1
        self.maxima = _grow(self.maxima, n, 0.0)
        if self.seen.size < n:
            self.seen = np.concatenate([self.seen, np.zeros(n - self.seen.size, np.int64)])
        cur = np.where(fresh, 0.0, self.maxima[s, slot])
        self.maxima[s, slot] = np.maximum(cur, score)
        self.seen[s] += 1
        return opens

    def to_state(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon,
            "blocks": self.blocks,
            "maxima": self.maxima.copy(),
            "seen": self.seen.copy(),
        }

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> OpeningGate:
        g = cls(st["horizon"], st["blocks"])
        g.maxima = np.array(st["maxima"], np.float64).reshape(-1, g.blocks)
        g.seen = np.array(st["seen"], np.int64)
        return g


def opening_signal(gate: OpeningGate, series: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Step ``gate`` over scored windows (rows of a series in time order) and return the score
    where a window opens, 0 elsewhere: the detections of every threshold at once.

    >>> opening_signal(OpeningGate(20, 4), np.array([0, 1, 0, 1]), np.array([.5, .2, .4, .3]))
    array([0.5, 0.2, 0. , 0.3])
    """
    series = np.asarray(series, np.int64)
    score = np.asarray(score, np.float64)
    opens = np.zeros(series.size, bool)
    for r in rounds(series):
        opens[r] = gate.step(series[r], score[r])
    return np.where(opens, score, 0.0)
