"""An alert names its incident (``GET /alerts/{id}`` → ``incident_id``), the same incident that
``GET /incidents`` lists and ``GET /incidents/{id}`` returns: the dashboard's alert → incident
link."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipeline.embedded import Bus, EmbeddedPipeline
from serving.config import ServingSettings
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, hdr, make_key, raw_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inc(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db})
    conn = connect(s, autocommit=True)
    tenant = f"ti{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    bus = Bus()
    pipe = EmbeddedPipeline(s, bus, source="incidents")
    api = Api(s, bus=bus, serving=ServingSettings(_env_file=None, incident_gap_s=60))
    yield s, conn, tenant, pipe, api, make_key(conn, tenant)
    api.stop()
    pipe.close()
    conn.close()


def _alert(pipe, tenant, host, at, metric="cpu_load") -> str:
    """A rule alert opened at ``at`` and resolved 10 s later; its id."""
    _, _, stored = pipe.feed([raw_event(tenant, host, 97.0, metric=metric, ts=at)])
    (opened,) = [a for a in stored if a.kind == "open"]
    pipe.feed([raw_event(tenant, host, 20.0, metric=metric, ts=at + timedelta(seconds=10))])
    return opened.alert_id


def test_an_alert_names_the_incident_that_lists_it(inc):
    s, conn, tenant, pipe, api, key = inc
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    first = _alert(pipe, tenant, "h1", t0)
    second = _alert(pipe, tenant, "h1", t0 + timedelta(seconds=40))  # within the gap: joins
    later = _alert(pipe, tenant, "h1", t0 + timedelta(minutes=10))  # past the gap: a new one
    other_host = _alert(pipe, tenant, "h2", t0 + timedelta(seconds=20))

    def incident_of(alert_id: str) -> str:
        r = httpx.get(f"{api.url}/alerts/{alert_id}", headers=hdr(key))
        assert r.status_code == 200, r.text
        return r.json()["incident_id"]

    assert incident_of(first) == incident_of(second) == f"inc-{first}"
    assert incident_of(later) == f"inc-{later}"
    assert incident_of(other_host) == f"inc-{other_host}"
    listed = httpx.get(f"{api.url}/incidents", headers=hdr(key)).json()
    assert {i["incident_id"] for i in listed} == {
        f"inc-{first}",
        f"inc-{later}",
        f"inc-{other_host}",
    }
    detail = httpx.get(f"{api.url}/incidents/inc-{first}", headers=hdr(key)).json()
    assert {a["alert_id"] for a in detail["alerts"]} == {first, second}
