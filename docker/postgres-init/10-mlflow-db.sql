-- Runs once, on the first start of the postgres:16 container (empty volume), as POSTGRES_USER.
-- Mirrors scripts/services.sh: databases `eventops` (POSTGRES_DB) and `mlflow`, both owned by
-- the `eventops` role.
CREATE DATABASE mlflow OWNER eventops;
