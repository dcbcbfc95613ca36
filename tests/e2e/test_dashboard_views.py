"""The dashboard's views in a real headless Chromium: nothing of a tenant stays on screen after
its key is replaced, forgotten or refused; the chart's envelope shows a one-sample peak at its
true value and breaks at gaps, at every width; /docs works with no network; alert, series and
incident link to each other.

Screenshots: tests/output/views-*.png.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from pipeline.embedded import Bus, EmbeddedPipeline
from pipeline.simulate import Simulator
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, make_key, raw_event
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.e2e


def _history(tenant: str, hosts: int, seed: int, prefix: str) -> list[bytes]:
    """One hour of simulated history up to now, host names starting with ``prefix``."""
    sim = Simulator(
        hosts=hosts, tenant=tenant, seed=seed, interval=20.0, start=time.time() - 3600,
        anomaly_rate=0.0,
    )  # fmt: skip
    out: list[bytes] = []
    for evs in sim.events():
        out.extend(e.replace(b'"host-', f'"{prefix}-'.encode()) for e in evs)
        if sim.start + sim.tick * sim.interval > time.time():
            break
    return out


@pytest.fixture(scope="module")
def two(e2e_settings):
    """Tenants A (hosts alpha-*) and B (hosts bravo-*), each with history and an alert."""
    s = e2e_settings
    conn = connect(s, autocommit=True)
    names = {name: f"e2e-{name}-{uuid.uuid4().hex[:6]}" for name in "ab"}
    for name, tenant in names.items():  # before the pipeline, which reads the tenants once
        create_tenant(conn, tenant, f"Tenant {name.upper()}")
    bus = Bus()
    pipe = EmbeddedPipeline(s, bus, source="e2e-views")
    now = datetime.now(UTC)

    def series(host: str, keep) -> list[bytes]:  # A's: a sample every 20 s over the last hour
        return [
            raw_event(names["a"], host, v, ts=now - timedelta(seconds=3600 - 20 * i))
            for i in range(180)
            if (v := keep(i)) is not None
        ]

    # a peak of one sample 30 minutes ago among ordinary ones (a chart step holds ~3 samples),
    # and a series with a 20 minute hole
    extra = series("spiky", lambda i: 99.5 if i == 90 else 40.0 + (i % 3)) + series(
        "gappy", lambda i: None if 60 <= i < 120 else 40.0 + (i % 3)
    )
    evs = _history(names["a"], 3, 11, "alpha") + _history(names["b"], 3, 12, "bravo") + extra
    evs.sort(key=lambda e: datetime.fromisoformat(orjson.loads(e)["ts_event"]))  # in time
    _, dead, _ = pipe.feed(evs)
    assert not dead, dead[:1]
    tenants: dict = {"now": now.timestamp()}
    for name, prefix in (("a", "alpha"), ("b", "bravo")):
        tenant = names[name]
        _, _, stored = pipe.feed([raw_event(tenant, f"{prefix}-001", 97.0)])
        (opened,) = [a for a in stored if a.kind == "open"]
        tenants[name] = (tenant, prefix, make_key(conn, tenant, "admin"), opened.alert_id)
    api = Api(s, bus=bus)
    yield s, conn, pipe, api, tenants
    api.stop()
    pipe.close()
    conn.close()


def _page(browser, width=1400, height=1000):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


def _traces(page, prefix: str, tenant: str, key: str, alert_id: str) -> list[str]:
    """Which marks of a tenant the page still holds, in its text or its markup."""
    html = page.content()
    return [
        html[max(0, i - 120) : i + 40]
        for m in (prefix, tenant, key.split("_")[1], alert_id)
        if (i := html.find(m)) >= 0
    ]


def _use_key(page, key: str) -> None:
    page.fill("#keyinput", key)
    page.click("#keyform button[type=submit]")


def test_a_new_or_refused_key_leaves_nothing_of_the_previous_tenant(two, browser, output_dir):
    s, conn, pipe, api, t = two
    ta, pa, ka, aa = t["a"]
    tb, pb, kb, ab = t["b"]
    page, errors = _page(browser)
    page.goto(f"{api.url}/#key={ka}")
    page.wait_for_selector("#live.on", timeout=15_000)
    page.wait_for_selector(f"#feed li[data-alert-id='{aa}']", timeout=10_000)
    page.wait_for_selector("#chart .uplot", timeout=10_000)
    page.wait_for_selector("#incidents li[data-incident-id]", timeout=10_000)
    page.click(f"#feed li[data-alert-id='{aa}'] button.details")
    page.wait_for_selector(f"#detail-panel:not([hidden]) .alert-detail[data-alert-id='{aa}']")
    assert _traces(page, pa, ta, ka, aa)  # the marks are found where they are

    # an answer of A's still in flight when the key changes is never drawn: hold A's next
    # /hosts/<host> request, switch to B, then let it through
    held = []
    page.route(
        "**/hosts/**",
        lambda route: (
            held.append(route)
            if route.request.headers.get("authorization") == f"Bearer {ka}"
            else route.continue_()
        ),
    )
    page.click(f".host[data-host='{pa}-002']")
    wait_for(lambda: page.evaluate("1") and held, 10, what="A's request held")
    _use_key(page, kb)
    page.wait_for_selector(f".host[data-host='{pb}-000']", timeout=10_000)
    page.wait_for_selector(f"#feed li[data-alert-id='{ab}']", timeout=10_000)
    page.wait_for_selector("#chart .uplot", timeout=10_000)
    for r in held:
        try:
            r.continue_()
        except Exception:  # the page gave the request up (aborted): nothing to answer
            pass
    page.evaluate("new Promise((r) => setTimeout(r, 50))")  # let any answer be handled
    page.unroute("**/hosts/**")
    assert _traces(page, pa, ta, ka, aa) == []
    assert _traces(page, pb, tb, kb, ab)
    page.screenshot(path=str(output_dir / "views-1-tenant-b.png"), full_page=True)

    # a refused key: B's views go too, and the error says what to do
    _use_key(page, "eo_notakey_" + "x" * 20)
    page.wait_for_selector("#error:not([hidden]):has-text('refused')", timeout=10_000)
    assert not page.is_visible("#main")
    assert _traces(page, pb, tb, kb, ab) == []
    assert page.locator("#hosts .host, #feed li, #incidents li, #chart .uplot").count() == 0
    page.screenshot(path=str(output_dir / "views-2-refused.png"), full_page=True)

    # back to A, then "Forget key"
    _use_key(page, ka)
    page.wait_for_selector(f"#feed li[data-alert-id='{aa}']", timeout=10_000)
    assert page.is_visible("#main") and not page.is_visible("#error")
    page.click("#logout")
    page.wait_for_selector("#error:not([hidden]):has-text('No API key')", timeout=5_000)
    assert not page.is_visible("#main")
    assert _traces(page, pa, ta, ka, aa) == []
    assert page.evaluate("localStorage.getItem('eventops.key')") is None
    page.context.close()
    assert not [e for e in errors if "TypeError" in e or "Uncaught" in e], errors


def x_in(x: float, lo: float, hi: float) -> bool:
    return lo < x < hi


def _legend(page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries(
             [...document.querySelectorAll('#chart .u-legend .u-series')].map((tr) => [
               tr.querySelector('.u-label')?.textContent,
               tr.querySelector('.u-value')?.textContent]))"""
    )


