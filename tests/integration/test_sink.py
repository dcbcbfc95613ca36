"""The sink's COPY fast path: exact bytes for awkward strings, and replays fall back to ON
CONFLICT."""

from __future__ import annotations

import uuid

import numpy as np

from core.batch import MetricBatch
from storage.connect import count_rows
from storage.sink import Sink


def obj(xs):
    a = np.empty(len(xs), dtype=object)
    a[:] = xs
    return a


def batch(tenant: str, ids: list[str], unit: str = "u", tags=None) -> MetricBatch:
    n = len(ids)
    return MetricBatch(
        obj(ids),
        obj([tenant] * n),
        obj(["h"] * n),
        obj(["m"] * n),
        np.arange(n, dtype=float) + 0.5,
        1.7e9 + np.arange(n, dtype=float),
        obj([unit] * n),
        obj([tags] * n),
    )


def test_copy_keeps_tabs_newlines_and_backslashes_in_ids_units_and_tags(conn, tenant):
    sink = Sink(conn)
    eid = f"a\tb\\c\nd\re-{uuid.uuid4().hex}"
    tags = {"k": 'x\\y"z\n\t', "n": 1.5}
    assert sink.write(batch(tenant, [eid], unit="per\\s\t", tags=tags))[0] == 1
    row = conn.execute(
        "SELECT event_id, unit, tags, value FROM metrics WHERE tenant_id = %s", (tenant,)
    ).fetchone()
    assert row == (eid, "per\\s\t", tags, 0.5)


def test_replayed_batch_is_written_again_without_duplicates(conn, tenant):
    sink = Sink(conn)
    ids = [f"{tenant}-{i}" for i in range(100)]
    assert sink.write(batch(tenant, ids[:60]))[0] == 60
    # overlaps the stored rows: the fast path hits the unique key, the ON CONFLICT path stores
    # the rest
    assert sink.write(batch(tenant, ids))[0] == 40
    assert count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == 100
