"""One settings object for every EventOps process.

Built once at the entry point (CLI, API factory, test fixture) and passed down; nothing else
reads the environment. Every field is documented in ``.env.example`` with the same name
prefixed ``EVENTOPS_``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime configuration, read from ``EVENTOPS_*`` environment variables and ``.env``."""

    model_config = SettingsConfigDict(env_prefix="EVENTOPS_", env_file=".env", extra="ignore")

    # --- PostgreSQL -------------------------------------------------------------------------
    pg_host: str = "127.0.0.1"
    pg_port: int = 55432
    pg_user: str = "eventops"
    pg_password: SecretStr = SecretStr("eventops")
    pg_database: str = "eventops"
    mlflow_database: str = "mlflow"

    # --- Kafka ------------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:59092"
    topic_raw: str = "ingest.raw.agent"
    topic_metric: str = "signals.metric.v1"
    topic_enriched: str = "signals.enriched.v1"
    topic_score: str = "signals.score.v1"
    topic_alert: str = "ops.alert.v1"
    topic_dlq: str = "ops.dlq.v1"
    topic_partitions: int = 6
    topic_retention_ms: int = 7 * 24 * 3600 * 1000
    consumer_group_prefix: str = "eventops"
    session_timeout_ms: int = 6000

    # --- Worker / hot path ------------------------------------------------------------------
    batch_max_events: int = 10_000
    batch_max_wait_ms: int = 200
    inventory_refresh_s: float = 30.0
    rules_path: Path = REPO_ROOT / "pipeline" / "rules.default.toml"
    window_s: float = 60.0
    allowed_lateness_s: float = 30.0
    #: a host's windows are closed once the partition's newest event is this far ahead of them,
    #: even if the host sent nothing since (must exceed max_future_skew_s + window_s +
    #: allowed_lateness_s, so a tenant stamping within the accepted skew never closes another's)
    idle_close_s: float = 600.0
    #: processing-time idle close: a partition that has received nothing for this many seconds
    #: of wall clock (and is read to its end) has each host's windows closed as if its clock had
    #: moved on by that time (newest event + idle time - lateness, up to its newest window);
    #: 0 = off (windows then wait for newer events, or idle_close_s)
    idle_close_wall_s: float = Field(default=30.0, ge=0)
    checkpoint_interval_s: float = 10.0

    # --- Worker outages and health ----------------------------------------------------------
    #: first wait before retrying a step that failed because PostgreSQL or Kafka is away;
    #: doubles per failure (with jitter) up to the cap below
    retry_backoff_s: float = Field(default=0.2, gt=0)
    #: longest single wait between two retries (also how soon a recovery is noticed)
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    #: a worker exits (non-zero) after a service has been away this long; 0 = never give up
    outage_give_up_s: float = Field(default=0.0, ge=0)
    #: port of the worker's /healthz and /readyz (HTTP, stdlib); 0 = off
    worker_health_port: int = Field(default=0, ge=0, le=65535)
    worker_health_host: str = "127.0.0.1"

    # --- Storage: time partitions and retention ----------------------------------------------
    # (storage.partitions.Partitions, `eventops db maintain`)
    #: length of one partition of metrics/features/scores/shadow_scores; divides a day or is
    #: whole days
    partition_interval_hours: int = Field(default=24, ge=1, le=24 * 31)
    #: the maintenance job creates partitions this many days ahead of now
    partition_ahead_days: int = Field(default=2, ge=0, le=366)
    #: partitions entirely older than this are dropped (0 = keep forever)
    retention_metrics_days: int = Field(default=14, ge=0)
    retention_features_days: int = Field(default=90, ge=0)
    retention_scores_days: int = Field(default=90, ge=0)
    retention_shadow_scores_days: int = Field(default=30, ge=0)
    #: seconds between maintenance runs in processes that write (sink workers, the demo); 0 = off
    maintenance_interval_s: float = Field(default=3600.0, ge=0)
    #: longest wait for a table lock by partition DDL (attach, detach); retried later past it
    partition_lock_timeout_ms: int = Field(default=1000, ge=10)

    # --- Validation limits ------------------------------------------------------------------
    max_message_bytes: int = 1_000_000
    max_tag_value_bytes: int = 1024
    max_tags: int = 64
    max_future_skew_s: float = 300.0
    max_past_age_s: float = 7 * 24 * 3600.0
    known_tenants: str = Field(
        default="",
        description=(
            "Comma-separated tenant ids accepted at normalize; empty = use the tenants table."
        ),
    )

    # --- Serving ----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: the port of `eventops demo`: another than the API's, so a demo and `eventops api` can
    #: both run
    demo_port: int = 8080
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes sharing the port (SO_REUSEPORT); about one per core",
    )
    sse_queue_size: int = 1000
    sse_heartbeat_s: float = 15.0

    #: the dashboard's address as people reach it (links in notifications); empty =
    #: http://<api_host>:<api_port>
    public_url: str = ""

    # --- Notifications (`eventops worker notify`) -------------------------------------------
    #: seconds between two steps of the notify worker (fan-out, release, dispatch)
    notify_poll_s: float = Field(default=0.5, gt=0)
    #: seconds between re-reads of the channels and silences
    notify_refresh_s: float = Field(default=2.0, ge=0)
    #: longest wait for one endpoint's answer
    notify_timeout_s: float = Field(default=10.0, gt=0)
    #: first wait before a failed delivery is retried; doubles per attempt (with jitter)
    notify_backoff_s: float = Field(default=2.0, gt=0)
    #: longest wait between two attempts of one delivery
    notify_backoff_max_s: float = Field(default=600.0, gt=0)
    #: attempts after which a delivery is marked failed (kept; `eventops notify replay`)
    notify_max_attempts: int = Field(default=12, ge=1)
    #: endpoints delivered to at the same time
    notify_concurrency: int = Field(default=8, ge=1, le=256)
    #: the local Alertmanager (scripts/services.sh; compose: http://alertmanager:9093): the
    #: address `eventops channels add --kind alertmanager` suggests and the benchmarks use
    alertmanager_url: str = "http://127.0.0.1:59094"
    #: seconds between re-sends of firing alerts to Alertmanager (their endsAt is 4 of these
    #: ahead, as Prometheus does)
    notify_resend_s: float = Field(default=60.0, gt=0)

    # --- MLflow -----------------------------------------------------------------------------
    mlflow_artifacts: Path = REPO_ROOT / "mlruns"
    #: prefix of the registered models: each tenant has its own, ``<model_name>.<tenant>``
    model_name: str = "eventops-detector"
    #: seconds between champion alias checks in detect workers (0 = no batch model)
    champion_poll_s: float = 2.0
    #: a starting detect worker waits this long for the registry's first answer (the champion
    #: loaded, or none registered) before it consumes; past it, it starts without a batch model
    champion_startup_wait_s: float = Field(default=60.0, ge=0)
    #: detect workers also load the `challenger` alias (same poll) and store its scores in
    #: `shadow_scores`, never alerting on them
    shadow_scoring: bool = True
    #: MLflow tracking server (compose: http://mlflow:5000); empty = the `mlflow` database above
    mlflow_tracking_uri_override: str | None = Field(
        default=None, validation_alias="MLFLOW_TRACKING_URI"
    )

    # --- Local services ---------------------------------------------------------------------
    state_dir: Path = REPO_ROOT / ".services"
    #: how long a CLI command waits for Kafka, PostgreSQL or the MLflow store to answer before it
    #: reports them unreachable (one line, exit 5)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)

    @model_validator(mode="after")
    def _event_time_bounds(self) -> Settings:
        if not self.window_s > 0:
            raise ValueError(f"EVENTOPS_WINDOW_S must be > 0, got {self.window_s}")
        if not self.allowed_lateness_s >= 0:
            raise ValueError(
                f"EVENTOPS_ALLOWED_LATENESS_S must be >= 0, got {self.allowed_lateness_s}"
            )
        floor = self.max_future_skew_s + self.window_s + self.allowed_lateness_s
        if not self.idle_close_s > floor:
            raise ValueError(
                f"EVENTOPS_IDLE_CLOSE_S={self.idle_close_s:g} must exceed"
                " EVENTOPS_MAX_FUTURE_SKEW_S"
                f" + EVENTOPS_WINDOW_S + EVENTOPS_ALLOWED_LATENESS_S = {floor:g} (else a tenant"
                f" stamping events within the accepted skew closes other tenants' windows);"
                f" set EVENTOPS_IDLE_CLOSE_S above {floor:g}"
            )
        return self

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError(
                f"EVENTOPS_RETRY_BACKOFF_MAX_S ({self.retry_backoff_max_s}) must be at "
                f"least EVENTOPS_RETRY_BACKOFF_S ({self.retry_backoff_s})"
            )
        return self

    @field_validator("partition_interval_hours")
    @classmethod
    def _whole_day_fraction(cls, v: int) -> int:
        if 24 % v and v % 24:
            raise ValueError(
                f"partition_interval_hours={v} must divide 24 or be a multiple of 24 "
                "(partitions start at UTC midnight)"
            )
        return v

    def retention_days(self) -> dict[str, int]:
        """Retention per partitioned table, in days (0 = keep forever)."""
        return {
            "metrics": self.retention_metrics_days,
            "features": self.retention_features_days,
            "scores": self.retention_scores_days,
            "shadow_scores": self.retention_shadow_scores_days,
        }

    def pg_dsn(self, database: str | None = None) -> str:
        """libpq connection string (the password is only ever placed here, never logged)."""
        return (
            f"host={self.pg_host} port={self.pg_port} user={self.pg_user} "
            f"password={self.pg_password.get_secret_value()} dbname={database or self.pg_database}"
        )

    def mlflow_tracking_uri(self) -> str:
        pw = self.pg_password.get_secret_value()
        return (
            f"postgresql+psycopg://{self.pg_user}:{pw}@{self.pg_host}:{self.pg_port}/"
            f"{self.mlflow_database}"
        )

    def tenant_allowlist(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.known_tenants.split(",") if t.strip())

    def kafka_common(self) -> dict[str, object]:
        return {"bootstrap.servers": self.kafka_bootstrap}
