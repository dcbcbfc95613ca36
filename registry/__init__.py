"""The registry seam: every MLflow call of the project is made in this package.

``pipeline``, ``training``, ``serving`` and ``cli`` import these modules; none of them imports
MLflow (import-linter contract "MLflow only behind the registry seam").  The package sits beside
``storage``, below ``pipeline`` and ``training``: it does the MLflow I/O, training decides.

=================  ==========================================================================
``tags``           alias and ``eventops.*`` tag names (imports nothing)
``client``         tracking URI, the ``MlflowClient``, experiments, MLflow errors and retries
``aliases``        alias lookups and moves, decision tags, ``promote`` / ``rollback``
``loading``        a registered version as a ``models.batch.BatchModel``
``watcher``        ``ChampionWatcher``: polls an alias, loads off the hot path, hot swap
``runs``           log a training run and register its model as a new version
``status``         champion, challenger and versions for the API and the CLI
``scratch``        throw-away MLflow databases for tests, notebooks and benchmarks
=================  ==========================================================================

``import mlflow`` costs ~2 s: no module here imports it at import time, only the functions that
call it, so a worker or the API pays for it in the watcher thread or on the first request.
"""
