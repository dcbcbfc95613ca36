-- Range reads of one series (`/metrics`, `/metrics/cpu`) answered from the index alone, and one
-- index fewer to maintain on ingest: every metrics read names the host (per-host reads use a
-- loose index scan over this index), so the (tenant_id, metric, ts_event) index is not needed.
CREATE INDEX IF NOT EXISTS metrics_series_ts_value ON metrics (tenant_id, host, metric, ts_event DESC) INCLUDE (value);
DROP INDEX IF EXISTS metrics_series_ts;
DROP INDEX IF EXISTS metrics_tenant_metric_ts;
