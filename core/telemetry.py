"""Every Prometheus metric of the service, defined here and nowhere else (``prometheus_client``).

The names and labels are a contract (dashboards and alert rules are built on them):

============================================  ========================  ======================
metric                                        labels                    set by
============================================  ========================  ======================
``eventops_events_consumed_total``            runner                    the runners, per batch
``eventops_events_stored_total``              runner                    the runners, per batch
``eventops_events_dead_lettered_total``       runner, reason            the runners, per batch
``eventops_stage_batch_seconds`` (histogram)  stage                     chain, runners
``eventops_consumer_lag``                     topic, partition          Kafka worker (every 5 s)
``eventops_checkpoint_age_seconds``           partition                 Kafka worker (every 5 s)
``eventops_champion_version``                 tenant                    detect stage
``eventops_sse_clients``                                                SSE streams of the API
``eventops_http_requests_total``              route, method, status     API middleware
``eventops_http_request_seconds`` (hist.)     route                     API middleware
``eventops_ingest_points_total``              protocol, outcome         ingest routes
``eventops_build_info``                       version                   here (= 1)
============================================  ========================  ======================

``runner`` is ``kafka`` or ``embedded``; ``reason`` a :class:`core.reasons.DlqReason` value;
``stage`` one of :data:`STAGES`; ``route`` the route *template* of the API
(``/series/{host}/{metric}/scores``, ``other`` when no route matched), never a raw path, so the
number of series stays bounded; ``protocol`` one of :data:`PROTOCOLS`, ``outcome`` one of
:data:`OUTCOMES`. The anomaly scores as data (``eventops_anomaly_score`` …) are not here: they
are read from PostgreSQL per scrape (``serving/prometheus.py``).

Multi-process: when the environment variable ``PROMETHEUS_MULTIPROC_DIR`` names a directory
*at the moment prometheus_client is first imported*, the library keeps every value in
memory-mapped files there, one per process (that variable is the library's contract, not an
EventOps setting; ``serving/serve.py`` sets it for its API workers before they start).
:func:`exposition` then merges the files of every process (:class:`MultiProcessCollector`):
counters and histograms are summed, each gauge is merged by its ``multiprocess_mode``
(``livesum`` for the SSE clients: the processes' clients added up, a dead process's dropped;
``livemostrecent`` for the per-partition gauges and the champion version: the last writer
wins, so a partition moved to another worker shows its new owner's value and a rolled-back
champion its older version; ``max`` for the build info). Without the variable the default
registry of this process is exposed.

>>> body, ctype = exposition()
>>> ctype.startswith("text/plain") and b"eventops_build_info{" in body
True
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

from core import __version__

#: the library's switch for multi-process mode (read when prometheus_client is imported)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: ``runner`` label values
RUNNERS = ("kafka", "embedded")
#: ``stage`` label values of :data:`STAGE_SECONDS`
STAGES = ("normalize", "enrich", "detect", "sink", "produce", "commit")
#: ``protocol`` / ``outcome`` label values of :data:`INGEST_POINTS`
PROTOCOLS = ("json", "otlp", "remote_write")
OUTCOMES = ("stored", "queued", "dead_lettered", "skipped")
#: ``route`` of a request no route of the API matched
OTHER_ROUTE = "other"

#: 0.5 ms .. 10 s: a stage call on a micro-batch, an HTTP request
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

EVENTS_CONSUMED = Counter(
    "eventops_events_consumed_total", "Input records a runner took in.", ["runner"]
)
EVENTS_STORED = Counter(
    "eventops_events_stored_total", "Metric rows a runner's sink wrote to PostgreSQL.", ["runner"]
)
EVENTS_DEAD_LETTERED = Counter(
    "eventops_events_dead_lettered_total",
    "Records dead-lettered, by DlqReason.",
    ["runner", "reason"],
)
STAGE_SECONDS = Histogram(
    "eventops_stage_batch_seconds",
    "Time of one stage call on one micro-batch (normalize, enrich, detect, sink write, "
    "produce + flush, offset commit).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "eventops_consumer_lag",
    "End offset minus the group's committed offset of a partition the Kafka worker owns.",
    ["topic", "partition"],
    multiprocess_mode="livemostrecent",
)
CHECKPOINT_AGE = Gauge(
    "eventops_checkpoint_age_seconds",
    "Seconds since the last detect checkpoint of an input partition was stored.",
    ["partition"],
    multiprocess_mode="livemostrecent",
)
CHAMPION_VERSION = Gauge(
    "eventops_champion_version",
    "Registry version of the tenant's champion model scoring its windows; 0 = default ensemble.",
    ["tenant"],
    multiprocess_mode="livemostrecent",
)
SSE_CLIENTS = Gauge(
    "eventops_sse_clients",
    "Connected Server-Sent Events clients of the API.",
    multiprocess_mode="livesum",
)
HTTP_REQUESTS = Counter(
    "eventops_http_requests_total",
    "HTTP requests answered by the API, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "eventops_http_request_seconds",
    "Time to the end of an HTTP response, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
INGEST_POINTS = Counter(
    "eventops_ingest_points_total",
    "Points received by the ingest routes, by protocol and what became of them.",
    ["protocol", "outcome"],
)
BUILD_INFO = Gauge(
    "eventops_build_info",
    "Always 1; the version of the running code is the label.",
    ["version"],
    multiprocess_mode="max",
)
BUILD_INFO.labels(__version__).set(1)


def multiprocess_dir() -> str | None:
    """The directory of multi-process mode, or ``None`` (one process)."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> tuple[bytes, str]:
    """``(body, content type)``: the text exposition of every metric of this service (every
    process's, merged, in multi-process mode; this process's default registry otherwise)."""
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
    return generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4


def forget(gauge: Gauge, *labels: str) -> None:
    """Drop a gauge's series (a revoked partition). Multi-process mode cannot remove a series
    from the shared files: it is set to 0 there instead."""
    if multiprocess_dir() is not None:
        gauge.labels(*labels).set(0)
    else:
        gauge.remove(*labels)


def count_events(runner: str, consumed: int = 0, stored: int = 0, dead: dict | None = None) -> None:
    """Add one batch's counts (``dead``: reason -> number dead-lettered)."""
    if consumed:
        EVENTS_CONSUMED.labels(runner).inc(consumed)
    if stored:
        EVENTS_STORED.labels(runner).inc(stored)
    for reason, n in (dead or {}).items():
        if n:
            EVENTS_DEAD_LETTERED.labels(runner, str(reason)).inc(n)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Observe the time of the block in :data:`STAGE_SECONDS` under ``stage``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - t0)


def observe_stage(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage).observe(seconds)


__all__ = [
    "BUILD_INFO",
    "CHAMPION_VERSION",
    "CHECKPOINT_AGE",
    "CONSUMER_LAG",
    "EVENTS_CONSUMED",
    "EVENTS_DEAD_LETTERED",
    "EVENTS_STORED",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "INGEST_POINTS",
    "MULTIPROC_ENV",
    "SSE_CLIENTS",
    "STAGE_SECONDS",
    "count_events",
    "exposition",
    "forget",
    "multiprocess_dir",
    "observe_stage",
    "timed",
]
