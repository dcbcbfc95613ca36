"""Serving-only configuration (``EVENTOPS_*`` variables, documented in ``.env.example``).

Kept apart from :class:`core.settings.Settings` because only the API process reads it;
``create_app`` builds it once (tests pass their own).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError


class ServingSettings(BaseSettings):
    """CORS, limits and SSE knobs of the HTTP API."""

    model_config = SettingsConfigDict(env_prefix="EVENTOPS_", env_file=".env", extra="ignore")

    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed by CORS (e.g. https://ops.example.com); "
        "empty = no cross-origin access. '*' is refused: keys are credentials.",
    )
    max_request_bytes: int = Field(
        default=1_000_000, ge=1, description="Largest request body accepted (413 above)."
    )
    rate_limit_rps: float = Field(
        default=50.0, ge=0, description="Sustained requests per second per API key; 0 = no limit."
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, description="Requests a key may send at once before the rate applies."
    )
    auth_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a verified key is cached (a revocation takes effect within this).",
    )
    sse_page_size: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Rows per PostgreSQL page of an SSE replay/refill/feed read; "
        "pages repeat until the client has caught up.",
    )
    sse_auth_check_s: float = Field(
        default=2.0,
        gt=0,
        description="An open SSE stream re-checks its key this often; "
        "a revoked key's streams end within 2x this.",
    )
    sse_db_retry_s: float = Field(
        default=15.0,
        gt=0,
        description="PostgreSQL unavailable this long: "
        "an SSE stream closes with a retry hint (the client resumes).",
    )
    sse_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="Alert feeds poll PostgreSQL this often without a doorbell "
        "(1 s while Kafka is degraded).",
    )
    score_poll_s: float = Field(
        default=1.0, gt=0, description="How often a score stream polls the scores table."
    )
    db_pool_size: int = Field(
        default=8,
        ge=1,
        le=200,
        description="PostgreSQL connections per API process. Requests beyond it wait in the pool's "
        "FIFO queue: a few connections per core keep the database's run queue short, "
        "which sets the tail.",
    )
    db_pool_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait of a request for a PostgreSQL connection "
        "(and for a new connection); "
        "past it the request answers 503 with Retry-After, and while the database is away every "
        "request needing it answers 503 at once.",
    )
    ingest_max_decompressed_bytes: int = Field(
        default=16_000_000,
        ge=1,
        description="Largest OTLP / remote-write body after gzip or snappy decompression "
        "(413 above).",
    )
    ingest_max_points: int = Field(
        default=100_000,
        ge=1,
        description="Most data points (samples) one OTLP / remote-write request may carry "
        "(413 above; senders split their batches).",
    )
    ingest_max_inflight: int = Field(
        default=4,
        ge=1,
        description="Ingest requests (POST /ingest, /v1/metrics, /api/v1/write) an API process "
        "works on or queues at once; one more answers 503 with Retry-After, so senders back "
        "off and retry instead of losing data.",
    )
    incident_gap_s: float = Field(
        default=900.0,
        gt=0,
        description="Alerts of a host opened within this gap form one incident.",
    )

    prometheus_score_window_s: float = Field(
        default=900.0,
        gt=0,
        le=7 * 86400,
        description="GET /prometheus/scores exposes the latest score of each series whose "
        "windows ended within this many seconds.",
    )
    prometheus_max_series: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="At most this many series in one GET /prometheus/scores (highest scores "
        "first; and as many open-alert series).",
    )

    def cors_list(self) -> list[str]:
        out = [o.strip() for o in self.cors_origins.split(",") if o.strip()]
        if "*" in out:
            raise ConfigError("EVENTOPS_CORS_ORIGINS='*' is not allowed; list the origins")
        return out
