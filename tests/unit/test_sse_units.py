"""SSE building blocks without services: bounded subscriptions, key re-checks for streams."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import pytest

from serving.auth import KeyStore, Principal, new_key
from serving.broadcast import Item, Subscription
from serving.errors import Unauthorized


def items(*seqs: int) -> list[Item]:
    return [Item(s, b"id: %d\n\n" % s, 0.0) for s in seqs]


def test_subscription_overflow_clears_the_queue_and_counts_a_drop():
    async def run() -> None:
        sub = Subscription("t", limit=4)
        sub.offer(items(1, 2, 3))
        sub.offer(items(4, 5))  # 5 > 4: the client refills from its cursor instead
        assert sub.dropped == 1 and list(sub.items) == []
        sub.offer(items(6, 7))
        assert [i.seq for i in sub.pop(1)] == [6]
        assert [i.seq for i in sub.pop(10)] == [7]

    asyncio.run(run())


def test_subscription_wait_returns_when_offered_or_after_the_timeout():
    async def run() -> None:
        sub = Subscription("t", limit=4)
        t0 = time.monotonic()
        await sub.wait(0.05)
        assert time.monotonic() - t0 >= 0.04
        asyncio.get_running_loop().call_later(0.01, sub.offer, items(1))
        t0 = time.monotonic()
        await sub.wait(5)
        assert time.monotonic() - t0 < 1 and len(sub.items) == 1

    asyncio.run(run())


class FakePool:
    """Answers the api_keys lookup from a dict; counts queries (a unit test: no PostgreSQL)."""

    def __init__(self, rows: dict) -> None:
        self.rows, self.queries = rows, 0

    @asynccontextmanager
    async def connection(self, timeout: float | None = None):
        pool = self

        class Cur:
            def __init__(self, row):
                self.row = row

            async def fetchone(self):
                return self.row

        class Conn:
            async def execute(self, q, params):
                pool.queries += 1
                await asyncio.sleep(0.01)
                return Cur(pool.rows.get(params[0]))

        yield Conn()


def test_streams_of_one_key_share_a_lookup_and_see_a_revocation():
    key_id, key, digest = new_key()
    pool = FakePool({key_id: ("acme", "read", digest, False)})

    async def run() -> None:
        keys = KeyStore(ttl=60)
        p = await keys.verify(pool, key)
        assert p == Principal(key_id, "acme", "read") and pool.queries == 1
        await keys.fresh(pool, p, time.monotonic() - 10)  # the cached lookup is recent enough
        assert pool.queries == 1
        since = time.monotonic()
        await asyncio.gather(*(keys.fresh(pool, p, since) for _ in range(20)))  # 20 streams
        assert pool.queries == 2
        pool.rows[key_id] = ("acme", "read", digest, True)  # revoked
        with pytest.raises(Unauthorized):
            await keys.fresh(pool, p, time.monotonic())
        pool.rows.pop(key_id)  # tenant deleted: its keys are gone
        with pytest.raises(Unauthorized):
            await keys.fresh(pool, p, time.monotonic())
        # what a stream found also holds for requests (same cache), before the TTL runs out
        with pytest.raises(Unauthorized):
            await keys.verify(pool, key)

    asyncio.run(run())
