"""Detect-stage checkpoints: state of each input partition and the offset it is valid up to.

The sink saves them in the transaction of the rows they cover (:meth:`storage.sink.Sink.write`);
a worker loads them when it is assigned a partition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Detect state of one input partition and the offset it is valid up to (exclusive)."""

    group: str
    topic: str
    partition: int
    next_offset: int
    state: bytes


def save_checkpoints(conn: psycopg.Connection, cps: Iterable[Checkpoint]) -> None:
    for c in cps:
        conn.execute(
            "INSERT INTO checkpoints"
            " (consumer_group, topic, partition, next_offset, state, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (consumer_group, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, state = EXCLUDED.state,"
            " updated_at = now()",
            (c.group, c.topic, c.partition, c.next_offset, c.state),
        )


def load_checkpoints(
    conn: psycopg.Connection, group: str, topic: str
) -> dict[int, tuple[int, bytes | None, float]]:
    """partition -> (next offset, state, seconds since it was stored by the database's clock)
    of a consumer group's checkpoints on a topic."""
    rows = conn.execute(
        "SELECT partition, next_offset, state,"
        " greatest(extract(epoch FROM now() - updated_at), 0)::float8 FROM checkpoints"
        " WHERE consumer_group = %s AND topic = %s",
        (group, topic),
    ).fetchall()
    conn.commit()
    return {p: (o, bytes(st) if st is not None else None, age) for p, o, st, age in rows}
