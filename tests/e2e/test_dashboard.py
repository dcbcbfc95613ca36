"""The dashboard in a real headless Chromium: a live anomaly arrives over SSE and is labelled.

Screenshots: tests/output/dashboard-*.png.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from pipeline.embedded import Bus, EmbeddedPipeline
from pipeline.simulate import Simulator
from storage.connect import connect
from storage.inventory import set_inventory
from storage.tenants import create_tenant
from tests.integration.api_support import Api, make_key, raw_event
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo(e2e_settings):
    s = e2e_settings
    tenant = "demo-e2e"
    conn = connect(s, autocommit=True)
    create_tenant(conn, tenant, "Browser test")
    for i in range(6):
        set_inventory(conn, tenant, f"host-{i:03d}", {"team": "payments", "env": "prod"})
    bus = Bus()
    pipe = EmbeddedPipeline(s, bus, source="e2e")
    # one hour of history, no injected anomaly yet: the page opens onto quiet hosts
    sim = Simulator(
        hosts=6, tenant=tenant, seed=3, interval=20.0, start=time.time() - 3600, anomaly_rate=0.0
    )
    chunk = []
    for evs in sim.events():
        chunk.extend(evs)
        if sim.start + sim.tick * sim.interval > time.time():
            break
    pipe.feed(chunk)
    api = Api(s, bus=bus)
    key = make_key(conn, tenant, "admin")
    yield s, conn, tenant, pipe, api, key
    api.stop()
    pipe.close()
    conn.close()


def test_live_anomaly_arrives_and_is_marked_false_positive(demo, browser, output_dir):
    s, conn, tenant, pipe, api, key = demo
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{api.url}/#key={key}")

    page.wait_for_selector("#live.on", timeout=15_000)
    page.wait_for_selector(".host[data-host='host-000']", timeout=10_000)
    page.wait_for_selector("#chart .uplot", timeout=10_000)
    assert "#key" not in page.url  # the key moved to localStorage, out of the address bar
    assert page.evaluate("localStorage.getItem('eventops.key')") == key
    # one hour of history is fewer windows than a series needs: its scores say they are warming
    note = page.wait_for_selector(".host[data-host='host-000'] .warming-note", timeout=10_000)
    assert note.inner_text().startswith("warming (confidence ")
    assert "warming (confidence " in page.inner_text("#series-list")
    chart = page.wait_for_selector("#chart-note:has-text('with an expected band')", timeout=10_000)
    banded = int(chart.inner_text().split("(")[1].split()[0])
    assert banded > 0, chart.inner_text()  # the band is drawn for every window that has one
    assert "latest score warming (confidence" in chart.inner_text()
    page.screenshot(path=str(output_dir / "dashboard-1-overview.png"), full_page=True)

    # inject an anomaly through the embedded pipeline: cpu 97 % on host-004
    _, _, stored = pipe.feed([raw_event(tenant, "host-004", 97.0, ts=datetime.now(UTC))])
    assert [a.kind for a in stored] == ["open"]
    alert_id = stored[0].alert_id
    item = page.wait_for_selector(f"#feed li[data-alert-id='{alert_id}']", timeout=10_000)
    assert "host-004" in item.inner_text() and "critical" in item.inner_text()
    page.wait_for_selector(".host[data-host='host-004'][data-level='critical']", timeout=10_000)
    page.screenshot(path=str(output_dir / "dashboard-2-live-alert.png"), full_page=True)

    item.query_selector("button.fp").click()
    page.wait_for_selector(
        f"#feed li[data-alert-id='{alert_id}'][data-feedback='false_positive']", timeout=10_000
    )
    row = wait_for(
        lambda: conn.execute(
            "SELECT label, tenant_id, key_id FROM feedback WHERE alert_id = %s", (alert_id,)
        ).fetchone(),
        10,
        what="feedback row",
    )
    assert row == ("false_positive", tenant, key.split("_")[1])
    page.wait_for_selector("#incidents li[data-incident-id]", timeout=10_000)
    page.screenshot(path=str(output_dir / "dashboard-3-feedback.png"), full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e or "TypeError" in e], errors
    page.close()


def test_a_silence_made_in_the_dashboard_marks_the_alert_and_its_delivery(
    demo, browser, output_dir
):
    from notify.channels import ChannelSpec
    from storage import notify as notify_repo
    from tests.integration.notify_support import Receiver, WorkerThread

    s, conn, tenant, pipe, api, key = demo
    rx = Receiver()
    spec = ChannelSpec.check("pager", "webhook", rx.url, None)
    rx.secret = spec.secret
    notify_repo.add_channel(conn, tenant, spec.name, spec.kind, spec.url, spec.secret, spec.filter)
    worker = WorkerThread(s.model_copy(update={"notify_poll_s": 0.05, "notify_refresh_s": 0.0}))
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{api.url}/#key={key}")
        page.wait_for_selector("#live.on", timeout=15_000)
        page.wait_for_selector("#channels li[data-channel='pager']", timeout=10_000)
        page.fill("#silence-matchers", "host=host-005")
        page.fill("#silence-comment", "deploy of host-005")
        page.click("#silence-form button[type=submit]")
        page.wait_for_selector(
            "#silences li[data-state='active']:has-text('host=host-005')", timeout=10_000
        )
        (sid,) = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM silences WHERE tenant_id = %s", (tenant,)
            ).fetchall()
        ]

        now = datetime.now(UTC)
        _, _, stored = pipe.feed([raw_event(tenant, "host-005", 97.0, ts=now)])
        (opened,) = [a for a in stored if a.kind == "open"]
        item = page.wait_for_selector(
            f"#feed li[data-alert-id='{opened.alert_id}'][data-state='silenced']", timeout=10_000
        )
        assert "silenced" in item.inner_text()
        # the worker kept it from the channel, and said why
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT state, silenced_by FROM deliveries WHERE alert_id = %s",
                    (opened.alert_id,),
                ).fetchone()
                == ("silenced", [sid])
            ),
            15,
            what="a silenced delivery",
        )
        item.query_selector("button.details").click()
        page.wait_for_selector(
            "#detail-panel:not([hidden]) table.deliveries tr[data-state='silenced']", timeout=10_000
        )
        page.screenshot(path=str(output_dir / "dashboard-4-silenced.png"), full_page=True)
        assert not [r for r in rx.accepted if r["body"]["data"]["host"] == "host-005"]

        # the resolution updates the alert's entry instead of adding one
        later = datetime.fromtimestamp(now.timestamp() + 1, UTC)
        pipe.feed([raw_event(tenant, "host-005", 20.0, ts=later)])
        page.wait_for_selector(
            f"#feed li[data-alert-id='{opened.alert_id}'][data-state='resolved']", timeout=10_000
        )
        assert page.locator(f"#feed li[data-alert-id='{opened.alert_id}']").count() == 1

        # expiring the silence from the dashboard
        page.click(f"#silences li[data-silence-id='{sid}'] button.expire")
        page.wait_for_selector("#silences li:has-text('no active silences')", timeout=10_000)
        page.screenshot(path=str(output_dir / "dashboard-5-expired.png"), full_page=True)
    finally:
        worker.stop()
        rx.close()
        page.close()
    assert not errors, errors