def _hover(page, x_value: float) -> None:
    box = page.locator("#chart .u-over").bounding_box()
    left = page.evaluate(f"state.chart.valToPos({x_value}, 'x')")
    page.mouse.move(box["x"] + left, box["y"] + box["height"] / 2)


def test_a_one_sample_peak_shows_at_its_true_value_and_gaps_break_the_lines(
    two, browser, output_dir
):
    s, conn, pipe, api, t = two
    ta, _, ka, _ = t["a"]
    now = datetime.fromtimestamp(t["now"], UTC)
    shots = {}
    for width in (360, 800, 1400):
        page, errors = _page(browser, width=width, height=900)
        page.goto(f"{api.url}/#key={ka}")
        page.wait_for_selector("#live.on", timeout=15_000)
        page.goto(f"{api.url}/#series=spiky/cpu_load")
        page.wait_for_selector("#chart[data-series='spiky/cpu_load'] .uplot", timeout=10_000)
        page.evaluate("document.getElementById('chart').scrollIntoView()")
        # nothing wider than the screen, the chart inside its panel
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        chart_w = page.locator("#chart canvas").bounding_box()["width"]
        panel_w = page.locator("#series-panel").bounding_box()["width"]
        assert chart_w <= panel_w, (chart_w, panel_w)
        data = page.evaluate("state.chartData")
        xs, mins, maxs, means = data[0], data[1], data[2], data[3]
        top = max(v for v in maxs if v is not None)
        assert top == pytest.approx(99.5)
        i = maxs.index(top)
        assert means[i] < 90 and mins[i] < 90  # the mean alone would hide the peak
        _hover(page, xs[i])
        legend = _legend(page)
        assert legend["max"] == "99.50", legend
        # the band and the score are read at the same point as the values
        assert legend["mean"] not in ("–", "", None) and legend["score"] not in ("–", "", None)
        assert legend["expected low"] not in ("–", "", None), legend
        shot = output_dir / f"views-3-envelope-{width}px.png"
        page.screenshot(path=str(shot), full_page=True)
        shots[width] = shot
        if width == 1400:
            page.goto(f"{api.url}/#series=gappy/cpu_load")
            page.wait_for_selector("#chart[data-series='gappy/cpu_load'] .uplot", timeout=10_000)
            data = page.evaluate("state.chartData")
            xs, means, lows = data[0], data[3], data[4]  # (a step is < 60 s)
            t_now = now.timestamp()
            hole = [k for k, x in enumerate(xs) if t_now - 2420 < x < t_now - 1260]
            # no value inside the hole, and a break (null) in the line and in the band there
            assert all(means[k] is None for k in hole if x_in(xs[k], t_now - 2340, t_now - 1260))
            assert any(means[k] is None and lows[k] is None for k in hole), [
                (xs[k], means[k]) for k in hole
            ]
            assert means[0] is not None and means[-1] is not None
            page.screenshot(path=str(output_dir / "views-4-gap.png"), full_page=True)
        page.context.close()
        assert not [e for e in errors if "TypeError" in e or "Uncaught" in e], errors
    assert all(p.exists() for p in shots.values())


