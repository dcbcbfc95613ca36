"""A metric row PostgreSQL refuses costs that row (``store_refused``), not its batch or worker.

normalize makes every row storable (tests/unit/test_poison.py); this is the net below it: should
a row it let through still be refused (an unknown gap, a future column constraint), the sink
finds it by bisection, stores the rest of the batch and the runner dead-letters it with its
original bytes.
"""

from __future__ import annotations

import time

import orjson

from storage.sink import Sink
from tests.integration.test_sink_event_ids import batch, stored


def test_sink_stores_the_batch_around_rows_postgres_refuses(conn, tenant):
    b = batch(tenant, [f"e{i}" for i in range(8)])
    b.unit[2] = "m\x00s"  # text cannot hold NUL
    b.tags[5] = {"k": "a\x00b"}  # nor can JSONB
    sink = Sink(conn)
    n, _ = sink.write(b)
    assert n == 6
    assert sink.refused.tolist() == [2, 5]
    assert [r[0] for r in stored(conn, tenant)] == [f"e{i}" for i in (0, 1, 3, 4, 6, 7)]
    # a replay of the same batch: the stored rows are dropped, the refused ones refused again
    n, _ = sink.write(b)
    assert n == 0 and sink.refused.tolist() == [2, 5] and sink.collided.size == 0


def test_embedded_runner_dead_letters_a_refused_row_with_its_original_bytes(settings, conn, tenant):
    """A fault-injected normalizer lets one NUL through, as a gap in its checks would."""
    from pipeline.embedded import EmbeddedPipeline

    now = time.time() - 30
    raws = [
        orjson.dumps(
            {
                "tenant_id": tenant,
                "host": "h1",
                "metric": "cpu_load",
                "value": i,
                "ts_event": now + i,
                "event_id": f"r{i}",
            }
        )
        for i in range(5)
    ]
    pipe = EmbeddedPipeline(settings)
    real = pipe.stages.normalizer

    def leaky(*a, **kw):
        b, dead = real(*a, **kw)
        b.unit[b.event_id == "r3"] = "\x00"
        return b, dead

    pipe.stages.normalizer = leaky
    try:
        n, dead, _ = pipe.feed(raws)
    finally:
        pipe.close()
    assert n == 4
    assert [(d.reason, d.stage, d.raw, d.offset) for d in dead] == [
        ("store_refused", "sink", raws[3], 3)
    ]
    rows = conn.execute(
        "SELECT source, raw FROM dead_letters WHERE reason = 'store_refused' AND raw = %s",
        (raws[3],),
    ).fetchall()
    assert rows == [(f"{pipe.source}:0:3", raws[3])]
    assert sorted(r[0] for r in stored(conn, tenant)) == ["r0", "r1", "r2", "r4"]
