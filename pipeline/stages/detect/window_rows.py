"""The window-rows record: the closed windows of a batch with their features and scores, as
columns — what the detect stage hands the sink and sends on ``signals.score.v1``
(:meth:`WindowRows.records`, read back by :meth:`WindowRows.from_records`).

The storage layer takes it by duck typing (it may not import ``pipeline``): the sink reads the
columns named here and :data:`FEATURES`.

Besides the score, every window carries what the ensemble expected of it (``expected``: the window
mean, ``scale``: its typical deviation; the band the dashboard draws is derived from both) and
how much of its own series' history backs the score (``confidence`` in [0, 1]: windows learnt /
the ensemble's ``min_windows``; ``warming`` while it is below 1). NaN where unknown: no detector
could tell, or a record of a producer older than these columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.cross import CROSS_FEATURES
from features.windows import FEATURES as WINDOW_FEATURES

#: Feature columns of every scored window (stored in ``features``, sent on ``signals.score.v1``):
#: the per-series window features, then the per-host cross-metric ones (:mod:`features.cross`).
FEATURES = WINDOW_FEATURES + CROSS_FEATURES


@dataclass
class WindowRows:
    """Closed windows of a batch with their features and scores (columns).

    ``scale`` and ``confidence`` (float64, NaN where unknown; ``None`` given: unknown for every
    row) are :class:`models.ensemble.EnsembleResult`'s; :attr:`warming` is derived from
    ``confidence``.

    The ``shadow_*`` columns are the challenger's scores (``None`` when no window of the batch
    was shadow-scored): ``shadow_version`` per row (``None`` = row not scored), ``shadow_score``
    (calibrated like the champion's batch score) and ``shadow_raw`` (the model's own score),
    float64 with NaN where not scored. Nothing but the ``shadow_scores`` table reads them.
    """

    tenant_id: np.ndarray
    host: np.ndarray
    metric: np.ndarray
    start: np.ndarray  # float64 epoch s
    end: np.ndarray
    features: dict[str, np.ndarray]
    score: np.ndarray
    severity: np.ndarray  # object: ok / warning / critical
    components: list[dict]
    expected: np.ndarray
    explanation: list[dict]
    model_version: list[str | None]
    shadow_version: list[str | None] | None = None
    shadow_score: np.ndarray | None = None
    shadow_raw: np.ndarray | None = None
    scale: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self)
        # unknown for every row: NaN columns, so every row has them
        self.scale = np.full(n, np.nan) if self.scale is None else self.scale
        self.confidence = np.full(n, np.nan) if self.confidence is None else self.confidence

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @property
    def warming(self) -> list[bool | None]:
        """Per row: the series is still warming (confidence below 1); ``None``: unknown."""
        return [None if c != c else c < 1.0 for c in self.confidence.tolist()]

    def shadow_idx(self) -> np.ndarray:
        """Row indices (int64) that carry a shadow score."""
        if self.shadow_version is None:
            return np.empty(0, np.int64)
        return np.flatnonzero(
            np.fromiter(
                (v is not None for v in self.shadow_version), bool, len(self.shadow_version)
            )
        )

    def _shadow_columns(self) -> tuple[list[str | None], np.ndarray, np.ndarray]:
        if self.shadow_version is None:
            nan = np.full(len(self), np.nan)
            return [None] * len(self), nan, nan
        return self.shadow_version, self.shadow_score, self.shadow_raw

    @staticmethod
    def concat(parts: list[WindowRows]) -> WindowRows | None:
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        cat = np.concatenate
        out = WindowRows(
            cat([p.tenant_id for p in parts]),
            cat([p.host for p in parts]),
            cat([p.metric for p in parts]),
            cat([p.start for p in parts]),
            cat([p.end for p in parts]),
            {k: cat([p.features[k] for p in parts]) for k in parts[0].features},
            cat([p.score for p in parts]),
            cat([p.severity for p in parts]),
            [c for p in parts for c in p.components],
            cat([p.expected for p in parts]),
            [e for p in parts for e in p.explanation],
            [v for p in parts for v in p.model_version],
            scale=cat([p.scale for p in parts]),
            confidence=cat([p.confidence for p in parts]),
        )
        if any(p.shadow_version is not None for p in parts):
            cols = [p._shadow_columns() for p in parts]
            out.shadow_version = [v for c in cols for v in c[0]]
            out.shadow_score = cat([c[1] for c in cols])
            out.shadow_raw = cat([c[2] for c in cols])
        return out

    @staticmethod
    def from_records(recs: list[dict]) -> WindowRows | None:
        """Inverse of :meth:`records` (the sink reading ``signals.score.v1``)."""
        if not recs:
            return None

        def obj(xs: list) -> np.ndarray:
            a = np.empty(len(xs), dtype=object)
            a[:] = xs
            return a

        f = {k: np.asarray([r["features"][k] for r in recs], np.float64) for k in WINDOW_FEATURES}
        f["count"] = f["count"].astype(np.int64)
        # records of producers older than the cross-metric features lack them: NaN (NULL)
        nan = float("nan")
        f.update(
            {
                k: np.asarray([r["features"].get(k, nan) for r in recs], np.float64)
                for k in CROSS_FEATURES
            }
        )
        out = WindowRows(
            obj([r["tenant_id"] for r in recs]),
            obj([r["host"] for r in recs]),
            obj([r["metric"] for r in recs]),
            np.asarray([r["window_start"] for r in recs], np.float64),
            np.asarray([r["window_end"] for r in recs], np.float64),
            f,
            np.asarray([r["score"] for r in recs], np.float64),
            obj([r["severity"] for r in recs]),
            [r["components"] for r in recs],
            np.asarray(
                [np.nan if r["expected"] is None else r["expected"] for r in recs], np.float64
            ),
            [r["explanation"] for r in recs],
            [r["model_version"] for r in recs],
            # records of producers older than these columns lack them: NaN (NULL)
            scale=_floats([r.get("typical_deviation") for r in recs]),
            confidence=_floats([r.get("confidence") for r in recs]),
        )
        shadow = [r.get("shadow") for r in recs]
        if any(sh is not None for sh in shadow):
            out.shadow_version = [None if sh is None else sh["model_version"] for sh in shadow]
            out.shadow_score = np.asarray(
                [np.nan if sh is None else sh["score"] for sh in shadow], np.float64
            )
            out.shadow_raw = np.asarray(
                [np.nan if sh is None or sh.get("raw") is None else sh["raw"] for sh in shadow],
                np.float64,
            )
        return out

    def records(self) -> list[dict]:
        """One JSON-able dict per window (``signals.score.v1``).

        A shadow-scored window has a ``shadow`` entry ``{model_version, score, raw}``, apart from
        its ``score`` (which is the champion's and the ensemble's only).
        """
        out = []
        f = {k: v.tolist() for k, v in self.features.items()}
        sv, ss, sr = self._shadow_columns()
        ss, sr = ss.tolist(), sr.tolist()
        scale = [None if x != x else x for x in self.scale.tolist()]
        conf = [None if x != x else x for x in self.confidence.tolist()]
        warming = self.warming
        for i in range(len(self)):
            rec = {
                "tenant_id": self.tenant_id[i],
                "host": self.host[i],
                "metric": self.metric[i],
                "window_start": float(self.start[i]),
                "window_end": float(self.end[i]),
                "features": {k: f[k][i] for k in f},
                "score": float(self.score[i]),
                "severity": self.severity[i],
                "components": self.components[i],
                "expected": None if np.isnan(self.expected[i]) else float(self.expected[i]),
                "typical_deviation": scale[i],
                "confidence": conf[i],
                "warming": warming[i],
                "explanation": self.explanation[i],
                "model_version": self.model_version[i],
            }
            if sv[i] is not None:
                rec["shadow"] = {
                    "model_version": sv[i],
                    "score": ss[i],
                    "raw": None if sr[i] != sr[i] else sr[i],
                }
            out.append(rec)
        return out


def _floats(xs: list) -> np.ndarray:
    """float64 array of ``xs``, NaN for ``None``."""
    return np.asarray([np.nan if x is None else x for x in xs], np.float64)
