"""The stage objects a runner's chain calls, and the reference data they read.

:class:`StageSet` builds normalize, enrich and detect from the settings and keeps what they read
from PostgreSQL fresh between batches: the tenants (normalize), the inventory (enrich) and the
rules file (detect), each only when the chain has the stage. :func:`start_watcher` gives detect
its batch models from the registry. Both runners use them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from core.batch import DeadLetter, MetricBatch
from core.settings import Settings
from models.rules import RuleSet, RulesFile
from pipeline.chain import Chain
from pipeline.stages.detect.stage import DetectStage, Maintenance, ModelProvider
from pipeline.stages.enrich import Enricher
from pipeline.stages.normalize import NormalizeConfig, Normalizer
from storage.inventory import load_inventory
from storage.notify import load_silences
from storage.tenants import load_tenants

log = logging.getLogger(__name__)


def normalize_config(s: Settings, tenants: frozenset[str] | None) -> NormalizeConfig:
    known = (tenants or frozenset()) | s.tenant_allowlist()
    return NormalizeConfig(
        max_message_bytes=s.max_message_bytes,
        max_tag_value_bytes=s.max_tag_value_bytes,
        max_tags=s.max_tags,
        max_future_skew_s=s.max_future_skew_s,
        max_past_age_s=s.max_past_age_s,
        known_tenants=known,
    )


class StageSet:
    """The stage objects of a chain plus their periodically refreshed reference data."""

    def __init__(
        self,
        s: Settings,
        chain: Chain,
        conn,
        model: ModelProvider | None = None,
        shadow: ModelProvider | None = None,
    ) -> None:
        self.s, self.chain, self.conn = s, chain, conn
        self.normalizer = Normalizer(normalize_config(s, frozenset()))
        self.enricher = Enricher()
        self.rules_file = RulesFile(s.rules_path) if chain.has_detect else None
        self.detect = DetectStage(
            self.rules_file.rules if self.rules_file else RuleSet([]),
            window_s=s.window_s,
            lateness_s=s.allowed_lateness_s,
            model=model,
            shadow=shadow,
            idle_close_s=s.idle_close_s,
            idle_close_wall_s=s.idle_close_wall_s,
        )
        self._refreshed = 0.0
        self._rules_checked = 0.0
        self._tenants_checked = -self.TENANT_RECHECK_S
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.rules_file and now - self._rules_checked > 2.0:
            self._rules_checked = now
            try:
                if self.rules_file.poll():
                    self.detect.set_rules(self.rules_file.rules)
                    log.info("rules reloaded from %s", self.rules_file.path)
            except Exception as e:  # a broken edit keeps the previous rules in force
                log.error("rules file %s not reloaded: %s", self.rules_file.path, e)
        if not force and now - self._refreshed < self.s.inventory_refresh_s:
            return
        self._refreshed = now
        # a failure below (database away) keeps the reference data loaded before; the worker
        # sets the next attempt with retry_in()
        if self.chain.has_normalize:
            self.normalizer = Normalizer(normalize_config(self.s, load_tenants(self.conn)))
        inventory = None
        if self.chain.has_enrich:
            inventory = load_inventory(self.conn)
            self.enricher.update(inventory)
        if self.chain.has_detect:
            self.detect.maintenance = self._maintenance(inventory)

    def _maintenance(self, inventory) -> Maintenance:
        """The maintenance windows that can still cover an accepted event, and host tags."""
        windows: dict[str, list] = {}
        for w in load_silences(
            self.conn, kind="maintenance", since=time.time() - self.s.max_past_age_s
        ):
            windows.setdefault(w.tenant_id, []).append(w)
        if not windows:
            return Maintenance()
        if inventory is None:
            inventory = load_inventory(self.conn)
        tags = {k: v for k, v in inventory.items() if k[0] in windows}
        return Maintenance({t: tuple(ws) for t, ws in windows.items()}, tags)

    def retry_in(self, seconds: float) -> None:
        """Attempt the next reference-data refresh in ``seconds`` instead of a full period."""
        self._refreshed = time.monotonic() - self.s.inventory_refresh_s + seconds

    #: seconds between two tenant re-reads caused by events of unknown tenants
    TENANT_RECHECK_S = 2.0

    def normalize(
        self, raws: Sequence[bytes], topic: str, partitions: Sequence[int], offsets: Sequence[int]
    ) -> tuple[MetricBatch, list[DeadLetter]]:
        """The normalizer on a batch; events of a tenant created since the last refresh are kept.

        Without this, a tenant's first events after ``eventops tenants create`` were dead-lettered
        as ``unknown_tenant`` for up to ``inventory_refresh_s``. When the batch has such dead
        letters the tenants are re-read (at most every :data:`TENANT_RECHECK_S`, so a stream of
        unknown tenants costs one small query every few seconds) and, only if the set grew,
        the batch is normalized again.
        """
        batch, dead = self.normalizer(raws, topic, partitions, offsets)
        if dead and self._tenants_grew(dead):
            batch, dead = self.normalizer(raws, topic, partitions, offsets)
        return batch, dead

    def _tenants_grew(self, dead: list[DeadLetter]) -> bool:
        now = time.monotonic()
        if now - self._tenants_checked < self.TENANT_RECHECK_S:
            return False
        if not any(d.reason == "unknown_tenant" for d in dead):
            return False
        self._tenants_checked = now
        try:
            tenants = load_tenants(self.conn)
        except Exception as e:  # noqa: BLE001 - the periodic refresh reports outages
            log.debug("tenant re-read failed: %s", e)
            try:
                self.conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection is replaced by refresh()
                pass
            return False
        known = self.normalizer.config.known_tenants
        if known is not None and tenants <= known:
            return False
        self.normalizer = Normalizer(normalize_config(self.s, tenants))
        return True
