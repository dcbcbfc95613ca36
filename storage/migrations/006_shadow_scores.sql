-- Shadow scores: what the MLflow `challenger` batch model would have scored each closed window.
-- Written by the sink in the same transaction as `scores`; never read by alerting. `score` uses
-- the champion's calibration (pipeline.stages.anomaly.calibrate_batch_score), `raw` is the
-- model's own score before it; `champion_version`/`champion_score` are the champion's batch
-- component of the same window (NULL without a champion), so a comparison needs no join with
-- `scores` (which has no time index).
-- The key order serves the one read, `/models` (a tenant's challenger over the last day): a
-- range scan of the primary key, so no secondary index. Replays write nothing twice.

CREATE TABLE IF NOT EXISTS shadow_scores (
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
);
