"""Each stage in its own consumer group, chained through the topics, gives the same result."""

from __future__ import annotations

import orjson
import pytest

from pipeline import kafka as kq
from pipeline.chain import parse_chain
from storage.connect import count_rows
from storage.inventory import set_inventory
from tests.integration.conftest import consume_all, wait_for
from tests.integration.test_quickstart import sample_event


def test_split_stages_through_topics(settings, conn, tenant, start_worker):
    set_inventory(conn, tenant, "host-a", {"rack": "r1"})
    for stage in ("normalize", "enrich", "detect", "sink"):
        start_worker(stage)
    p = kq.producer(settings)
    kq.produce_all(
        p, settings.topic_raw, [sample_event(tenant), b"not json"], [f"{tenant}|host-a", None]
    )
    kq.flush(p)
    row = wait_for(
        lambda: conn.execute(
            "SELECT value, tags FROM metrics WHERE tenant_id = %s", (tenant,)
        ).fetchone(),
        40,
        what="metric row",
    )
    assert row == (92, {"dc": "eu1", "rack": "r1"})
    wait_for(
        lambda: (
            count_rows(conn, "alerts", "tenant_id = %s AND severity = 'critical'", (tenant,)) == 1
        ),
        40,
        what="alert row",
    )
    [m] = consume_all(settings, settings.topic_alert, 1)
    assert orjson.loads(m.value())["kind"] == "open"
    [d] = consume_all(settings, settings.topic_dlq, 1)
    assert d.value() == b"not json" and dict(d.headers())["reason"] == b"bad_json"
    enriched = consume_all(settings, settings.topic_enriched, 1)
    assert orjson.loads(enriched[0].value())["tags"]["rack"] == "r1"


@pytest.mark.parametrize("spec", ["sink,detect", "normalize,detect", "bogus", ""])
def test_bad_chain_is_refused(spec):
    with pytest.raises(ValueError):
        parse_chain(spec)
