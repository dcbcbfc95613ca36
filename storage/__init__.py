"""PostgreSQL: the one package that holds SQL (the storage seam).

Infrastructure
    :mod:`~storage.connect` (connections, ``ping``, ``count_rows``), :mod:`~storage.migrate`
    (``migrations/*.sql``, applied in order), :mod:`~storage.schema` (table names and column
    lists, the feature columns derived from the feature code), :mod:`~storage.partitions`
    (time partitions, retention, the maintenance thread), :mod:`~storage.arrays` (binary
    arrays as numpy).
Writers
    :mod:`~storage.sink` is the only writer of pipeline rows (metrics, features, scores, shadow
    scores, alerts and their events, dead letters, checkpoints via
    :mod:`~storage.checkpoints`).
Repositories (one per table family; the API, training and the CLI call them instead of
writing SQL)
    :mod:`~storage.alerts` (alerts, alert events, incident reads, the SSE pages),
    :mod:`~storage.series` (metric samples, features, scores), :mod:`~storage.inventory`,
    :mod:`~storage.tenants` (tenants and API keys), :mod:`~storage.feedback`,
    :mod:`~storage.shadow` (shadow-score statistics).

Conventions: a repository function takes a connection as its first argument — a sync
``psycopg.Connection`` (pipeline, CLI, training; functions that write commit) or an
``AsyncConnection`` from the API's pool (``async def``; the pool's connection context commits).
Where both sides run the same statement it is written once, as a module constant, and the
async twin carries an ``a`` prefix (``shadow.stats_row`` / ``shadow.astats_row``) or a name of
its own (``inventory.set_inventory`` / ``inventory.put_item``). Every read the API makes takes
the tenant explicitly and filters by it; the pipeline's snapshots (``load_tenants``,
``load_inventory``, ``load_open_alerts``) and training's ``tenant=None`` read every tenant.
Rows are returned as tuples in a documented column order (``*_ROW`` constants), so the API can
serialize them without a model per row.
"""
