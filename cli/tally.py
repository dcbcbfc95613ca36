"""What became of the events a command produced: rejected by the local check, stored, or
dead-lettered — so ``eventops send`` and ``eventops simulate`` never report plain success for
input the pipeline refuses.

* :func:`check_locally` runs the workers' own :class:`~pipeline.stages.normalize.Normalizer`
  (same limits, same tenants) over the raw bytes before they are produced, and counts what it
  would dead-letter by reason. The rejected events are still produced: the normalize worker
  dead-letters them with their reason, original bytes and provenance, so nothing is lost and
  the DLQ stays the one record of refused input.
* :class:`Outcome` follows a run after it produced: dead letters that appear on the DLQ topic
  after it started and carry the run's event-id prefix (counted by their ``reason`` header),
  and the run's rows in ``metrics``. Stages after normalize (``ts_too_old`` at detect) can only
  be seen this way.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.settings import Settings

__all__ = ["Outcome", "Verdict", "by_reason", "check_locally"]


def by_reason(counts: Counter[str]) -> str:
    """``"bad_json 2, unknown_tenant 1"``: most frequent first, ties by name.

    >>> by_reason(Counter({"unknown_tenant": 1, "bad_json": 2, "bad_field": 1}))
    'bad_json 2, bad_field 1, unknown_tenant 1'
    """
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class Verdict:
    """Outcome of :func:`check_locally`."""

    total: int
    rejected: Counter[str] = field(default_factory=Counter)
    #: (index into the checked inputs, reason, detail) of the first rejected input
    first: tuple[int, str, str] | None = None
    #: False when the tenants table could not be read (unknown tenants were not checked)
    tenants_checked: bool = True

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


def check_locally(
    s: Settings, raws: Sequence[bytes], tenants: frozenset[str] | None, topic: str = ""
) -> Verdict:
    """Normalize ``raws`` as the normalize worker would (``tenants=None``: any tenant passes)."""
    from pipeline.stages.normalize import Normalizer
    from pipeline.stageset import normalize_config

    cfg = normalize_config(s, tenants)
    if tenants is None:
        cfg.known_tenants = None
    n = len(raws)
    _, dead = Normalizer(cfg)(raws, topic, [-1] * n, range(n))
    v = Verdict(total=n, tenants_checked=tenants is not None)
    for d in dead:
        v.rejected[d.reason] += 1
    if dead:
        d = min(dead, key=lambda d: d.offset)
        v.first = (int(d.offset), d.reason, d.detail)
    return v


class Outcome:
    """Follows the events of one run through the pipeline: stored rows and dead letters.

    Create it *before* producing (it remembers where the DLQ topic ends). A run's events are
    recognised by ``marker`` (bytes every one of its raw events contains, e.g. the quoted
    event-id prefix) on the DLQ, and in ``metrics`` by tenant, hosts, event time and event-id
    prefix.
    """

    def __init__(
        self,
        s: Settings,
        marker: bytes,
        tenant: str,
        hosts: Sequence[str],
        id_prefix: str,
        since_ts: float,
    ) -> None:
        from confluent_kafka import TopicPartition

        from cli.preflight import kafka_quiet
        from pipeline import kafka as kq

        self.s, self.marker = s, marker
        self.tenant, self.hosts, self.id_prefix, self.since_ts = (
            tenant,
            list(hosts),
            id_prefix,
            since_ts,
        )
        self.dead: Counter[str] = Counter()
        self.stored = 0
        t = s.connect_timeout_s
        self._c = kq.consumer(s, f"eventops-tally-{uuid.uuid4().hex[:12]}", **kafka_quiet())
        md = self._c.list_topics(s.topic_dlq, timeout=t).topics[s.topic_dlq]
        tps = [TopicPartition(s.topic_dlq, p) for p in md.partitions]
        for tp in tps:
            tp.offset = self._c.get_watermark_offsets(tp, timeout=t)[1]
        self._c.assign(tps)

    def _read_dlq(self, wait_s: float) -> None:
        for m in self._c.consume(10_000, wait_s):
            if m.error() is not None or self.marker not in (m.value() or b""):
                continue
            reason = dict(m.headers() or []).get("reason", b"unknown")
            self.dead[reason.decode("utf-8", "replace")] += 1

    def _count_stored(self, conn) -> int:
        from storage.series import count_since

        return count_since(conn, self.tenant, self.hosts, self.since_ts, self.id_prefix)

    def settle(self, expected: int, quiet_s: float) -> int:
        """Follow until ``expected`` events are accounted for (stored + dead-lettered), or nothing
        changed for ``quiet_s`` seconds; returns how many are still unaccounted for."""
        from storage.connect import connect

        with connect(self.s, autocommit=True) as conn:
            last, changed = -1, time.monotonic()
            while True:
                self._read_dlq(0.5)
                self.stored = self._count_stored(conn)
                done = self.stored + sum(self.dead.values())
                if done >= expected:
                    return 0
                now = time.monotonic()
                if done != last:
                    last, changed = done, now
                elif now - changed >= quiet_s:
                    return expected - done

    def close(self) -> None:
        self._c.close()
