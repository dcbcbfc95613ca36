"""Prometheus exposition: the service's health, the caller's anomaly scores, request metrics.

``GET /prometheus/metrics`` — the API process's health metrics (:mod:`core.telemetry`; every
worker's, merged, with ``--workers N``), no key (like node-exporter: counts and latencies, no
tenant data). The MVP's data routes ``/metrics/cpu`` and ``/metrics/latest`` are untouched.

``GET /prometheus/scores`` — any valid API key of a tenant (``read``); that tenant's data only:

- ``eventops_anomaly_score{tenant,host,metric}``: the score of the latest window of each series
  among the windows that ended in the last ``EVENTOPS_PROMETHEUS_SCORE_WINDOW_S`` seconds
  (default 900);
- ``eventops_alert_open{tenant,host,metric,severity,rule}`` = 1 for each open alert;
- ``eventops_alerts_open{tenant,severity}``: the number of open alerts per severity (both
  severities, 0 included);
- ``eventops_anomaly_score_series_truncated``: 1 when the cardinality bound cut series off.

Cardinality bound: at most ``EVENTOPS_PROMETHEUS_MAX_SERIES`` (default 10,000) score series per
scrape, the highest scores first, and at most as many open-alert series (critical first).

:class:`RequestMetrics` (pure ASGI middleware) counts every HTTP response by route *template*
(``scope["route"].path`` once routing picked the route; ``other`` when none did, the dashboard's
static files included), method and status, and times it (an SSE stream is counted, not timed:
its length is the client's).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.routing import Mount

from core.telemetry import HTTP_REQUESTS, HTTP_SECONDS, OTHER_ROUTE, exposition
from serving.broadcast import DB_TIMEOUT_S
from serving.deps import PoolDep, ReadKey, ServingDep
from storage import alerts as alerts_repo
from storage import series as series_repo

router = APIRouter(prefix="/prometheus", tags=["prometheus"])

_TEXT = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
SEVERITIES = ("warning", "critical")
#: ``method`` label values (any other method: ``other``; the label set stays bounded)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@router.get(
    "/metrics",
    response_class=Response,
    responses=_TEXT,
    description="Health metrics of the service (events, stage latencies, lag, SSE clients, "
    "HTTP requests) in the Prometheus text format; no key needed. Scrape this.",
)
async def prometheus_metrics() -> Response:
    """The service's own health metrics, for Prometheus."""
    body, ctype = exposition()
    return Response(body, media_type=ctype)


class _Families:
    """A one-scrape collector of ready metric families."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


@router.get(
    "/scores",
    response_class=Response,
    responses=_TEXT,
    description="The caller's tenant's latest anomaly score per series and its open alerts, in "
    "the Prometheus text format. At most EVENTOPS_PROMETHEUS_MAX_SERIES series (highest scores "
    "first); eventops_anomaly_score_series_truncated says when more were left out.",
)
async def prometheus_scores(key: ReadKey, pool: PoolDep, conf: ServingDep) -> Response:
    """Anomaly scores and open alerts of the key's tenant, for Prometheus."""
    tenant, bound = key.tenant_id, conf.prometheus_max_series
    async with pool.connection(timeout=DB_TIMEOUT_S) as conn:
        scores = await series_repo.latest_scores(
            conn, tenant, conf.prometheus_score_window_s, bound + 1
        )
        open_alerts = await alerts_repo.open_alert_labels(conn, tenant, bound)
        counts = await alerts_repo.open_alert_counts(conn, tenant)
    truncated = len(scores) > bound
    score = GaugeMetricFamily(
        "eventops_anomaly_score",
        "Score in [0, 1] of the latest window of the series (higher = more anomalous).",
        labels=["tenant", "host", "metric"],
    )
    for host, metric, value in scores[:bound]:
        score.add_metric([tenant, host, metric], value)
    cut = GaugeMetricFamily(
        "eventops_anomaly_score_series_truncated",
        f"1 when series were left out of eventops_anomaly_score (at most {bound}).",
        value=1 if truncated else 0,
    )
    alert = GaugeMetricFamily(
        "eventops_alert_open",
        "1 for each open alert of the tenant.",
        labels=["tenant", "host", "metric", "severity", "rule"],
    )
    for host, metric, severity, rule in open_alerts:
        alert.add_metric([tenant, host, metric, severity, rule], 1)
    n_open = GaugeMetricFamily(
        "eventops_alerts_open",
        "Open alerts of the tenant per severity.",
        labels=["tenant", "severity"],
    )
    for sev in sorted({*SEVERITIES, *counts}):
        n_open.add_metric([tenant, sev], counts.get(sev, 0))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([score, cut, alert, n_open]))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def route_label(scope) -> str:
    """The route template the router chose for ``scope`` (``other``: none, or the dashboard)."""
    route = scope.get("route")
    if route is None or isinstance(route, Mount):
        return OTHER_ROUTE
    return getattr(route, "path", None) or OTHER_ROUTE


class RequestMetrics:
    """``eventops_http_requests_total`` and ``eventops_http_request_seconds`` of every HTTP
    response (pure ASGI middleware: streaming-safe, no per-request object beyond a closure)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 0
        stream = False

        async def send_counted(message):
            nonlocal status, stream
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", ()):
                    if k.lower() == b"content-type" and v.startswith(b"text/event-stream"):
                        stream = True
                        break
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except BaseException:
            status = status or 500
            raise
        finally:
            route = route_label(scope)
            method = scope["method"] if scope["method"] in METHODS else OTHER_ROUTE
            HTTP_REQUESTS.labels(route, method, str(status or 500)).inc()
            if not stream:
                HTTP_SECONDS.labels(route).observe(time.perf_counter() - t0)
