"""Consumer lag and checkpoint age of a Kafka worker, from the consumer's own statistics.

``eventops_consumer_lag{topic,partition}`` is librdkafka's ``consumer_lag`` of each partition
the worker owns: the partition's end offset (as the last fetch response carried it) minus the
group's *committed* offset, that is the records not stored yet (offsets are committed after the
database commit). ``eventops_checkpoint_age_seconds{partition}`` is the time since the detect
state of an owned input partition was last stored or, until this process stores one, since
the checkpoint it restored was.

Both are set every :data:`EVERY_S` from the statistics callback librdkafka serves inside the
worker's own ``consume`` (``statistics.interval.ms``): no request of its own, no other client,
no call on the consumer. Two earlier designs failed the outage fault suite on a loaded machine
after a broker restart: a cached watermark lookup on the consumer from the worker loop made
its rejoin or its fetches stall, and an ``AdminClient`` of the worker's own (list offsets on a
thread) aborted the process in a librdkafka assertion when the broker went away with a request
in flight. The series of a revoked partition disappear at once and are not set again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import orjson

from core.telemetry import CHECKPOINT_AGE, CONSUMER_LAG, forget

log = logging.getLogger(__name__)

#: seconds between two statistics callbacks (``statistics.interval.ms``)
EVERY_S = 5.0

Key = tuple[str, int]


class PartitionGauges:
    """The two per-partition gauges of one worker (see the module's docstring).

    The worker calls everything here on its own thread; the lock keeps a scrape's reads and an
    in-process test's calls consistent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned: set[Key] = set()
        self._lagged: set[Key] = set()  # the lag series set
        self._saved: dict[int, float] = {}  # input partition -> wall time of its checkpoint

    @staticmethod
    def consumer_config() -> dict[str, object]:
        """What the consumer needs for :meth:`on_stats` to be called."""
        return {"statistics.interval.ms": int(EVERY_S * 1000)}

    def assigned(self, parts: Iterable[Key]) -> None:
        with self._lock:
            self._owned.update(parts)

    def revoked(self, parts: Iterable[Key]) -> None:
        with self._lock:
            for key in parts:
                self._owned.discard(key)
                if key in self._lagged:
                    self._lagged.discard(key)
                    forget(CONSUMER_LAG, key[0], str(key[1]))
                if self._saved.pop(key[1], None) is not None:
                    forget(CHECKPOINT_AGE, str(key[1]))

    def checkpoint_stored(self, partitions: Iterable[int], age_s: float = 0.0) -> None:
        """The detect state of ``partitions`` was stored ``age_s`` seconds ago."""
        at = time.time() - age_s
        with self._lock:
            for p in partitions:
                self._saved[p] = at
                CHECKPOINT_AGE.labels(str(p)).set(age_s)

    def clear(self) -> None:
        """The worker stops: every series of its partitions goes."""
        with self._lock:
            for topic, p in self._lagged:
                forget(CONSUMER_LAG, topic, str(p))
            for p in self._saved:
                forget(CHECKPOINT_AGE, str(p))
            self._owned.clear()
            self._lagged.clear()
            self._saved.clear()

    def on_stats(self, raw: str) -> None:
        """librdkafka's ``stats_cb`` (a JSON document); never raises."""
        try:
            self.update(orjson.loads(raw))
        except Exception:  # noqa: BLE001 - telemetry must never take the worker down
            log.debug("consumer statistics not understood", exc_info=True)

    def update(self, stats: dict) -> None:
        wall = time.time()
        with self._lock:
            for topic, t in (stats.get("topics") or {}).items():
                for pid, part in (t.get("partitions") or {}).items():
                    key = (topic, int(pid))
                    lag = part.get("consumer_lag", -1)
                    if key in self._owned and isinstance(lag, int) and lag >= 0:
                        CONSUMER_LAG.labels(topic, pid).set(lag)
                        self._lagged.add(key)
            for p, at in self._saved.items():
                CHECKPOINT_AGE.labels(str(p)).set(max(0.0, wall - at))
