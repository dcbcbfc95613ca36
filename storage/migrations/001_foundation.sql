-- EventOps foundation schema. Applied once by `eventops db migrate` (tracked in schema_migrations).
-- The MVP's columns of `metrics` and `alerts` are kept as they were, so its psql query still works:
--   SELECT tenant_id, host, metric, value, ts_event FROM metrics ORDER BY ts_event DESC LIMIT 10;

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   text PRIMARY KEY CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(tenant_id) ON DELETE CASCADE,
    scope       text NOT NULL CHECK (scope IN ('read', 'ingest', 'admin')),
    key_hash    bytea NOT NULL,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Enrichment source: tags per (tenant, source). The enrich stage caches it and refreshes.
CREATE TABLE IF NOT EXISTS inventory (
    tenant_id   text NOT NULL,
    source_id   text NOT NULL,
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, source_id)
);

CREATE TABLE IF NOT EXISTS metrics (
    id          bigserial,
    event_id    text NOT NULL,
    tenant_id   text NOT NULL,
    host        text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    ts_event    timestamptz NOT NULL,
    unit        text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT metrics_event_id_key UNIQUE (event_id)
);
CREATE INDEX IF NOT EXISTS metrics_series_ts ON metrics (tenant_id, host, metric, ts_event DESC);
CREATE INDEX IF NOT EXISTS metrics_tenant_metric_ts ON metrics (tenant_id, metric, ts_event DESC);

-- One row per alert (a series crossing a rule); state moves open -> resolved.
CREATE TABLE IF NOT EXISTS alerts (
    id            bigserial PRIMARY KEY,
    alert_id      text NOT NULL UNIQUE,
    tenant_id     text NOT NULL,
    host          text NOT NULL,
    metric        text NOT NULL,
    value         double precision NOT NULL,
    severity      text NOT NULL CHECK (severity IN ('warning', 'critical')),
    ts_event      timestamptz NOT NULL,
    state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    rule          text NOT NULL DEFAULT '',
    threshold     double precision,
    message       text NOT NULL DEFAULT '',
    score         double precision,
    explanation   jsonb NOT NULL DEFAULT '{}'::jsonb,
    model_version text,
    opened_at     timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    resolved_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alerts_tenant_ts ON alerts (tenant_id, ts_event DESC);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (tenant_id, host, metric) WHERE state = 'open';

-- Append-only alert transitions (open / escalate / resolve). `seq` is the SSE event id and the
-- outbox cursor: rows with published_at NULL are (re)published to ops.alert.v1.
CREATE TABLE IF NOT EXISTS alert_events (
    seq          bigserial PRIMARY KEY,
    event_key    text NOT NULL UNIQUE,
    alert_id     text NOT NULL,
    tenant_id    text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('open', 'escalate', 'deescalate', 'resolve')),
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS alert_events_tenant_seq ON alert_events (tenant_id, seq);
CREATE INDEX IF NOT EXISTS alert_events_unpublished ON alert_events (seq) WHERE published_at IS NULL;

-- Stage state + Kafka offsets, written in one transaction with the rows they cover.
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    state          bytea,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Dead letters of the embedded runner (the Kafka runner writes them to ops.dlq.v1 instead).
CREATE TABLE IF NOT EXISTS dead_letters (
    id          bigserial PRIMARY KEY,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    stage       text NOT NULL DEFAULT '',
    source      text NOT NULL DEFAULT '',
    raw         bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
