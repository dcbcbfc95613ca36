"""``eventops train`` and ``eventops models list|status|promote|rollback``.

Registered by ``cli.main`` (``register(app)``).  Every MLflow call goes through ``registry``,
whose modules import MLflow only when they call it (``import mlflow`` costs ~2 s, which every
other ``eventops`` command should not pay).  The tracking URI override comes from
``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` here, at the entry point; without it the project's
PostgreSQL database ``mlflow`` is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import BadArgument, describe
from registry.client import DEFAULT_EXPERIMENT

log = logging.getLogger(__name__)

TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                 help="MLflow tracking URI (default: the project's PostgreSQL, db `mlflow`)"),
]  # fmt: skip

TenantOpt = Annotated[
    str,
    typer.Option("--tenant", envvar="EVENTOPS_TENANT",
                 help="the tenant whose registered model this is (each tenant has its own)"),
]  # fmt: skip

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _name(s, tenant: str) -> str:
    """The tenant's registered model; a bad tenant id is one line."""
    from registry.names import tenant_model

    try:
        return tenant_model(s, tenant)
    except ValueError as e:
        raise BadArgument(str(e)) from e


def parse_every(text: str) -> float:
    """``"6h"`` -> 21600.0; accepts s/m/h/d suffixes (plain number = seconds).

    >>> parse_every("6h"), parse_every("90s"), parse_every("1.5m"), parse_every("30")
    (21600.0, 90.0, 90.0, 30.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bad interval {text!r}; use e.g. 30m, 6h, 1d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _settings():
    from core.settings import Settings

    return Settings()


def _tracking(s, override: str | None) -> str:
    """The tracking URI, after checking that its store answers (``EVENTOPS_CONNECT_TIMEOUT_S``).

    MLflow's own waits are bounded too, for a store that goes away after the check: the HTTP
    client's retries through its environment settings
    (:data:`registry.client.HTTP_RETRY_DEFAULTS`), and the SQL store's connection retries — ten
    attempts with exponential backoff (~100 s) and no setting in MLflow 3.17 — through
    :func:`registry.client.limit_sql_retries`.
    """
    from cli.preflight import check_tracking
    from registry.client import HTTP_RETRY_DEFAULTS, limit_sql_retries, resolve_tracking_uri

    for k, v in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(k, v)  # entry point: MLflow reads these on each request
    uri = resolve_tracking_uri(s, override)
    check_tracking(s, uri)
    limit_sql_retries(3)
    return uri


def register(app: typer.Typer) -> None:
    """Add ``train`` and the ``models`` group to the ``eventops`` app."""
    models_app = typer.Typer(help="Registered batch models (MLflow).", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @app.command()
    def train(
        tenant: TenantOpt,
        source: Annotated[
            str, typer.Option(help="postgres (the tenant's stored events + feedback) or csv")
        ] = "postgres",
        csv: Annotated[list[Path] | None, typer.Option(help="CSV files/dirs (source=csv)")] = None,
        window_s: Annotated[
            float | None, typer.Option(help="window length for CSV series (default: sampling)")
        ] = None,
        since_hours: Annotated[
            float | None, typer.Option(help="history to use (source=postgres)")
        ] = None,
        train_fraction: Annotated[
            float, typer.Option(help="older share of the range the model is fitted on")
        ] = 0.7,
        inject: Annotated[
            int, typer.Option(help="synthetic anomalies injected per series in each part")
        ] = 2,
        seed: Annotated[int, typer.Option()] = 0,
        family: Annotated[
            str, typer.Option(help="isolation_forest | robust_z")
        ] = "isolation_forest",
        n_estimators: Annotated[int, typer.Option(help="IsolationForest trees")] = 100,
        cross_metric: Annotated[
            bool,
            typer.Option(
                "--cross-metric",
                help="also feed the per-host cross-metric features (features/cross.py)",
            ),
        ] = False,
        max_train_windows: Annotated[int | None, typer.Option()] = 200_000,
        margin: Annotated[
            float, typer.Option(help="NAB points the candidate must win by out of sample")
        ] = 1.0,
        max_alerts_per_series_day: Annotated[float, typer.Option()] = 6.0,
        max_latency_ms: Annotated[float, typer.Option(help="per 10k windows")] = 500.0,
        no_promote: Annotated[
            bool, typer.Option("--no-promote", help="register and judge, never move an alias")
        ] = False,
        every: Annotated[
            str | None, typer.Option(help="retrain forever at this interval, e.g. 6h")
        ] = None,
        experiment: Annotated[str, typer.Option()] = DEFAULT_EXPERIMENT,
        tracking_uri: TrackingOpt = None,
    ) -> None:
        """Train the tenant's batch detector on the older part of its data, judge it by replay
        on the newer part against its champion and the ensemble alone, register it in MLflow
        and promote it only when it wins out of sample."""
        from features.cross import CROSS_FEATURES
        from features.windows import FEATURES
        from training.promotion import PromotionPolicy
        from training.replay import Events, feedback_from_postgres
        from training.train import TrainConfig, train_and_judge

        s = _settings()
        _name(s, tenant)
        cfg = TrainConfig(
            family=family, seed=seed, max_train_windows=max_train_windows,
            params={"n_estimators": n_estimators} if family == "isolation_forest" else {},
            features=FEATURES + CROSS_FEATURES if cross_metric else FEATURES,
        )  # fmt: skip
        policy = PromotionPolicy(
            margin=margin,
            max_alerts_per_series_day=max_alerts_per_series_day,
            max_latency_ms_per_10k=max_latency_ms,
        )
        interval = parse_every(every) if every else None

        if source not in ("csv", "postgres"):
            raise BadArgument(f"unknown --source {source!r}: use postgres or csv")
        if source == "csv" and not csv:
            raise BadArgument("--csv is required with --source csv")
        if not 0 < train_fraction < 1:
            raise BadArgument(f"--train-fraction must be in (0, 1), got {train_fraction}")
        uri = _tracking(s, tracking_uri)

        def once() -> None:
            feedback: list = []
            if source == "csv":
                events = Events.from_csv(csv or [], tenant, window_s)
            else:
                since = time.time() - since_hours * 3600 if since_hours else None
                events = Events.from_postgres(s, tenant, since=since)
                feedback = feedback_from_postgres(s, tenant, pad_s=s.window_s)
            j = train_and_judge(
                s, tenant, events, cfg, policy, train_fraction=train_fraction,
                per_series=inject, seed=seed, feedback=feedback, promote=not no_promote,
                tracking_uri=uri, experiment=experiment,
            )  # fmt: skip
            d = j.decision
            typer.echo(json.dumps({
                "tenant": tenant, "version": j.version, "run_id": j.run_id,
                "events": len(events), "split_at": j.report.split_ts,
                "decision": {"action": j.action, "reason": d.reason,
                             "champion_version": d.champion_version, "challenger": d.challenger},
                "out_of_sample": j.report.arms,
                "in_sample": {"candidate": j.report.in_sample["candidate"]},
                "timings_s": {k: round(v, 3) for k, v in j.timings.items()},
            }, indent=2, default=str))  # fmt: skip

        if interval is None:
            try:
                once()
            except ValueError as e:
                raise BadArgument(str(e)) from e
            return
        log.info("retraining every %s (%.0f s); Ctrl-C stops", every, interval)
        while True:
            t0 = time.monotonic()
            try:
                once()
            except Exception as e:  # noqa: BLE001 - a failed round must not stop the schedule
                log.error("training round failed: %s; next round in %s", describe(e)[0], every)
                log.debug("traceback of the failed round", exc_info=e)
            time.sleep(max(0.0, interval - (time.monotonic() - t0)))

    @models_app.command("list")
    def models_list(tenant: TenantOpt, tracking_uri: TrackingOpt = None) -> None:
        """The tenant's registered versions, newest first: aliases, decision and NAB score."""
        from registry.status import list_versions

        s = _settings()
        _name(s, tenant)
        rows = list_versions(s, tenant, _tracking(s, tracking_uri))
        if not rows:
            typer.echo(f"no registered versions for tenant {tenant}")
            return
        for r in rows:
            nab = (r["metrics"] or {}).get("nab_standard")
            typer.echo(
                f"v{r['version']:<4} {','.join(r['aliases']) or '-':<20} {r['family'] or '-':<17} "
                f"nab={'-' if nab is None else f'{nab:.2f}':<8} {r['decision'] or '-':<12} "
                f"{r['reason'] or ''}"
            )

    @models_app.command("status")
    def models_status(
        tenant: TenantOpt,
        tracking_uri: TrackingOpt = None,
        shadow: Annotated[
            bool,
            typer.Option(
                "--shadow/--no-shadow",
                help="add the challenger's shadow-scoring statistics (last 24 h)",
            ),
        ] = True,
    ) -> None:
        """The tenant's champion, challenger, last decision and alias history (the API's
        /models) as JSON."""
        from registry.status import model_status
        from training.status import shadow_stats

        s = _settings()
        _name(s, tenant)
        st = model_status(s, tenant, _tracking(s, tracking_uri))
        if shadow and st.get("challenger"):
            from storage.connect import connect

            with connect(s, autocommit=True) as conn:
                st["challenger"]["shadow"] = shadow_stats(
                    conn, tenant, str(st["challenger"]["version"])
                )
        typer.echo(json.dumps(st, indent=2, default=str))

    @models_app.command("promote")
    def models_promote(
        version: Annotated[str, typer.Argument(help="registered version to make champion")],
        tenant: TenantOpt,
        reason: Annotated[str, typer.Option()] = "manual",
        tracking_uri: TrackingOpt = None,
    ) -> None:
        """Make VERSION the tenant's champion now (operator override; no evaluation)."""
        from registry.aliases import promote
        from registry.client import client

        s = _settings()
        name = _name(s, tenant)
        try:
            prev = promote(client(s, _tracking(s, tracking_uri)), name, version, reason)
        except ValueError as e:
            raise BadArgument(str(e)) from e
        typer.echo(f"{name}: champion {prev or '-'} -> {version.removeprefix('v')}")

    @models_app.command("rollback")
    def models_rollback(tenant: TenantOpt, tracking_uri: TrackingOpt = None) -> None:
        """Restore the tenant's champion before the current one (again: one further back)."""
        from registry.aliases import rollback
        from registry.client import client

        s = _settings()
        name = _name(s, tenant)
        try:
            cur, prev = rollback(client(s, _tracking(s, tracking_uri)), name)
        except ValueError as e:
            raise BadArgument(str(e)) from e
        typer.echo(f"{name}: champion {cur} -> {prev} (rolled back)")
