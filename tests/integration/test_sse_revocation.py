"""SSE streams end when their key is revoked or their tenant deleted (issue 8 item 4).

Regression: a stream opened before its key was revoked kept receiving (809 more events). Now a
stream sends a batch only after a key lookup that started after the batch was read, so nothing
stored after the revocation is delivered; an idle stream notices within 2 x
``EVENTOPS_SSE_AUTH_CHECK_S`` (default 2 s: the bound asserted here is 4 s plus scheduling slack).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg.types.json import Jsonb

from core.settings import REPO_ROOT
from pipeline.embedded import Bus
from serving.config import ServingSettings
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, alert_event, hdr, store_alerts
from tests.integration.conftest import SseClient, settings_env, wait_for

pytestmark = pytest.mark.integration

BOUND_S = 2 * ServingSettings.model_fields["sse_auth_check_s"].default + 1.0


@pytest.fixture
def env(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db, "sse_heartbeat_s": 0.5})
    conn = connect(s, autocommit=True)
    tenant = f"tk{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    bus = Bus()
    # the request-path cache stays at its default (5 s): streams must not depend on it
    api = Api(s, bus=bus, serving=ServingSettings(rate_limit_rps=0, _env_file=None))
    yield s, conn, tenant, bus, api
    api.stop()
    conn.close()


def new_key(conn, tenant: str) -> tuple[str, str]:
    from serving import auth

    return auth.create_key(conn, tenant, "read", label="revocation test")


def publish(s, bus: Bus, tenant: str, host: str) -> int:
    _, stored = store_alerts(s, [alert_event(tenant, host, ts=datetime.now(UTC))])
    bus.publish(stored[0])
    return stored[0].seq


def revoke_with_cli(s, key_id: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "revoke", key_id],
        env=settings_env(s),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def ended(c: SseClient) -> bool:
    return not c.thread.is_alive()


def test_alert_stream_ends_when_its_key_is_revoked_and_sends_nothing_stored_after(env):
    s, conn, tenant, bus, api = env
    key_id, key = new_key(conn, tenant)
    _, other_key = new_key(conn, tenant)  # another key of the same tenant keeps streaming
    c = SseClient(api.url + "/alerts/stream", headers=hdr(key))
    keep = SseClient(api.url + "/alerts/stream", headers=hdr(other_key))
    assert c.connected.wait(10) and keep.connected.wait(10)
    before = publish(s, bus, tenant, "before")
    wait_for(lambda: len(c.events) == 1, 10, what="the alert before the revocation")

    revoke_with_cli(s, key_id)
    t0 = time.monotonic()
    after = [publish(s, bus, tenant, f"after{i}") for i in range(3)]  # stored after the revocation
    wait_for(lambda: ended(c), BOUND_S + 5, what="the revoked key's stream to end")
    took = time.monotonic() - t0
    alerts = [int(e["id"]) for e in c.events if e["event"] == "alert"]
    assert alerts == [before], f"delivered after the revocation: {set(alerts) & set(after)}"
    assert c.events[-1]["event"] == "end" and c.events[-1]["data"]["reason"] == "revoked"
    assert took <= BOUND_S, f"stream ended {took:.1f}s after the revocation"
    print(f"alert stream ended {took:.2f}s after `eventops keys revoke` returned")

    wait_for(lambda: len(keep.events) == 4, 10, what="the other key's stream")
    assert [int(e["id"]) for e in keep.events] == [before, *after]
    keep.close()
    r = httpx.get(api.url + "/alerts/stream", headers=hdr(key), timeout=10)
    assert r.status_code == 401


def test_idle_alert_stream_ends_within_the_bound_when_its_tenant_is_deleted(env):
    s, conn, tenant, bus, api = env
    _, key = new_key(conn, tenant)
    c = SseClient(api.url + "/alerts/stream", headers=hdr(key))
    assert c.connected.wait(10)
    time.sleep(0.2)  # the stream has passed its first key check
    conn.execute("DELETE FROM tenants WHERE tenant_id = %s", (tenant,))  # its keys go with it
    t0 = time.monotonic()
    wait_for(lambda: ended(c), BOUND_S + 5, what="the deleted tenant's stream to end")
    took = time.monotonic() - t0
    assert c.events and c.events[-1]["data"]["reason"] == "revoked"
    assert took <= BOUND_S, f"stream ended {took:.1f}s after the tenant was deleted"
    print(f"idle alert stream ended {took:.2f}s after its tenant was deleted")


def test_score_stream_ends_when_its_key_is_revoked_and_sends_nothing_stored_after(env):
    s, conn, tenant, bus, api = env
    key_id, key = new_key(conn, tenant)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)

    def score(i: int) -> datetime:
        ws = start + timedelta(minutes=i)
        conn.execute(
            "INSERT INTO scores"
            " (tenant_id, host, metric, window_start, window_end, score, severity, explanation)"
            " VALUES (%s, 'h', 'cpu_load', %s, %s, 0.5, 'ok', %s)",
            (tenant, ws, ws + timedelta(minutes=1), Jsonb({"i": i})),
        )
        return ws

    score(-10)  # the series exists (the route answers 404 for unknown series)
    c = SseClient(api.url + "/series/h/cpu_load/scores/stream", headers=hdr(key))
    assert c.connected.wait(10)
    score(0)
    wait_for(lambda: len(c.events) == 1, 10, what="the score before the revocation")

    conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s", (key_id,))
    t0 = time.monotonic()
    for i in range(1, 4):
        score(i)
    wait_for(lambda: ended(c), BOUND_S + 5, what="the revoked key's score stream to end")
    took = time.monotonic() - t0
    scores = [e["data"]["explanation"]["i"] for e in c.events if e["event"] == "score"]
    assert scores == [0]
    assert c.events[-1]["event"] == "end" and c.events[-1]["data"]["reason"] == "revoked"
    assert took <= BOUND_S, f"score stream ended {took:.1f}s after the revocation"
    print(f"score stream ended {took:.2f}s after the revocation")
