"""Inputs that made the API answer 500 (issue 8, item 5), and the classes they belong to.

Every request the OpenAPI describes gets a 2xx or a 4xx with a message: time parameters at
the calendar's edges, text PostgreSQL cannot store (NUL, lone surrogates), huge integers,
undocumented methods, and ``POST /ingest`` bodies whose events normalize must dead-letter.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest

from pipeline.embedded import Bus
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, hdr, make_key, seed
from tests.integration.conftest import consume_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def w(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db})
    conn = connect(s, autocommit=True)
    tenant = f"ti{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    seeded = seed(s, conn, tenant, "INP", hosts=("host-a", "host-b"))
    api = Api(s, bus=Bus())
    api.s, api.conn, api.tenant, api.alerts = s, conn, tenant, seeded["alerts"]
    api.read, api.admin, api.ingest = (
        make_key(conn, tenant, sc) for sc in ("read", "admin", "ingest")
    )
    api.c = httpx.Client(base_url=api.url, timeout=60)
    yield api
    api.c.close()
    api.stop()
    conn.close()


def _get(w, path: str, **params):
    return w.c.get(path, params=params, headers=hdr(w.admin))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --- time parameters --------------------------------------------------------------------------


def test_alerts_since_date_overflow_answers_200_not_500(w):
    r = _get(w, "/alerts", since="9999-12-31T23:59:59-23:59")  # = 10000-01-01T23:58:59Z
    assert r.status_code == 200 and r.json() == [], r.text
    r = _get(w, "/alerts", until="0001-01-01T00:00:00+23:59")  # = year 0
    assert r.status_code == 200 and r.json() == [], r.text
    r = _get(w, "/alerts", since="0001-01-01T00:00:00+23:59", until="9999-12-31T23:59:59-23:59")
    assert r.status_code == 200 and sorted(a["alert_id"] for a in r.json()) == sorted(w.alerts)


TIME_PARAMS = [
    ("/alerts", "since"),
    ("/alerts", "until"),
    ("/incidents", "start"),
    ("/incidents", "end"),
    ("/metrics", "start"),
    ("/metrics", "end"),
    ("/series/host-a/cpu_load/scores", "start"),
    ("/series/host-a/cpu_load/scores", "end"),
    ("/series/host-a/cpu_load/features", "start"),
    ("/series/host-a/cpu_load/features", "end"),
]
EDGES = [
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0000-12-31T23:59:59-23:59",
    "2026-06-01t12:00:00.123456789z",
]


@pytest.mark.parametrize(("path", "param"), TIME_PARAMS, ids=lambda v: v)
def test_time_parameters_at_the_calendar_edges_are_200(w, path, param):
    extra = {"host": "host-a", "metric": "cpu_load"} if path == "/metrics" else {}
    for v in EDGES:
        r = _get(w, path, **extra, **{param: v})
        assert r.status_code == 200, (v, r.text)


@pytest.mark.parametrize(("path", "param"), TIME_PARAMS, ids=lambda v: v)
def test_time_parameters_that_are_not_rfc3339_date_times_are_422(w, path, param):
    extra = {"host": "host-a", "metric": "cpu_load"} if path == "/metrics" else {}
    for v in (
        "1700000000",
        "0.5",
        "2026-01-01",
        "2026-01-01T00:00:00",
        "2026-01-01T12:99:00Z",
        "2026-02-30T00:00:00Z",
        "0000-02-30T00:00:00Z",
        "now",
    ):
        r = _get(w, path, **extra, **{param: v})
        assert r.status_code == 422, (v, r.text)
        err = r.json()["detail"][0]
        assert err["loc"] == ["query", param] and err["msg"], r.text


def test_empty_time_range_is_an_empty_result_not_400(w):
    later, earlier = "2026-06-01T12:00:00Z", "2026-06-01T11:00:00Z"
    r = _get(w, "/metrics", host="host-a", metric="cpu_load", start=later, end=earlier)
    assert r.status_code == 200 and r.json()["points"] == [], r.text
    for path in (
        "/incidents",
        "/series/host-a/cpu_load/scores",
        "/series/host-a/cpu_load/features",
    ):
        r = _get(w, path, start=later, end=earlier)
        assert r.status_code == 200 and r.json() == [], (path, r.text)
    # a series that does not exist is still 404, whatever the range
    r = _get(w, "/metrics", host="nope", metric="cpu_load", start=later, end=earlier)
    assert r.status_code == 404 and r.json()["detail"]


# --- text PostgreSQL cannot hold ----------------------------------------------------------------

NUL = quote("a\x00b")
NUL_REQUESTS = [
    ("GET", f"/metrics/cpu?host={NUL}", "host"),
    ("GET", f"/metrics/latest?metric={NUL}", "metric"),
    ("GET", f"/metrics?host={NUL}&metric=cpu_load", "host"),
    ("GET", f"/series?q={NUL}", "q"),
    ("GET", f"/series?host={NUL}", "host"),
    ("GET", f"/series/{NUL}/cpu_load", "host"),
    ("GET", f"/series/host-a/{NUL}/scores", "metric"),
    ("GET", f"/series/host-a/{NUL}/features", "metric"),
    ("GET", f"/hosts/{NUL}", "host"),
    ("GET", f"/alerts?metric={NUL}", "metric"),
    ("GET", f"/alerts/{NUL}", "alert_id"),
    ("GET", f"/alerts/{NUL}/feedback", "alert_id"),
    ("POST", f"/alerts/{NUL}/feedback", "alert_id"),
    ("GET", f"/incidents/inc-{NUL}", "incident_id"),
    ("GET", f"/inventory/{NUL}", "source_id"),
    ("PUT", f"/inventory/{NUL}", "source_id"),
    ("PATCH", f"/inventory/{NUL}", "source_id"),
    ("DELETE", f"/inventory/{NUL}", "source_id"),
]


@pytest.mark.parametrize(
    ("method", "url", "param"), NUL_REQUESTS, ids=lambda v: v if isinstance(v, str) else ""
)
def test_nul_in_a_text_parameter_is_422_naming_it(w, method, url, param):
    body = (
        {"tags": {}}
        if method in ("PUT", "PATCH")
        else {"label": "true_positive"}
        if method == "POST"
        else None
    )
    r = w.c.request(method, url, json=body, headers=hdr(w.admin))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == param, r.text


@pytest.mark.parametrize(
    "tags",
    [{"a": "\ud800"}, {"\ud800": "a"}, {"a": "x\x00"}, {"a\x00": "x"}, {"": "x"}, {"a": 1}],
    ids=["surrogate-value", "surrogate-key", "nul-value", "nul-key", "empty-key", "number"],
)
def test_inventory_put_with_surrogate_or_nul_tag_is_422_not_500(w, tags):
    for method in ("PUT", "PATCH"):
        body = json.dumps(
            {"tags": tags}
        )  # ensure_ascii: "\ud800" travels as an escape, like agents send it
        r = w.c.request(
            method,
            "/inventory/host-a",
            content=body,
            headers={**hdr(w.admin), "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (method, r.text)
        assert r.json()["detail"][0]["loc"][:2] == ["body", "tags"], r.text
    assert _get(w, "/inventory/host-a").json()["tags"] == {"owner": "INP"}  # untouched


@pytest.mark.parametrize("comment", ["a\x00b", "\udc00"], ids=["nul", "surrogate"])
def test_feedback_comment_with_nul_or_surrogate_is_422_not_silently_changed(w, comment):
    body = json.dumps({"label": "false_positive", "comment": comment})
    r = w.c.post(
        f"/alerts/{w.alerts[0]}/feedback",
        content=body,
        headers={**hdr(w.read), "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "comment"], r.text


def test_inventory_tag_limits_are_the_settings_and_the_openapi_states_them(w):
    spec = w.c.get("/openapi.json").json()
    tags = spec["components"]["schemas"]["TagsIn"]["properties"]["tags"]
    assert tags["maxProperties"] == w.s.max_tags
    assert tags["additionalProperties"]["maxLength"] == w.s.max_tag_value_bytes
    assert tags["propertyNames"]["maxLength"] == 128
    ok = {"big": "é" * w.s.max_tag_value_bytes}  # the limit counts characters, as the schema does
    r = w.c.put("/inventory/limits", json={"tags": ok}, headers=hdr(w.admin))
    assert r.status_code == 200 and r.json()["tags"] == ok, r.text
    for bad in (
        {"big": "x" * (w.s.max_tag_value_bytes + 1)},
        {f"k{i}": "" for i in range(w.s.max_tags + 1)},
        {"k" * 129: ""},
    ):
        r = w.c.put("/inventory/limits", json={"tags": bad}, headers=hdr(w.admin))
        assert r.status_code == 422 and r.json()["detail"][0]["msg"], r.text


def test_patch_of_a_missing_source_is_404_and_a_deleted_source_stays_deleted(w):
    r = w.c.patch("/inventory/never-there", json={"tags": {"a": "b"}}, headers=hdr(w.admin))
    assert r.status_code == 404 and "PUT" in r.json()["detail"]
    assert (
        w.c.put("/inventory/gone", json={"tags": {"a": "b"}}, headers=hdr(w.admin)).status_code
        == 200
    )
    r = w.c.patch("/inventory/gone", json={"tags": {"c": "d"}}, headers=hdr(w.admin))
    assert r.status_code == 200 and r.json()["tags"] == {"a": "b", "c": "d"}
    assert w.c.delete("/inventory/gone", headers=hdr(w.admin)).status_code == 204
    for method in ("GET", "PATCH", "DELETE"):
        r = w.c.request(
            method,
            "/inventory/gone",
            json={"tags": {}} if method == "PATCH" else None,
            headers=hdr(w.admin),
        )
        assert r.status_code == 404, (method, r.text)


# --- numbers, cursors, methods ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/alerts", {"limit": 10**23}),
        ("/series", {"limit": 10**23}),
        ("/inventory", {"limit": -(10**23)}),
        ("/feedback", {"limit": "1e400"}),
        ("/metrics/cpu", {"host": "host-a", "limit": 10**400}),
        ("/metrics", {"host": "host-a", "metric": "cpu_load", "points": 10**23}),
        ("/metrics", {"host": "host-a", "metric": "cpu_load", "step": "1e400"}),
        ("/metrics", {"host": "host-a", "metric": "cpu_load", "step": "nan"}),
        ("/incidents", {"limit": 10**23}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_huge_or_non_finite_number_parameters_are_422(w, path, params):
    r = _get(w, path, **params)
    assert r.status_code == 422 and r.json()["detail"][0]["msg"], r.text


def test_alerts_cursor_pages_through_every_alert_and_any_well_formed_cursor_is_200(w):
    seen, cursor = [], None
    for _ in range(5):
        r = _get(w, "/alerts", limit=1, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        seen += [a["alert_id"] for a in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert sorted(seen) == sorted(w.alerts)
    assert _get(w, "/alerts", cursor="0.0").json() == []  # before every alert
    assert len(_get(w, "/alerts", cursor="9999999999999999.999999999999999999").json()) == 2
    for bad in ("abc", "1.2.3", "1" * 17 + ".1", "-.1", ""):
        assert _get(w, "/alerts", cursor=bad).status_code == 422, bad


def test_an_undocumented_method_is_405_with_the_paths_methods_in_allow(w):
    spec = w.c.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        url = path.format(
            host="host-a",
            metric="cpu_load",
            alert_id="x",
            incident_id="inc-x",
            source_id="x",
            name="x",
            silence_id="x",
        )
        documented = sorted(m.upper() for m in ops)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            if method in documented:
                continue
            r = w.c.request(method, url, headers=hdr(w.admin))
            assert r.status_code == 405, (method, path, r.status_code)
            assert r.headers["Allow"] == ", ".join(documented), (
                method,
                path,
                r.headers.get("Allow"),
            )
            assert r.json()["detail"]


# --- POST /ingest --------------------------------------------------------------------------------


def _post_ingest(w, body: bytes | str, key: str | None = None, ctype="application/json"):
    return w.c.post(
        "/ingest", content=body, headers={**hdr(key or w.ingest), "Content-Type": ctype}
    )


def _dead_letters_since(w, last_id: int) -> list[tuple]:
    return w.conn.execute(
        "SELECT reason, raw FROM dead_letters WHERE id > %s AND source LIKE 'api-ingest-%%' "
        "ORDER BY id",
        (last_id,),
    ).fetchall()


def _last_dead_letter(w) -> int:
    return w.conn.execute("SELECT coalesce(max(id), 0) FROM dead_letters").fetchone()[0]


def _event(source: str, value: str = "1.5", **extra: str) -> str:
    """An event of host ``source`` as JSON text; ``value`` and ``extra`` are JSON literals, as
    given."""
    fields = {
        "host": json.dumps(source),
        "metric": '"cpu_load"',
        "value": value,
        "ts_event": json.dumps(_now()),
        **extra,
    }
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


def test_ingest_huge_integer_value_is_202_and_dead_lettered_not_500(w):
    before = _last_dead_letter(w)
    bad = _event("ing-huge", "9" * 400)
    body = f"[{_event('ing-huge-ok')}, {bad}]"
    r = _post_ingest(w, body)
    assert r.status_code == 202, r.text
    got = r.json()
    assert (got["accepted"], got["stored"], got["dead_lettered"]) == (2, 1, 1), got
    assert got["reasons"] == {"non_finite": 1} and got["rejected"][0]["index"] == 1, got
    ((reason, raw),) = _dead_letters_since(w, before)
    assert reason == "non_finite"
    assert (
        bytes(raw) == ('{"tenant_id":' + json.dumps(w.tenant) + "," + bad[1:]).encode()
    )  # the bytes sent


def test_ingest_value_1e23_as_an_integer_is_202_not_500(w):
    r = _post_ingest(w, f"[{_event('ing-1e23', '100000000000000000000000')}]")
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["accepted"] == 1 and got["stored"] + got["dead_lettered"] == 1, got
    assert got["dead_lettered"] == 0 or got["reasons"] == {"non_finite": 1}, got


@pytest.mark.parametrize("field", ["unit", "tags", "event_id", "host"])
def test_ingest_lone_surrogate_is_202_and_dead_lettered_not_500(w, field):
    before = _last_dead_letter(w)
    lone = '"x\\ud800"'  # the JSON escape of a lone surrogate, as a client sends it
    extra = {"tags": '{"team": ' + lone + "}"} if field == "tags" else {field: lone}
    host = "ing-sur-" + field
    ev = _event(host, **extra) if field != "host" else _event("unused", host=lone)
    r = _post_ingest(w, f"[{_event(host + '-ok')}, {ev}]")
    assert r.status_code == 202, r.text
    got = r.json()
    assert (got["accepted"], got["stored"], got["dead_lettered"]) == (2, 1, 1), got
    assert got["reasons"] == {"bad_text": 1} and got["rejected"][0]["index"] == 1, got
    ((reason, raw),) = _dead_letters_since(w, before)
    assert reason == "bad_text" and b"\\ud800" in bytes(raw)  # the original escape, not re-encoded


def test_ingest_bytes_that_are_not_utf8_inside_a_string_reach_normalize_as_bad_encoding(w):
    before = _last_dead_letter(w)
    body = (
        b'[{"host": "h\xff\xfe", "metric": "m", "value": 1, "ts_event": "'
        + _now().encode()
        + b'"}]'
    )
    r = _post_ingest(w, body)
    assert r.status_code == 202 and r.json()["reasons"] == {"bad_encoding": 1}, r.text
    ((reason, raw),) = _dead_letters_since(w, before)
    assert b'"h\xff\xfe"' in bytes(raw)  # the very bytes sent


def test_ingest_nan_value_is_202_and_dead_lettered_as_non_finite(w):
    r = _post_ingest(w, f"[{_event('ing-nan', 'NaN')}, {_event('ing-inf', '-Infinity')}]")
    assert r.status_code == 202 and r.json()["reasons"] == {"non_finite": 2}, r.text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"[1]",
        b'[{}, "x"]',
        b"[{} {}]",
        b"[{}]x",
        b"[{}",
        b'[{"a": "\x01"}]',
        b"\xff[]",
        b"[" + b"[" * 100_000,
        b'{"events": []}',
        b"null",
    ],
    ids=lambda b: repr(b[:12]),
)
def test_ingest_body_that_is_not_a_json_array_of_objects_is_422_and_takes_nothing(w, body):
    before = _last_dead_letter(w)
    r = _post_ingest(w, body)
    assert r.status_code == 422 and r.json()["detail"][0]["msg"], r.text
    assert _dead_letters_since(w, before) == []


def test_ingest_more_than_10000_events_is_422(w):
    r = _post_ingest(w, "[" + ",".join(["{}"] * 10_001) + "]")
    assert r.status_code == 422 and "10000" in r.json()["detail"][0]["msg"], r.text


def test_ingest_body_that_is_not_json_is_415(w):
    r = _post_ingest(w, "[]", ctype="text/plain")
    assert r.status_code == 415 and r.json()["detail"], r.text
    assert _post_ingest(w, "[]", ctype="application/json; charset=utf-8").status_code == 202


def test_ingest_event_of_another_tenant_is_403_and_takes_nothing(w):
    before = _last_dead_letter(w)
    r = _post_ingest(w, '[{}, {"tenant_id": "someone-else"}]')
    assert r.status_code == 403 and r.json()["detail"], r.text
    assert _dead_letters_since(w, before) == []


def test_ingest_in_kafka_mode_forwards_each_events_original_bytes(
    api_server, settings, conn, tenant
):
    api = api_server()  # no bus: Kafka mode
    key = make_key(conn, tenant, "ingest")
    items = [
        '{ "host" : "h1", "value": 1e400, "big": ' + "1" * 400 + ', "s": "\\ud800\\u0000" }',
        '{"tenant_id": ' + json.dumps(tenant) + ', "host": ["not", "a", "string"]}',
        "{}",
    ]
    body = "[\n  " + " ,\n".join(items) + "\n]"
    r = httpx.post(
        api.url + "/ingest",
        content=body,
        timeout=60,
        headers={**hdr(key), "Content-Type": "application/json"},
    )
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["mode"] == "kafka" and got["accepted"] == 3 and got["stored"] is None
    assert settings.topic_raw in got["detail"] and settings.topic_dlq in got["detail"]
    head = '{"tenant_id":' + json.dumps(tenant)
    want = [(head + "," + items[0][1:]).encode(), items[1].encode(), (head + "}").encode()]
    msgs = consume_all(settings, settings.topic_raw, 3)
    assert sorted(m.value() for m in msgs) == sorted(want)
    assert sorted(m.key() for m in msgs) == sorted(
        [f"{tenant}|h1".encode(), f"{tenant}|".encode(), f"{tenant}|".encode()]
    )


def test_ingest_events_without_an_id_from_two_api_processes_are_both_stored(w):
    """Each API process names its events anew: a second one does not reuse the first's ids."""
    other = Api(w.s, bus=Bus())
    try:
        for url in (w.url, other.url, w.url):
            r = httpx.post(
                url + "/ingest",
                content=f"[{_event('ing-two-apis')}]",
                timeout=60,
                headers={**hdr(w.ingest), "Content-Type": "application/json"},
            )
            assert r.status_code == 202 and r.json()["stored"] == 1, r.text
    finally:
        other.stop()
    n = w.conn.execute(
        "SELECT count(*) FROM metrics WHERE tenant_id = %s AND host = 'ing-two-apis'", (w.tenant,)
    ).fetchone()[0]
    assert n == 3


def test_ingest_embedded_counts_what_was_stored_and_dead_lettered_per_reason(w):
    r = _post_ingest(
        w,
        f'[{_event("ing-count")}, {{"host": "x"}}, '
        f"{_event('ing-count', ts_event=json.dumps('never'))}]",
    )
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["mode"] == "embedded" and (got["accepted"], got["stored"], got["dead_lettered"]) == (
        3,
        1,
        2,
    )
    assert got["reasons"] == {"missing_field": 1, "bad_type": 1}, got
    assert [x["index"] for x in got["rejected"]] == [1, 2] and all(
        x["detail"] for x in got["rejected"]
    )
