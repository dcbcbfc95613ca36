"""Helpers of the API tests: keys, a served app with custom serving settings, seeded tenants."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psycopg
from psycopg.types.json import Jsonb

from core.records import AlertEvent
from core.settings import Settings
from serving import auth
from serving.config import ServingSettings
from storage.connect import connect
from storage.sink import Sink
from tests.integration.conftest import wait_for


def make_key(conn: psycopg.Connection, tenant: str, scope: str = "read") -> str:
    return auth.create_key(conn, tenant, scope, label="test")[1]


def hdr(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def stub_model_status(settings: Settings, tenant: str) -> dict:
    return {
        "name": f"{settings.model_name}.{tenant}",
        "tenant": tenant,
        "available": False,
        "detail": "stub",
        "champion": None,
        "challenger": None,
    }


class Api:
    """The app under uvicorn in a thread (embedded mode when ``bus`` is given)."""

    def __init__(
        self,
        s: Settings,
        bus=None,
        serving: ServingSettings | None = None,
        stub_models: bool = True,
    ) -> None:
        import uvicorn

        from serving.app import create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        serving = serving or ServingSettings(
            rate_limit_rps=0, cors_origins="", auth_cache_s=0.5, _env_file=None
        )
        self.app = create_app(s, bus=bus, serving=serving)
        if stub_models:
            self.app.state.model_status = stub_model_status
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

        def ready() -> bool:
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, what="API /readyz")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def raw_event(
    tenant: str, host: str, value: float, metric: str = "cpu_load", ts: datetime | None = None
) -> bytes:
    ts = ts or datetime.now(UTC)
    return orjson.dumps(
        {
            "tenant_id": tenant,
            "host": host,
            "metric": metric,
            "value": value,
            "ts_event": ts.isoformat().replace("+00:00", "Z"),
            "unit": "percent",
        }
    )


def alert_event(
    tenant: str,
    host: str,
    metric: str = "cpu_load",
    kind: str = "open",
    ts: datetime | None = None,
    alert_id: str | None = None,
    marker: str = "",
) -> AlertEvent:
    """An alert transition as the detect stage emits it (for Sink.write)."""
    ts = ts or datetime.now(UTC)
    alert_id = alert_id or uuid.uuid4().hex[:24]
    return AlertEvent(
        alert_id=alert_id,
        kind=kind,
        tenant_id=tenant,
        host=host,
        metric=metric,
        value=95.0,
        severity="critical",
        ts=ts.timestamp(),
        opened_at=ts.timestamp(),
        rule="cpu_load",
        threshold=90.0,
        message=f"{metric} on {host} is 95 {marker}",
        score=1.0,
        explanation={"components": ["threshold"], "marker": marker},
        model_version=None,
        event_id=f"ev-{alert_id}",
    )


def seed(
    s: Settings,
    conn: psycopg.Connection,
    tenant: str,
    marker: str,
    hosts=("host-a",),
    metrics=("cpu_load",),
    n: int = 30,
) -> dict:
    """Metrics, scores, features, an inventory entry, two alerts (+ events) and a feedback row.

    ``marker`` is written into host tags, alert messages and explanations, so a response that
    leaks this tenant's data to another can be found by searching for it.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    with conn.cursor() as cur:
        for h in hosts:
            cur.execute(
                "INSERT INTO inventory (tenant_id, source_id, tags) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (tenant, h, Jsonb({"owner": marker})),
            )
            for m in metrics:
                cur.execute(
                    "INSERT INTO metrics"
                    " (event_id, tenant_id, host, metric, value, ts_event, unit, tags) "
                    "SELECT %s || g, %s, %s, %s, 50 + g, %s - g * interval '10 s', 'percent', %s "
                    "FROM generate_series(0, %s - 1) g",
                    (f"{tenant}:{h}:{m}:", tenant, h, m, now, Jsonb({"owner": marker}), n),
                )
                cur.execute(
                    "INSERT INTO features (tenant_id, host, metric, window_start, window_end,"
                    " count, mean, std, min, max, last, slope, change, gap)"
                    " SELECT %s, %s, %s, %s - (g + 1) * interval '1 min',"
                    " %s - g * interval '1 min', 6, 50, 1, 49, 51, 50, 0, 0, 0"
                    " FROM generate_series(0, 9) g",
                    (tenant, h, m, now, now),
                )
                cur.execute(
                    "INSERT INTO scores (tenant_id, host, metric, window_start, window_end,"
                    " score, severity, components, actual, expected, explanation, model_version)"
                    " SELECT %s, %s, %s, %s - (g + 1) * interval '1 min',"
                    " %s - g * interval '1 min',"
                    " 0.1 * (g %% 10), 'ok', '{\"rules\": 0.1}', 50, 49, %s, '1'"
                    " FROM generate_series(0, 9) g",
                    (tenant, h, m, now, now, Jsonb({"typical_deviation": 1.0, "marker": marker})),
                )
    if not conn.autocommit:
        conn.commit()
    a1 = alert_event(tenant, hosts[0], metrics[0], ts=now - timedelta(minutes=5), marker=marker)
    a2 = alert_event(tenant, hosts[-1], metrics[-1], ts=now - timedelta(minutes=3), marker=marker)
    _, stored = store_alerts(s, [a1, a2])
    conn.execute(
        "INSERT INTO feedback (tenant_id, alert_id, label, comment)"
        " VALUES (%s, %s, 'true_positive', %s)",
        (tenant, a1.alert_id, marker),
    )
    return {
        "alerts": [a1.alert_id, a2.alert_id],
        "hosts": list(hosts),
        "metrics": list(metrics),
        "stored": stored,
    }


def store_alerts(s: Settings, events: list[AlertEvent]) -> tuple[int, list[AlertEvent]]:
    """Store alert events through the sink, as the pipeline does; returns the stored ones."""
    from core.batch import MetricBatch

    with connect(s) as c:
        n, stored = Sink(c).write(MetricBatch.empty(), events)
        Sink(c).mark_published([e.seq for e in stored])
    return n, stored
