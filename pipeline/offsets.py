"""Offset commits of a Kafka worker: asynchronous, cumulative, retried until they land.

Offsets are committed only after everything of their batch is durable (rows, checkpoints, dead
letters, published alert events). A commit refused because the worker lost its group
membership is not an error (the next owner replays from the last checkpoint or committed
offset); one refused because the coordinator is away is sent again once it is back.
:class:`OffsetCommits` is a mixin of :class:`pipeline.kafka_worker.KafkaWorker`.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.outages import kafka_transient

log = logging.getLogger(__name__)

# commit errors meaning "this member no longer owns its partitions" (session expired, rebalance)
_MEMBERSHIP_LOST = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._STATE,
    }
)


class OffsetCommits:
    """Commit handling of :class:`pipeline.kafka_worker.KafkaWorker`.

    Uses the worker's ``consumer``, ``health``, ``stats``, ``inputs`` and backoffs; keeps the
    newest offset wanted per partition in ``_commit_want`` until a commit of it succeeds.
    """

    def _commit(self, offsets) -> None:
        """Commit input offsets, asynchronously; the answer comes to :meth:`_on_commit`.

        A synchronous commit has no timeout in librdkafka: one in flight when the broker goes
        away blocks until it is back, and so would the worker (its polls included). Commits are
        cumulative, so an asynchronous one that fails loses nothing as long as the newest offset
        of each partition is eventually committed: :attr:`_commit_want` keeps it until a commit
        of it (or beyond) succeeds, and :meth:`_retry_commits` sends it again after a backoff.
        """
        if not offsets:  # (an idle close: rows and a checkpoint, no new input)
            return
        now = time.monotonic()
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > self._commit_want.get(key, (-1, 0.0))[0]:
                self._commit_want[key] = (tp.offset, now)
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:  # refused locally (no assignment, closing): as if answered
            self._on_commit(e.args[0] if e.args else None, offsets)

    def _on_commit(self, err: KafkaError | None, parts) -> None:
        """Answer to a commit (librdkafka's ``on_commit``, served by consume on this thread).

        Losing group membership on the way is not an error. A worker that was paused past its
        session timeout (GC, CPU starvation, SIGSTOP, a long outage) finds its membership gone
        when it commits. Its rows and checkpoints are already in PostgreSQL and idempotent, so
        the batch is not lost: the rebalance that follows revokes the partitions and whoever
        owns them next resumes from the checkpoint or the last committed offset, replaying at
        most what this commit would have covered. With the coordinator away (``_WAIT_COORD``,
        ``NOT_COORDINATOR`` …) the newest offsets are committed again once it is back.
        """
        now = time.monotonic()
        for tp in parts or []:
            e = err or tp.error
            key = (tp.topic, tp.partition)
            want = self._commit_want.get(key)
            current = want is not None and tp.offset >= want[0]
            if e is not None and not e.fatal() and e.code() in _MEMBERSHIP_LOST:
                if current:
                    del self._commit_want[key]
                self.stats.commit_failures += 1
                if not self._membership_warned:  # once per assignment
                    self._membership_warned = True
                    log.warning(
                        "offset commit refused (%s); the partitions' next owner replays "
                        "from the last checkpoint or committed offset",
                        e.str(),
                    )
                continue
            if not current:
                continue  # revoked meanwhile, or a newer offset of the partition is on its way
            if e is None:
                del self._commit_want[key]
                # proof that Kafka is back only from a commit sent after it went away
                if self.health.is_degraded("kafka") and want[1] > now - self.health.degraded_for(
                    "kafka"
                ):
                    self._kafka_recovered()
            elif kafka_transient(e):
                self.stats.outage_retries["kafka"] += 1
                self.health.degraded("kafka", f"offset commit: {e.str()}", "retrying")
                self._commit_retry_at = now + self._kafka_backoff.next()
            else:
                self._commit_error = e
        if not self._commit_want:
            self._commit_retry_at = 0.0

    def _retry_commits(self) -> None:
        """Send the newest offsets again after a commit failed (backoff), or give up."""
        if not self._commit_retry_at or time.monotonic() < self._commit_retry_at:
            return
        self._commit_retry_at = 0.0
        self._give_up("kafka")
        now = time.monotonic()
        offsets = []
        for (topic, part), (off, _) in self._commit_want.items():
            self._commit_want[(topic, part)] = (off, now)
            offsets.append(TopicPartition(topic, part, off))
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as e:
                self._on_commit(e.args[0] if e.args else None, offsets)

    def _commit_restored(self) -> None:
        """Commit the offsets of restored checkpoints that are ahead of the group's commits.

        A worker can write a batch and its checkpoint and then lose the commit (killed in
        between, or its membership expired). Its successor resumes at the checkpoint; when no
        input follows it, no batch would ever commit that position and the group would show
        lag for records that are stored. Runs when the worker is idle, after a batch-less poll.
        """
        topic, restored = self.inputs[0], self._restored
        try:
            committed = self.consumer.committed(
                [TopicPartition(topic, p) for p in restored], timeout=10
            )
        except KafkaException as e:  # coordinator busy or moving: try again when next idle
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if kafka_transient(err):
                self.health.degraded("kafka", f"committed offsets: {err.str()}", "waiting for it")
            else:
                log.warning("could not read committed offsets: %s", e)
            return
        self._restored = {}
        ahead = [
            TopicPartition(topic, tp.partition, restored[tp.partition])
            for tp in committed
            if restored[tp.partition] > tp.offset
        ]
        if ahead:
            log.info(
                "committing restored checkpoint offsets %s",
                {tp.partition: tp.offset for tp in ahead},
            )
            self._commit(ahead)
