"""enrich: add inventory tags (``(tenant_id, source_id) -> tags``) to each event.

The stage holds an immutable snapshot of the inventory; the runner refreshes it from
PostgreSQL every ``inventory_refresh_s`` seconds (no SQL here). Tags the agent sent win over
inventory tags of the same name. Work is per unique (tenant, host) pair, not per event, except
for the final merge of dicts on the events whose source has inventory tags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from core.batch import MetricBatch

Inventory = Mapping[tuple[str, str], Mapping[str, object]]


class Enricher:
    """The enrich stage over an inventory snapshot."""

    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inventory: Inventory = dict(inventory or {})

    def update(self, inventory: Inventory) -> None:
        """Swap in a fresh snapshot (called by the runner between batches)."""
        self.inventory = dict(inventory)

    def __call__(self, batch: MetricBatch) -> MetricBatch:
        if not len(batch) or not self.inventory:
            return batch
        uniq, inv = batch.sources()
        found = [self.inventory.get(k) for k in uniq]
        has = np.fromiter((f is not None for f in found), bool, len(found))
        if not has.any():
            return batch
        tags = batch.tags.copy()
        for j in np.flatnonzero(has[inv]):
            own = tags[j]
            base = found[inv[j]]
            tags[j] = {**base, **own} if own else dict(base)
        return dataclasses.replace(batch, tags=tags)
