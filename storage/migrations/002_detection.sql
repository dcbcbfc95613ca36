-- Window features and anomaly scores per (series, window), written by the sink in the same
-- transaction as the metrics they came from. `series_id` is the stable series code the detect
-- stage uses; `model_version` is the batch model (MLflow) version that scored the window.

CREATE TABLE IF NOT EXISTS series (
    series_id   bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    host        text NOT NULL,
    metric      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, host, metric)
);

CREATE TABLE IF NOT EXISTS features (
    tenant_id    text NOT NULL,
    host         text NOT NULL,
    metric       text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    count        integer NOT NULL,
    mean         double precision,
    std          double precision,
    min          double precision,
    max          double precision,
    last         double precision,
    slope        double precision,
    change       double precision,
    gap          double precision,
    PRIMARY KEY (tenant_id, host, metric, window_start)
);
CREATE INDEX IF NOT EXISTS features_tenant_end ON features (tenant_id, window_end DESC);

CREATE TABLE IF NOT EXISTS scores (
    tenant_id     text NOT NULL,
    host          text NOT NULL,
    metric        text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    score         double precision NOT NULL,
    severity      text NOT NULL,
    components    jsonb NOT NULL DEFAULT '{}'::jsonb,
    actual        double precision,
    expected      double precision,
    explanation   jsonb NOT NULL DEFAULT '{}'::jsonb,
    model_version text,
    PRIMARY KEY (tenant_id, host, metric, window_start)
);
CREATE INDEX IF NOT EXISTS scores_tenant_end ON scores (tenant_id, window_end DESC);
CREATE INDEX IF NOT EXISTS scores_high ON scores (tenant_id, window_end DESC) WHERE score >= 0.7;
