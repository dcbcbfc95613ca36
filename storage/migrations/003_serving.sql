-- Serving: operator feedback on alerts (read by training as labels) and indexes for the API.

-- One row per label an operator gives an alert. Training reads exactly these columns.
CREATE TABLE IF NOT EXISTS feedback (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    alert_id    text NOT NULL,
    label       text NOT NULL CHECK (label IN ('true_positive', 'false_positive')),
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    key_id      text
);
CREATE INDEX IF NOT EXISTS feedback_tenant_alert ON feedback (tenant_id, alert_id, created_at DESC);

-- keyset pagination of /alerts (newest first, id breaks ties) and incident grouping
CREATE INDEX IF NOT EXISTS alerts_tenant_ts_id ON alerts (tenant_id, ts_event DESC, id DESC);
CREATE INDEX IF NOT EXISTS alerts_tenant_opened ON alerts (tenant_id, opened_at DESC);
CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events (alert_id, seq);
