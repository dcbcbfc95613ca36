"""The notification API: channels (admin, secret once), silences (marking alerts), deliveries."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.api_support import hdr, make_key
from tests.integration.conftest import wait_for
from tests.integration.notify_support import Receiver, WorkerThread, cpu_incident, resolve_cpu

pytestmark = pytest.mark.integration


def test_channels_silences_and_the_delivery_log(settings, conn, tenant, api_server):
    api = api_server()
    read, admin = make_key(conn, tenant, "read"), make_key(conn, tenant, "admin")
    rx = Receiver()
    with httpx.Client(base_url=api.url, timeout=10) as c:
        body = {
            "name": "ops-hook",
            "kind": "webhook",
            "url": rx.url,
            "filter": {"min_severity": "warning", "matchers": ["host!=quiet-1"]},
        }
        assert c.post("/channels", json=body, headers=hdr(read)).status_code == 403
        r = c.post("/channels", json=body, headers=hdr(admin))
        assert r.status_code == 201, r.text
        rx.secret = r.json()["secret"]
        assert rx.secret.startswith("whsec_")
        again = c.post("/channels", json=body, headers=hdr(admin))
        assert again.status_code == 409 and "exists" in again.json()["detail"]
        listed = c.get("/channels", headers=hdr(read)).json()
        assert [x["name"] for x in listed] == ["ops-hook"] and "secret" not in listed[0]
        assert rx.secret not in c.get("/channels", headers=hdr(read)).text
        bad = c.post(
            "/channels", headers=hdr(admin), json={**body, "name": "x", "url": "ftp://nowhere"}
        )
        assert bad.status_code == 422 and "url" in str(bad.json()["detail"])
        bad = c.post(
            "/silences", headers=hdr(read), json={"matchers": ["host=~(("], "duration_s": 60}
        )
        assert bad.status_code == 400 and "regex" in bad.json()["detail"]
        bad = c.post("/silences", headers=hdr(read), json={"matchers": []})
        assert bad.status_code == 400 and "needs an end" in bad.json()["detail"]
        bad = c.post(
            "/silences", headers=hdr(read), json={"schedule": "every day", "duration_s": 60}
        )
        assert bad.status_code == 400 and "cron" in bad.json()["detail"]

        r = c.post(
            "/silences",
            headers=hdr(read),
            json={
                "matchers": [{"name": "host", "op": "=", "value": "quiet-2"}],
                "duration_s": 3600,
                "comment": "deploy",
            },
        )
        assert r.status_code == 201, r.text
        sil = r.json()
        assert sil["state"] == "active" and sil["author"].startswith("key ")
        mw = c.post(
            "/silences",
            headers=hdr(read),
            json={"schedule": "0 3 * * 0", "duration_s": 7200, "comment": "weekly"},
        )
        assert mw.status_code == 201 and mw.json()["kind"] == "maintenance"
        assert mw.json()["ends_at"] is None

        w = WorkerThread(
            settings.model_copy(update={"notify_poll_s": 0.05, "notify_refresh_s": 0.0})
        )
        try:
            now = time.time()
            cpu_incident(settings, tenant, "quiet-2", start=now - 100, resolve=False)
            cpu_incident(settings, tenant, "loud-1", start=now - 90, resolve=False)
            wait_for(lambda: len(rx.accepted) == 1, 30, what="loud-1's alert delivered")
            alerts = {a["host"]: a for a in c.get("/alerts", headers=hdr(read)).json()}
            assert alerts["quiet-2"]["silenced_by"] == [sil["id"]]
            assert alerts["loud-1"]["silenced_by"] == []
            one = c.get(f"/alerts/{alerts['quiet-2']['alert_id']}", headers=hdr(read)).json()
            assert one["silenced_by"] == [sil["id"]]
            wait_for(
                lambda: c.get(
                    f"/alerts/{alerts['quiet-2']['alert_id']}/deliveries", headers=hdr(read)
                ).json(),
                30,
                what="the muted delivery",
            )
            (d,) = c.get(
                f"/alerts/{alerts['quiet-2']['alert_id']}/deliveries", headers=hdr(read)
            ).json()
            assert d["state"] == "silenced" and d["silenced_by"] == [sil["id"]]
            (d,) = c.get(
                f"/alerts/{alerts['loud-1']['alert_id']}/deliveries", headers=hdr(read)
            ).json()
            assert d["state"] == "delivered" and d["channel"] == "ops-hook"
            (a,) = d["log"]
            assert a["status_code"] == 200 and a["latency_ms"] > 0

            # expiring the silence releases the firing alert
            r = c.post(f"/silences/{sil['id']}/expire", headers=hdr(read))
            assert r.status_code == 200 and r.json()["state"] == "expired"
            assert c.post(f"/silences/{sil['id']}/expire", headers=hdr(read)).status_code == 404
            wait_for(lambda: len(rx.accepted) == 2, 30, what="the released alert")
            assert rx.accepted[1]["body"]["data"]["host"] == "quiet-2"
            assert (
                c.get(f"/alerts/{alerts['quiet-2']['alert_id']}", headers=hdr(read)).json()[
                    "silenced_by"
                ]
                == []
            )
            # once resolved, an alert that opened inside the silence stays marked by it
            resolve_cpu(settings, tenant, "quiet-2", now - 95)
            got = c.get(f"/alerts/{alerts['quiet-2']['alert_id']}", headers=hdr(read)).json()
            assert got["state"] == "resolved" and got["silenced_by"] == [sil["id"]]
            listed = c.get("/silences", headers=hdr(read)).json()
            assert [x["kind"] for x in listed] == ["maintenance"]
            assert len(c.get("/silences?expired=true", headers=hdr(read)).json()) == 2
        finally:
            w.stop()
            rx.close()
        assert c.delete("/channels/ops-hook", headers=hdr(admin)).status_code == 204
        assert c.delete("/channels/ops-hook", headers=hdr(admin)).status_code == 404
