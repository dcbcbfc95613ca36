"""Per-tenant API keys: creation, hashing, constant-time verification, scopes and rate limits.

A key looks like ``eo_<key_id>_<secret>``: ``key_id`` (12 hex digits) is the primary key of
``api_keys`` and is safe to log; ``secret`` (256 random bits, url-safe base64) is shown once at
creation and only its SHA-256 is stored. A fast hash is enough because the secret is
high-entropy (nothing to brute-force); the comparison uses :func:`hmac.compare_digest`.

Scopes: ``read`` (every GET, SSE streams and feedback on alerts), ``admin`` (everything ``read``
may do plus inventory writes), ``ingest`` (only ``POST /ingest``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field

import psycopg

from serving.errors import Forbidden, RateLimited, Unauthorized
from storage import tenants as tenants_repo

SCOPES = ("read", "ingest", "admin")
#: what each scope of a key may do
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "admin": frozenset({"read", "admin"}),
    "ingest": frozenset({"ingest"}),
}
_KEY_RE = re.compile(r"^eo_([0-9a-f]{12})_([A-Za-z0-9_-]{32,64})$")
_DUMMY_HASH = hashlib.sha256(b"no such key").digest()
_DB_TIMEOUT_S = 5.0  # a key lookup waits at most this long for a pooled connection


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, tenant and scope."""

    key_id: str
    tenant_id: str
    scope: str

    def require(self, need: str) -> None:
        if need not in GRANTS[self.scope]:
            raise Forbidden(f"this key has scope '{self.scope}'; '{need}' is required")


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, bytes]:
    """A fresh ``(key_id, full_key, sha256(secret))``."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"eo_{key_id}_{secret}", hash_secret(secret)


def parse_key(key: str) -> tuple[str, str]:
    """``(key_id, secret)`` of a well-formed key; raises :class:`Unauthorized` otherwise."""
    m = _KEY_RE.match(key.strip())
    if not m:
        raise Unauthorized("malformed API key")
    return m.group(1), m.group(2)


# --- administration (CLI, demo; sync connections) ---------------------------------------------


def create_key(
    conn: psycopg.Connection, tenant: str, scope: str, label: str = ""
) -> tuple[str, str]:
    """Store a new key for ``tenant``; returns ``(key_id, full_key)`` — the only time it is seen."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if not tenants_repo.tenant_exists(conn, tenant):
        raise ValueError(f"unknown tenant {tenant!r} (create it with `eventops tenants create`)")
    key_id, key, digest = new_key()
    tenants_repo.add_key(conn, key_id, tenant, scope, digest, label)
    return key_id, key


# --- verification (API; async pool) -------------------------------------------------------------


@dataclass
class _Cached:
    digest: bytes
    principal: Principal | None  # None: unknown or revoked (or its tenant deleted)
    fetched: float  # time.monotonic() when the lookup that produced it *started*


@dataclass
class KeyStore:
    """Verifies keys against ``api_keys``, caching lookups for ``ttl`` seconds.

    Long-lived streams re-check their key with :meth:`fresh`: it answers from the cache when a
    lookup started at or after the time asked for, joins a lookup of that key already in flight,
    and otherwise queries (one query per key, whatever the number of streams sharing it).
    Deleting a tenant deletes its keys (``ON DELETE CASCADE``), so it reads as a revocation.
    """

    ttl: float = 5.0
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _inflight: dict[str, tuple[float, asyncio.Task]] = field(default_factory=dict)

    async def verify(self, pool, key: str) -> Principal:
        key_id, secret = parse_key(key)
        hit = await self._entry(pool, key_id, time.monotonic() - self.ttl)
        ok = hmac.compare_digest(hash_secret(secret), hit.digest)
        if not ok or hit.principal is None:
            raise Unauthorized("unknown or revoked API key")
        return hit.principal

    async def fresh(self, pool, principal: Principal, since: float) -> None:
        """Raise :class:`Unauthorized` unless ``principal``'s key was still valid in a lookup
        that started at or after ``since`` (``time.monotonic()``)."""
        hit = await self._entry(pool, principal.key_id, since)
        if hit.principal != principal:
            raise Unauthorized("API key revoked (or its tenant deleted)")

    async def _entry(self, pool, key_id: str, since: float) -> _Cached:
        hit = self._cache.get(key_id)
        if hit is not None and hit.fetched >= since:
            return hit
        flight = self._inflight.get(key_id)
        if flight is None or flight[0] < since:
            started = time.monotonic()
            task = asyncio.get_running_loop().create_task(self._lookup(pool, key_id, started))
            flight = self._inflight[key_id] = (started, task)
            task.add_done_callback(lambda t, k=key_id: self._done(k, t))
        return await asyncio.shield(flight[1])

    def _done(self, key_id: str, task: asyncio.Task) -> None:
        if self._inflight.get(key_id, (0, None))[1] is task:
            del self._inflight[key_id]
        if not task.cancelled():
            task.exception()  # retrieved by the awaiters; never "never retrieved"

    async def _lookup(self, pool, key_id: str, started: float) -> _Cached:
        async with pool.connection(timeout=_DB_TIMEOUT_S) as conn:
            row = await tenants_repo.key_row(conn, key_id)
        if row is None or row[3]:
            hit = _Cached(_DUMMY_HASH, None, started)
        else:
            hit = _Cached(bytes(row[2]), Principal(key_id, row[0], row[1]), started)
        old = self._cache.get(key_id)
        if old is None or old.fetched <= started:  # a slower, older lookup never overwrites
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = hit
        return hit


@dataclass
class RateLimiter:
    """Token bucket per key id: ``rate`` requests/s sustained, ``burst`` at once; 0 = off."""

    rate: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, t)

    def hit(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, t = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - t) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited((1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)
