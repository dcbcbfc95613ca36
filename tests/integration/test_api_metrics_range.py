"""``GET /metrics`` downsampling (numpy over two PostgreSQL arrays) equals SQL ``date_bin`` +
GROUP BY."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.api_support import hdr, make_key


@pytest.fixture
def series(conn, tenant):
    """One irregular series: 7 s spacing, a run exactly on 60 s boundaries, a duplicate time."""
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    times = [t0 + timedelta(seconds=7 * i, microseconds=13 * i) for i in range(1500)]
    times += [t0 + timedelta(minutes=m) for m in range(0, 170, 3)] + [t0 + timedelta(seconds=70)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event)"
            " VALUES (%s, %s, 'h1', 'cpu_load', %s, %s)",
            [(f"{tenant}:{i}", tenant, (i * 37 % 101) - 20.5, t) for i, t in enumerate(times)],
        )
        # another series and another tenant's rows in the same range never count
        cur.execute(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event) "
            "VALUES (%s, %s, 'h1', 'mem_used_pct', 1e6, %s)",
            (f"{tenant}:x", tenant, t0),
        )
    return t0


def oracle(conn, tenant, start, end, step_s):
    return conn.execute(
        "SELECT date_bin(%s, ts_event, %s), avg(value), min(value), max(value), count(*) "
        "FROM metrics "
        "WHERE tenant_id = %s AND host = 'h1' AND metric = 'cpu_load' "
        "AND ts_event >= %s AND ts_event < %s "
        "GROUP BY 1 ORDER BY 1",
        (timedelta(seconds=step_s), start, tenant, start, end),
    ).fetchall()


@pytest.mark.parametrize(
    ("offset_s", "span_min", "step"),
    [
        (0, 180, 60),
        (0, 180, None),
        (-45.5, 100, 7),
        (13.000017, 50, 1.5),
        (0, 600, 0.5),
        (600, 30, 3600),
    ],
)
def test_buckets_equal_sql_date_bin(api_server, conn, tenant, series, offset_s, span_min, step):
    api = api_server()
    key = make_key(conn, tenant)
    start = series + timedelta(seconds=offset_s)
    end = start + timedelta(minutes=span_min)
    q = {"host": "h1", "metric": "cpu_load", "start": start.isoformat(), "end": end.isoformat()}
    if step is not None:
        q["step"] = step
    r = httpx.get(f"{api.url}/metrics", params=q, headers=hdr(key))
    assert r.status_code == 200, r.text
    body = r.json()
    want = oracle(conn, tenant, start, end, body["step_s"])
    # the step asked for, unless it would make more than MAX_BUCKETS buckets
    assert step is None or body["step_s"] == max(step, span_min * 60 / 5000)
    got = [
        (datetime.fromisoformat(p["ts"]), p["avg"], p["min"], p["max"], p["count"])
        for p in body["points"]
    ]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[4] for g in got] == [w[4] for w in want]
    assert [(g[2], g[3]) for g in got] == [(w[2], w[3]) for w in want]
    assert got and all(
        abs(g[1] - w[1]) <= 1e-9 * max(1.0, abs(w[1])) for g, w in zip(got, want, strict=True)
    )


def test_empty_range_of_a_known_series_is_200_and_unknown_series_404(
    api_server, conn, tenant, series
):
    api = api_server()
    key = make_key(conn, tenant)
    far = (series + timedelta(days=30)).isoformat()
    r = httpx.get(
        f"{api.url}/metrics",
        params={"host": "h1", "metric": "cpu_load", "start": far},
        headers=hdr(key),
    )
    assert r.status_code == 200 and r.json()["points"] == []
    r = httpx.get(
        f"{api.url}/metrics", params={"host": "nope", "metric": "cpu_load"}, headers=hdr(key)
    )
    assert r.status_code == 404 and "not found" in r.json()["detail"]
