-- Time partitions and retention for the tables that grow with traffic: `metrics` (by ts_event),
-- `features`, `scores` and `shadow_scores` (by window_start) become declaratively range-
-- partitioned. Partitions are created ahead and on demand by pipeline.db.Partitions (daily by
-- default, EVENTOPS_PARTITION_INTERVAL_HOURS) and dropped whole by the maintenance job
-- (`eventops db maintain`, EVENTOPS_RETENTION_<TABLE>_DAYS). A DEFAULT partition per table catches
-- a row whose partition could not be created; the maintenance job moves such rows out.
--
-- Event ids: unique per tenant (no longer across tenants). A unique index of a partitioned table
-- must contain the partition key, and (tenant_id, event_id, ts_event) would let a reused id with
-- another timestamp through. So every leaf partition of `metrics` carries its own unique index
-- on (tenant_id, event_id) (the sink creates it with the partition), and the sink's
-- `ON CONFLICT DO NOTHING` without a conflict target uses it as the arbiter. Scope: an event id
-- is unique per tenant within one partition (one UTC day by default) and within the DEFAULT
-- partition; a replay has the same ts_event, so it always meets its original.
--
-- Existing rows are copied into daily partitions here (same names the pipeline uses:
-- <table>_pYYYYMMDD); the old tables are dropped afterwards.

CREATE FUNCTION pg_temp.partition_for_rows(parent text, old text, key text, leaf_unique text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d timestamptz;
    part text;
BEGIN
    FOR d IN EXECUTE format(
        'SELECT DISTINCT date_trunc(''day'', %I AT TIME ZONE ''UTC'') AT TIME ZONE ''UTC'' FROM %I',
        key, old)
    LOOP
        part := parent || '_p' || to_char(d AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       part, parent, d, d + interval '24 hours');
        IF leaf_unique <> '' THEN
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I (%s)', part || '_tenant_event', part, leaf_unique);
        END IF;
    END LOOP;
END $$;

-- --- metrics ------------------------------------------------------------------------------------
ALTER TABLE metrics RENAME TO metrics_old008;
ALTER TABLE metrics_old008 RENAME CONSTRAINT metrics_event_id_key TO metrics_old008_event_id_key;
ALTER INDEX metrics_series_ts_value RENAME TO metrics_old008_series_ts_value;
ALTER SEQUENCE metrics_id_seq OWNED BY NONE;

CREATE TABLE metrics (
    id          bigint NOT NULL DEFAULT nextval('metrics_id_seq'),
    event_id    text NOT NULL,
    tenant_id   text NOT NULL,
    host        text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    ts_event    timestamptz NOT NULL,
    unit        text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (ts_event);
ALTER SEQUENCE metrics_id_seq OWNED BY metrics.id;
CREATE INDEX metrics_series_ts_value ON metrics (tenant_id, host, metric, ts_event DESC) INCLUDE (value);
CREATE TABLE metrics_default PARTITION OF metrics DEFAULT;
CREATE UNIQUE INDEX metrics_default_tenant_event ON metrics_default (tenant_id, event_id);

SELECT pg_temp.partition_for_rows('metrics', 'metrics_old008', 'ts_event', 'tenant_id, event_id');
INSERT INTO metrics (id, event_id, tenant_id, host, metric, value, ts_event, unit, tags, ingested_at)
    SELECT id, event_id, tenant_id, host, metric, value, ts_event, unit, tags, ingested_at
    FROM metrics_old008;
DROP TABLE metrics_old008;

-- --- features -----------------------------------------------------------------------------------
ALTER TABLE features RENAME TO features_old008;
ALTER TABLE features_old008 RENAME CONSTRAINT features_pkey TO features_old008_pkey;

CREATE TABLE features (
    tenant_id      text NOT NULL,
    host           text NOT NULL,
    metric         text NOT NULL,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    count          integer NOT NULL,
    mean           double precision,
    std            double precision,
    min            double precision,
    max            double precision,
    last           double precision,
    slope          double precision,
    change         double precision,
    gap            double precision,
    host_metrics   double precision,
    host_deviating double precision,
    host_max_z     double precision,
    host_mean_z    double precision,
    PRIMARY KEY (tenant_id, host, metric, window_start)
) PARTITION BY RANGE (window_start);
CREATE TABLE features_default PARTITION OF features DEFAULT;

SELECT pg_temp.partition_for_rows('features', 'features_old008', 'window_start', '');
INSERT INTO features (tenant_id, host, metric, window_start, window_end, count, mean, std, min, max,
                      last, slope, change, gap, host_metrics, host_deviating, host_max_z, host_mean_z)
    SELECT tenant_id, host, metric, window_start, window_end, count, mean, std, min, max,
           last, slope, change, gap, host_metrics, host_deviating, host_max_z, host_mean_z
    FROM features_old008;
DROP TABLE features_old008;

-- --- scores -------------------------------------------------------------------------------------
ALTER TABLE scores RENAME TO scores_old008;
ALTER TABLE scores_old008 RENAME CONSTRAINT scores_pkey TO scores_old008_pkey;

CREATE TABLE scores (
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
) PARTITION BY RANGE (window_start);
CREATE TABLE scores_default PARTITION OF scores DEFAULT;

SELECT pg_temp.partition_for_rows('scores', 'scores_old008', 'window_start', '');
INSERT INTO scores (tenant_id, host, metric, window_start, window_end, score, severity, components,
                    actual, expected, explanation, model_version)
    SELECT tenant_id, host, metric, window_start, window_end, score, severity, components,
           actual, expected, explanation, model_version
    FROM scores_old008;
DROP TABLE scores_old008;

-- --- shadow_scores ------------------------------------------------------------------------------
ALTER TABLE shadow_scores RENAME TO shadow_scores_old008;
ALTER TABLE shadow_scores_old008 RENAME CONSTRAINT shadow_scores_pkey TO shadow_scores_old008_pkey;

CREATE TABLE shadow_scores (
    tenant_id        text NOT NULL,
    model_version    text NOT NULL,
    window_start     timestamptz NOT NULL,
    host             text NOT NULL,
    metric           text NOT NULL,
    window_end       timestamptz NOT NULL,
    score            double precision NOT NULL,
    raw              double precision,
    champion_version text,
    champion_score   double precision,
    PRIMARY KEY (tenant_id, model_version, window_start, host, metric)
) PARTITION BY RANGE (window_start);
CREATE TABLE shadow_scores_default PARTITION OF shadow_scores DEFAULT;

SELECT pg_temp.partition_for_rows('shadow_scores', 'shadow_scores_old008', 'window_start', '');
INSERT INTO shadow_scores (tenant_id, model_version, window_start, host, metric, window_end, score,
                           raw, champion_version, champion_score)
    SELECT tenant_id, model_version, window_start, host, metric, window_end, score,
           raw, champion_version, champion_score
    FROM shadow_scores_old008;
DROP TABLE shadow_scores_old008;

DROP FUNCTION pg_temp.partition_for_rows(text, text, text, text);
