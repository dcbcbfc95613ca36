-- Per-host cross-metric features of each window (features/cross.py): how many metrics the host
-- reported in the window, how many of its other metrics deviated (standardized change >= 3), and
-- the largest and the mean standardized change among them. Nullable: rows written before this
-- migration (or by an older detect worker) have none; training recomputes them from the base
-- features.
ALTER TABLE features
    ADD COLUMN IF NOT EXISTS host_metrics   double precision,
    ADD COLUMN IF NOT EXISTS host_deviating double precision,
    ADD COLUMN IF NOT EXISTS host_max_z     double precision,
    ADD COLUMN IF NOT EXISTS host_mean_z    double precision;
