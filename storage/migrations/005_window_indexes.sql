-- Every read of `features` and `scores` names the series (primary key prefix); training reads
-- whole time ranges (a sequential scan). The secondary indexes only cost ingest time.
DROP INDEX IF EXISTS features_tenant_end;
DROP INDEX IF EXISTS scores_tenant_end;
DROP INDEX IF EXISTS scores_high;