def test_docs_render_with_no_network(two, browser):
    s, conn, pipe, api, t = two
    page, errors = _page(browser)
    outside: list[str] = []

    def only_local(route):
        url = route.request.url
        if url.startswith(api.url):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{api.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)
    assert page.locator(".swagger-ui .opblock").count() > 20
    assert "EventOps API" in page.inner_text(".swagger-ui .info")
    page.goto(f"{api.url}/redoc")  # the old address leads to the same page
    page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)
    page.context.close()
    assert outside == []
    assert not [e for e in errors if "Content Security Policy" in e or "Uncaught" in e], errors


def test_alert_series_and_incident_link_to_each_other(two, browser, output_dir):
    s, conn, pipe, api, t = two
    ta, pa, ka, aa = t["a"]
    page, errors = _page(browser, height=1400)
    page.goto(f"{api.url}/#key={ka}")
    page.wait_for_selector("#live.on", timeout=15_000)
    # from the feed: details (1 click), then the series at that time (2 clicks)
    page.click(f"#feed li[data-alert-id='{aa}'] button.details")
    detail = f"#detail-panel .alert-detail[data-alert-id='{aa}']"
    page.wait_for_selector(detail)
    assert f"#alert={aa}" in page.url
    page.click(f"{detail} a.to-series")
    page.wait_for_selector(
        f"#chart[data-series='{pa}-001/cpu_load'] .u-title:has-text('around')", timeout=10_000
    )
    assert "#series=" in page.url
    # the series lists its alerts: back to the alert
    page.evaluate("document.getElementById('detail').replaceChildren()")
    page.click(f"#chart-alerts a[data-alert-id='{aa}']")
    page.wait_for_selector(detail)
    # alert → its incident, whose root links to the series again
    page.click(f"{detail} a.to-incident")
    page.wait_for_selector("#detail-title:has-text('Incident on')", timeout=10_000)
    assert f"#incident=inc-{aa}" in page.url
    page.wait_for_selector(f"#detail .alert-detail[data-alert-id='{aa}']")
    page.screenshot(path=str(output_dir / "views-5-incident.png"), full_page=True)
    page.click("#detail > p a.to-series")
    page.wait_for_selector(f"#chart[data-series='{pa}-001/cpu_load'] .uplot", timeout=10_000)
    # the browser's back button goes back through the views
    page.go_back()
    page.wait_for_selector("#detail-title:has-text('Incident on')", timeout=10_000)
    # an address opened directly in a new tab of the same browser (a link in a notification)
    page2 = page.context.new_page()
    errors2: list[str] = []
    page2.on("pageerror", lambda e: errors2.append(str(e)))
    page2.goto(f"{api.url}/#incident=inc-{aa}")
    page2.wait_for_selector(f"#detail .alert-detail[data-alert-id='{aa}']", timeout=15_000)
    page.context.close()
    assert not [e for e in errors + errors2 if "TypeError" in e or "Uncaught" in e], errors
