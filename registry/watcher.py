"""The batch models of a detect worker: background watchers of registry aliases, hot swap.

Every tenant has its own registered model (:mod:`registry.names`); a detect worker follows all
of them with one :class:`TenantWatcher` (one registry query per poll), whose ``current()`` is
``{tenant: (version, BatchModel)}``.  :class:`ChampionWatcher` follows one registered model.

The detect stage never waits on MLflow: a :class:`ChampionWatcher` thread polls the
``champion`` alias (``get_model_version_by_alias``, ~5 ms against Postgres), loads a new version
in the background when the alias moves (:func:`registry.loading.load_version`), and publishes
``(version, BatchModel)`` as one tuple that :meth:`ChampionWatcher.current` returns (a single
attribute read, safe between batches without a lock).

Usage in a detect worker::

    watcher = start_watcher(settings)                # or ChampionWatcher(settings, ...).start()
    ...
    version, model = watcher.current()           # between micro-batches
    scores = model.score_many(X) if model else None  # record `version` with every score row
    ...
    watcher.stop()

Failure policy: a registry or load error is logged and retried on the next poll; the current
model stays in place.  When the alias is *deleted* the watcher publishes ``(None, None)``
(no champion = no batch scoring).  Versions are compared as strings (the SQL store returns
ints, REST returns strings).

``import mlflow`` costs ~2 s; it happens in the watcher thread, never at import of this module.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from core.settings import Settings
from models.batch import BatchModel
from registry.aliases import alias_version, move_alias
from registry.client import client
from registry.loading import load_version
from registry.tags import CHALLENGER, CHAMPION, set_at_tag

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = ["ChampionWatcher", "Swap", "TenantWatcher", "measure_swap_delay", "start_watcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swap:
    """One model change seen by a watcher.

    ``seen_s``/``ready_s`` are ``time.time()`` when the new alias target was first seen and when
    the loaded model was published; ``alias_set_at`` is when training moved the alias (from the
    registered-model tag, ``None`` if unknown); ``delay_s = ready_s - alias_set_at``.
    """

    old: str | None
    new: str | None
    seen_s: float
    ready_s: float
    load_s: float
    alias_set_at: float | None
    tenant: str | None = None

    @property
    def delay_s(self) -> float | None:
        return None if self.alias_set_at is None else self.ready_s - self.alias_set_at


class _Poller:
    """The polling thread both watchers share: first check at once, then every ``poll_s``
    (backing off up to 30 s while the registry fails, keeping what is loaded); subclasses
    implement :meth:`check_once`."""

    def __init__(
        self,
        settings: Settings,
        poll_s: float,
        *,
        tracking_uri: str | None,
        alias: str,
        on_swap: Any,
    ) -> None:
        if not poll_s > 0:
            raise ValueError("poll_s must be > 0")
        self.settings, self.poll_s, self.alias = settings, float(poll_s), alias
        self.tracking_uri = tracking_uri
        self.on_swap = on_swap
        self.swaps: list[Swap] = []
        self.last_error: BaseException | None = None
        self.checks = 0
        self._client: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._changed = threading.Condition()
        self._first = threading.Event()  # the first check finished (loaded, none, or failed)
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _begin_check(self) -> float:
        """Count a check (making the client on the first); returns its ``time.time()``."""
        if self._client is None:
            self._client = client(self.settings, self.tracking_uri)
        self.checks += 1
        return time.time()

    def _wait(self, done: Any, timeout: float) -> bool:
        """Block until ``done()`` holds after a publish; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def start(self) -> Self:
        """Start the polling thread (first check at once); returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self._thread = threading.Thread(
            target=self._run, name=f"watch-{type(self).__name__}-{self.alias}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and join the thread (a load in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def poke(self) -> None:
        """Check the alias now instead of at the next poll."""
        self._wake.set()

    def wait_first(self, timeout: float) -> bool:
        """Block until the first check has finished (the model loaded, no alias, or an error);
        ``False`` on timeout."""
        return self._first.wait(timeout)

    def _run(self) -> None:
        backoff = self.poll_s
        while not self._stop.is_set():
            try:
                self.check_once()
                self.last_error = None
                backoff = self.poll_s
            except Exception as e:  # noqa: BLE001 - keep what is loaded, retry
                self.last_error = e
                log.warning("model registry check failed (%s); retrying in %.1f s", e, backoff)
                backoff = min(backoff * 2, max(self.poll_s, 30.0))
            self._first.set()
            self._wake.wait(backoff)
            self._wake.clear()


class ChampionWatcher(_Poller):
    """Background poller of ``models:/<name>@<alias>``, loading new versions off the hot path.

    Parameters
    ----------
    settings : Settings
        ``model_name`` and the MLflow store.
    poll_s : float
        Seconds between alias checks (each ~5 ms against Postgres).
    tracking_uri : str, optional
        Override of the tracking URI (entry points pass ``MLFLOW_TRACKING_URI``).
    alias : str
        ``"champion"``, or ``"challenger"`` for shadow scoring.
    on_swap : callable, optional
        ``on_swap(swap: Swap)`` called from the watcher thread after each publish.
    name : str, optional
        The registered model followed (default ``settings.model_name``; a tenant's is
        :func:`registry.names.tenant_model` -- detect workers follow every tenant's at once
        with :class:`TenantWatcher`).

    Attributes
    ----------
    swaps : list of Swap
        Every change published so far.
    last_error : BaseException or None
        The last poll/load error (cleared by the next success).
    """

    def __init__(
        self,
        settings: Settings,
        poll_s: float = 2.0,
        *,
        tracking_uri: str | None = None,
        alias: str = CHAMPION,
        on_swap: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(settings, poll_s, tracking_uri=tracking_uri, alias=alias, on_swap=on_swap)
        self.name = name or settings.model_name
        self._current: tuple[str | None, BatchModel | None] = (None, None)
        self._target: str | None = None  # alias target seen last

    # ------------------------------------------------------------------ API for the detect stage
    def current(self) -> tuple[str | None, BatchModel | None]:
        """``(version, model)`` published last; ``(None, None)`` before the first load."""
        return self._current

    def wait_for(self, version: str | int | None, timeout: float) -> bool:
        """Block until ``current()[0] == str(version)`` (``None``: no model); ``False`` on
        timeout."""
        want = None if version is None else str(version)
        return self._wait(lambda: self._current[0] == want, timeout)

    # ------------------------------------------------------------------ thread
    def check_once(self) -> bool:
        """One poll (and load when the alias moved); ``True`` when a new model was published."""
        seen = self._begin_check()
        target = alias_version(self._client, self.name, self.alias)
        if target == self._current[0]:
            self._target = target
            return False
        self._target = target
        t0 = time.perf_counter()
        model = (
            None
            if target is None
            else load_version(self._client, self.name, target, self.tracking_uri)
        )
        load_s = time.perf_counter() - t0
        old = self._current[0]
        with self._changed:
            self._current = (target, model)
            self._changed.notify_all()
        swap = Swap(old, target, seen, time.time(), load_s, self._alias_set_at())
        self.swaps.append(swap)
        log.info(
            "batch model %s@%s: %s -> %s (load %.2f s, %s after the alias moved)",
            self.name,
            self.alias,
            old,
            target,
            load_s,
            "?" if swap.delay_s is None else f"{swap.delay_s:.2f} s",
        )
        if self.on_swap is not None:
            self.on_swap(swap)
        return True

    def _alias_set_at(self) -> float | None:
        try:
            rm = self._client.get_registered_model(self.name)
            v = rm.tags.get(set_at_tag(self.alias))
            return float(v) if v else None
        except Exception:  # noqa: BLE001 - informational only
            return None


class TenantWatcher(_Poller):
    """Background poller of every tenant's ``models:/<model_name>.<tenant>@<alias>``.

    One thread for all tenants: each poll is one ``search_registered_models`` over the tenants'
    registered models (:func:`registry.names.like_pattern`; the result carries each model's
    aliases and tags, so the poll costs one query whatever the number of tenants).  A tenant
    whose alias moved gets the new version loaded in the background; :meth:`current` returns
    the published ``{tenant: (version, BatchModel)}`` (one attribute read; tenants without the
    alias are absent, so the detect stage scores them with the ensemble alone).

    Failure policy: a registry error keeps every loaded model and is retried with backoff; a
    version that fails to load keeps that tenant's previous model (other tenants unaffected) and
    is retried at the next poll.  A deleted alias (or registered model) unloads that tenant.

    The interface is :class:`ChampionWatcher`'s, per tenant: ``start``, ``stop``, ``poke``,
    ``wait_first``, ``wait_for(version, timeout, tenant=...)``, ``swaps``, ``last_error``.
    """

    def __init__(
        self,
        settings: Settings,
        poll_s: float = 2.0,
        *,
        tracking_uri: str | None = None,
        alias: str = CHAMPION,
        on_swap: Any = None,
    ) -> None:
        super().__init__(settings, poll_s, tracking_uri=tracking_uri, alias=alias, on_swap=on_swap)
        self.load_errors: dict[str, str] = {}
        self._current: dict[str, tuple[str, BatchModel]] = {}

    def current(self) -> dict[str, tuple[str, BatchModel]]:
        """``{tenant: (version, model)}`` published last (empty before the first load)."""
        return self._current

    def version(self, tenant: str) -> str | None:
        """The version scoring ``tenant``'s windows now (``None``: the ensemble alone)."""
        hit = self._current.get(tenant)
        return None if hit is None else hit[0]

    def wait_for(self, version: str | int | None, timeout: float, *, tenant: str) -> bool:
        """Block until ``tenant`` is scored by ``version`` (``None``: by no batch model)."""
        want = None if version is None else str(version)
        return self._wait(lambda: self.version(tenant) == want, timeout)

    def _targets(self) -> dict[str, tuple[str, float | None]]:
        """``{tenant: (version, alias set at)}`` of every tenant model with the alias."""
        from registry.names import like_pattern, tenant_of

        out: dict[str, tuple[str, float | None]] = {}
        token = None
        while True:
            page = self._client.search_registered_models(
                filter_string=like_pattern(self.settings), max_results=1000, page_token=token
            )
            for rm in page:
                tenant = tenant_of(self.settings, rm.name)
                v = (getattr(rm, "aliases", None) or {}).get(self.alias)
                if tenant is not None and v is not None:
                    at = (rm.tags or {}).get(set_at_tag(self.alias))
                    out[tenant] = (str(v), float(at) if at else None)
            token = getattr(page, "token", None)
            if not token:
                return out

    def check_once(self) -> bool:
        """One poll (and the loads it calls for); ``True`` when anything was published."""
        from registry.names import tenant_model

        seen = self._begin_check()
        targets = self._targets()
        cur = self._current
        new = {t: vm for t, vm in cur.items() if t in targets and targets[t][0] == vm[0]}
        swaps = [
            Swap(vm[0], None, seen, time.time(), 0.0, None, t)
            for t, vm in cur.items()
            if t not in targets
        ]
        for tenant, (version, set_at) in sorted(targets.items()):
            if tenant in new:
                continue
            t0 = time.perf_counter()
            try:
                model = load_version(
                    self._client, tenant_model(self.settings, tenant), version, self.tracking_uri
                )
            except Exception as e:  # noqa: BLE001 - this tenant keeps its model; retried
                if self.load_errors.get(tenant) != version:
                    log.warning("tenant %s: loading v%s failed (%s); keeping %s", tenant,
                                version, e, cur.get(tenant, ("none",))[0])  # fmt: skip
                self.load_errors[tenant] = version
                if tenant in cur:
                    new[tenant] = cur[tenant]
                continue
            self.load_errors.pop(tenant, None)
            new[tenant] = (version, model)
            old = cur.get(tenant)
            swaps.append(Swap(old[0] if old else None, version, seen, time.time(),
                              time.perf_counter() - t0, set_at, tenant))  # fmt: skip
        if not swaps:
            return False
        with self._changed:
            self._current = new
            self._changed.notify_all()
        for sw in swaps:
            self.swaps.append(sw)
            log.info("tenant %s batch model @%s: %s -> %s (load %.2f s, %s after the alias moved)",
                     sw.tenant, self.alias, sw.old, sw.new, sw.load_s,
                     "?" if sw.delay_s is None else f"{sw.delay_s:.2f} s")  # fmt: skip
            if self.on_swap is not None:
                self.on_swap(sw)
        return True


def measure_swap_delay(
    watcher: ChampionWatcher, client: MlflowClient, version: str | int, timeout: float = 30.0
) -> float:
    """Move the watcher's alias to ``version`` and return seconds until the watcher serves it.

    Includes the alias write, the wait for the next poll and the background load.
    """
    t0 = time.perf_counter()
    move_alias(client, watcher.name, watcher.alias, version)
    if not watcher.wait_for(version, timeout):
        raise TimeoutError(f"watcher did not swap to version {version} within {timeout} s")
    return time.perf_counter() - t0


def start_watcher(s: Settings, alias: str = CHAMPION) -> TenantWatcher | None:
    """A started watcher of every tenant's ``alias`` for a detect worker; ``None`` when off.

    ``champion_poll_s <= 0`` turns off both; ``shadow_scoring=False`` the challenger's.
    """
    if s.champion_poll_s <= 0 or (alias == CHALLENGER and not s.shadow_scoring):
        return None
    return TenantWatcher(
        s, poll_s=s.champion_poll_s, alias=alias, tracking_uri=s.mlflow_tracking_uri_override
    ).start()
