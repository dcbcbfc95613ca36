-- Notifications (issue 11): channels per tenant, silences and maintenance windows, and the
-- delivery of every alert transition to every matching channel, with its attempts.
--
-- The alert transitions (`alert_events`) are the outbox: the notify worker fans each one out
-- into `deliveries` (one row per channel and transition, unique, so a re-run fans out nothing
-- twice), moving `notify_cursor` in the same transaction, then delivers each channel's rows in
-- `seq` order (per-endpoint ordering) with backoff; every attempt is a row of
-- `delivery_attempts`.

CREATE TABLE IF NOT EXISTS channels (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('alertmanager', 'webhook')),
    url         text NOT NULL,
    -- webhook signing secret (`whsec_…`, Standard Webhooks); shown once at creation, never
    -- returned by a read
    secret      text,
    -- {"min_severity": "warning"|"critical", "matchers": [{"name","op","value"}, …]}
    filter      jsonb NOT NULL DEFAULT '{}'::jsonb,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE IF NOT EXISTS silences (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL DEFAULT 'silence' CHECK (kind IN ('silence', 'maintenance')),
    matchers    jsonb NOT NULL DEFAULT '[]'::jsonb,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,  -- 'infinity' for a maintenance window with no end
    schedule    text,                  -- cron (UTC) of a maintenance window
    duration_s  double precision,
    author      text NOT NULL DEFAULT '',
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX IF NOT EXISTS silences_tenant_end ON silences (tenant_id, ends_at);

CREATE TABLE IF NOT EXISTS deliveries (
    id              bigserial PRIMARY KEY,
    tenant_id       text NOT NULL,
    channel_id      bigint NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,   -- alert_events.seq of the transition
    alert_id        text NOT NULL,
    kind            text NOT NULL,     -- the transition: open | escalate | deescalate | resolve
    -- pending: to send; delivered; failed: gave up after the cap (kept, `eventops notify
    -- replay` sends it again); silenced: muted when fanned out (sent if the silence ends while
    -- the alert still fires)
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'silenced')),
    silenced_by     text[] NOT NULL DEFAULT '{}',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (channel_id, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (channel_id, seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_silenced ON deliveries (tenant_id) WHERE state = 'silenced';
CREATE INDEX IF NOT EXISTS deliveries_alert ON deliveries (tenant_id, alert_id, seq);

CREATE TABLE IF NOT EXISTS delivery_attempts (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code integer,            -- NULL: no HTTP answer (refused, timed out)
    latency_ms  double precision NOT NULL,
    error       text
);
CREATE INDEX IF NOT EXISTS delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt);

-- how far the notify worker has fanned out alert_events (one row); it starts at the newest
-- transition stored before this migration, so an upgrade does not page for old alerts
CREATE TABLE IF NOT EXISTS notify_cursor (
    name     text PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);
INSERT INTO notify_cursor (name, last_seq)
    SELECT 'fanout', coalesce(max(seq), 0) FROM alert_events
ON CONFLICT DO NOTHING;
