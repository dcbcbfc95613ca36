"""The ``eventops`` command line (also ``python -m cli``)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import EXIT_REJECTED, BadArgument, describe, one_line
from cli.preflight import KAFKA_LOGGER, check_kafka, check_postgres, kafka_quiet
from core import __version__
from core.errors import NotFound, ServiceError
from core.records import iso_z
from core.settings import Settings

app = typer.Typer(
    help="EventOps: anomaly detection for operational telemetry.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants.", no_args_is_help=True)
inventory_app = typer.Typer(help="Inventory (enrichment tags per source).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(topics_app, name="topics")
app.add_typer(tenants_app, name="tenants")
app.add_typer(inventory_app, name="inventory")

log = logging.getLogger("eventops")


def _settings() -> Settings:
    return Settings()


#: the tenants table's CHECK constraint (migrations/001_foundation.sql)
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    from core.logs import check_format, configure

    lvl = getattr(logging, level.upper(), logging.INFO)
    try:
        fmt = check_format(fmt)
    except ValueError as e:
        raise BadArgument(str(e)) from None
    configure(lvl, fmt)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # librdkafka's own lines (a refused connection is logged every few ms): the commands report
    # Kafka failures themselves; DEBUG shows them
    logging.getLogger(KAFKA_LOGGER).setLevel(
        logging.DEBUG if lvl <= logging.DEBUG else logging.CRITICAL
    )


class _Deliveries:
    """Delivery callback of the CLI's producers: counts delivered and failed records."""

    def __init__(self) -> None:
        self.delivered = self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err, msg) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = err.str()

    def check(self, p, topic: str, sent: int, timeout: float, s: Settings) -> None:
        """Flush ``p``; raise :class:`ServiceError` unless every record was delivered."""
        left = p.flush(timeout)
        lost = self.failed + left
        if lost:
            why = self.first_error or f"no answer within {timeout:g} s"
            raise ServiceError(
                f"{lost} of {sent} events were not delivered to {topic} ({why}) — "
                f"check Kafka at {s.kafka_bootstrap} and the topic (`eventops topics create`)"
            )


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"eventops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option(envvar="EVENTOPS_LOG_LEVEL")] = "INFO",
    log_format: Annotated[
        str, typer.Option(envvar="EVENTOPS_LOG_FORMAT", help="text, or json: one object a line")
    ] = "text",
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    _setup_logging(log_level, log_format)


# --- db / topics / tenants / inventory ---------------------------------------------------------


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the versioned SQL migrations not yet applied."""
    from storage.connect import connect
    from storage.migrate import migrate

    with connect(_settings()) as conn:
        applied = migrate(conn)
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema up to date")


@db_app.command("maintain")
def db_maintain() -> None:
    """Partitions ahead, DEFAULT partitions emptied, retention (sink workers also run it hourly)."""
    from storage.connect import connect
    from storage.partitions import PartitionPolicy, maintain

    s = _settings()
    with connect(s) as conn:
        rep = maintain(conn, PartitionPolicy.from_settings(s))
    typer.echo(rep.summary())


@topics_app.command("create")
def topics_create(
    partitions: Annotated[int | None, typer.Option(help="default: settings")] = None,
    wait: Annotated[
        float | None,
        typer.Option(help="seconds to wait for the broker (default EVENTOPS_CONNECT_TIMEOUT_S)"),
    ] = None,
) -> None:
    """Create the EventOps topics that do not exist yet."""
    from pipeline import kafka as kq

    s = _settings()
    check_kafka(s, timeout=wait)
    created = kq.create_topics(s, partitions=partitions)
    typer.echo(f"created: {', '.join(created)}" if created else "topics exist")


@tenants_app.command("create")
def tenants_create(tenant_id: str, name: str = "") -> None:
    """Register a tenant (events of unknown tenants are dead-lettered)."""
    from storage.connect import connect
    from storage.tenants import create_tenant

    if not _TENANT_ID.fullmatch(tenant_id):
        raise BadArgument(
            f"invalid tenant id {tenant_id!r}: use 1-64 letters, digits, '_', '.' or "
            "'-', starting with a letter or digit"
        )
    s = _settings()
    with connect(s) as conn:
        new = create_tenant(conn, tenant_id, name)
    # running normalize workers re-read the tenants table when an unknown tenant's event arrives
    typer.echo(f"tenant {tenant_id} created" if new else f"tenant {tenant_id} exists")


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants."""
    from storage.connect import connect
    from storage.tenants import load_tenants

    with connect(_settings()) as conn:
        for t in sorted(load_tenants(conn)):
            typer.echo(t)


@inventory_app.command("set")
def inventory_set(
    tenant: str,
    source: str,
    tags: Annotated[list[str], typer.Argument(help="key=value pairs")],
    replace: Annotated[bool, typer.Option(help="replace instead of merging")] = False,
) -> None:
    """Set inventory tags of a source (host); workers pick them up within the refresh period."""
    from storage.connect import connect
    from storage.inventory import set_inventory
    from storage.tenants import load_tenants

    pairs = {}
    for t in tags:
        if "=" not in t:
            raise BadArgument(f"tag {t!r} is not key=value")
        k, v = t.split("=", 1)
        pairs[k] = v
    s = _settings()
    _check_inventory_entry(s, tenant, source, pairs)
    with connect(s) as conn:
        if tenant not in load_tenants(conn):
            raise NotFound(
                f"tenant {tenant!r} does not exist — create it first: "
                f"eventops tenants create {tenant}"
            )
        out = set_inventory(conn, tenant, source, pairs, replace=replace)
    typer.echo(json.dumps(out, sort_keys=True))


def _check_inventory_entry(s: Settings, tenant: str, source: str, tags: dict[str, str]) -> None:
    """Tenant, source and tags must pass the checks an event carrying them passes at normalize
    (the source is the events' ``host``): an entry no event can match, or tags PostgreSQL cannot
    store, are refused here."""
    import orjson

    from cli.tally import check_locally

    try:
        raw = orjson.dumps(
            {
                "tenant_id": tenant,
                "host": source,
                "metric": "inventory",
                "value": 0,
                "ts_event": time.time(),
                "tags": tags,
            }
        )
    except TypeError as e:  # lone surrogates from a non-UTF-8 argument
        raise BadArgument(f"inventory entry is not valid UTF-8 text: {e}") from None
    v = check_locally(s, [raw], None)
    if v.first is not None:
        _, reason, detail = v.first
        raise BadArgument(
            f"invalid inventory entry for {tenant}/{source}: {reason}: {one_line(detail, 160)}"
        )


@inventory_app.command("list")
def inventory_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """Show inventory entries."""
    from storage.connect import connect
    from storage.inventory import load_inventory

    with connect(_settings()) as conn:
        for (t, s), tags in sorted(load_inventory(conn).items()):
            if tenant is None or t == tenant:
                typer.echo(f"{t}\t{s}\t{json.dumps(tags, sort_keys=True)}")


@inventory_app.command("delete")
def inventory_delete(tenant: str, source: str) -> None:
    """Remove an inventory entry."""
    from storage.connect import connect
    from storage.inventory import delete_inventory

    with connect(_settings()) as conn:
        typer.echo("deleted" if delete_inventory(conn, tenant, source) else "not found")


# --- running -----------------------------------------------------------------------------------


@app.command()
def worker(
    stages: Annotated[str, typer.Argument(help="e.g. normalize,enrich,detect,sink or one stage")],
    group: Annotated[str | None, typer.Option(help="consumer group (default per chain)")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="exit after N s without input")] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            help="serve /healthz and /readyz on this port"
            " (default EVENTOPS_WORKER_HEALTH_PORT; 0 = off)"
        ),
    ] = None,
) -> None:
    """Run a Kafka worker for a chain of stages, or `notify`: the delivery worker.

    It rides out PostgreSQL and Kafka outages (paused, retrying with backoff; readiness
    `degraded`) and exits only when stopped, or after EVENTOPS_OUTAGE_GIVE_UP_S if that is set.
    `eventops worker notify` sends alert transitions to the tenants' channels (Alertmanager,
    webhooks) with retries; it needs PostgreSQL only.
    """
    if stages.strip() == "notify":
        _notify_worker()
        return
    from pipeline import kafka as kq
    from pipeline.chain import parse_chain
    from pipeline.kafka_worker import KafkaWorker

    s = _settings()
    try:
        parse_chain(stages)
    except ValueError as e:
        raise BadArgument(str(e)) from None
    check_postgres(s)  # bounded: a clear error at start instead of a worker waiting on its own
    check_kafka(s, kq.all_topics(s))

    # the sink's writer thread spends its time waiting on PostgreSQL; each time the socket is
    # ready again it needs the GIL back from the CPU-bound stage thread, which by default can
    # hold it 5 ms. With 0.5 ms a 600k-event replay ran at 47.4k instead of 43.7k events/s
    # (medians of 3 alternating runs)
    sys.setswitchinterval(0.0005)
    if health_port is not None:
        s = s.model_copy(update={"worker_health_port": health_port})
    w = KafkaWorker(s, stages, group=group)
    w.install_signal_handlers()
    st = w.run(idle_exit_s=idle_exit)
    log.info(
        "worker done: %d consumed, %d stored, %d dead, %d alerts; outages waited out: "
        "%d postgres, %d kafka retries",
        st.consumed,
        st.stored,
        st.dead,
        st.alerts,
        st.outage_retries["postgres"],
        st.outage_retries["kafka"],
    )


def _notify_worker() -> None:
    from notify.worker import NotifyWorker

    s = _settings()
    check_postgres(s)
    w = NotifyWorker(s)
    w.install_signal_handlers()
    log.info("notify worker started (dashboard links to %s)", w.dashboard)
    st = w.run()
    log.info(
        "notify worker done: %d fanned out, %d delivered, %d retried, %d failed, %d silenced",
        st.fanned_out,
        st.delivered,
        st.retried,
        st.failed,
        st.silenced,
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="processes sharing the port with SO_REUSEPORT (default EVENTOPS_API_WORKERS)"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
    log_format: Annotated[
        str, typer.Option(envvar="EVENTOPS_LOG_FORMAT", help="text, or json: one object a line")
    ] = "text",
    access_log: Annotated[bool, typer.Option()] = True,
    timeout_keep_alive: Annotated[
        int, typer.Option(help="seconds an idle keep-alive connection stays open")
    ] = 5,
) -> None:
    """Serve the HTTP API (alerts from the Kafka alert topic)."""
    from core.logs import configure
    from serving.serve import ServeOptions, serve

    if log_format.strip().lower() == "json":  # `eventops api --log-format json`: the CLI's too
        configure(logging.getLogger().getEffectiveLevel(), "json", force=True)

    s = _settings()
    raise typer.Exit(
        serve(
            ServeOptions(
                host=host or s.api_host,
                port=port or s.api_port,
                workers=workers or s.api_workers,
                log_level=log_level,
                log_format=log_format,
                access_log=access_log,
                timeout_keep_alive=timeout_keep_alive,
            )
        )
    )


@app.command()
def send(
    event: Annotated[str | None, typer.Argument(help="one JSON event")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="JSON lines file, - for stdin")
    ] = None,
    topic: Annotated[str | None, typer.Option()] = None,
    timeout: Annotated[float, typer.Option(help="seconds Kafka has to confirm delivery")] = 10.0,
) -> None:
    """Send one event or a JSON-lines file to the raw topic (bytes are sent as given).

    Every event is first checked as the normalize worker will check it; events it would
    dead-letter are still sent (so the DLQ records them with their reason), and the command
    says how many and why, with exit code 6.
    """
    import orjson

    from cli.tally import by_reason, check_locally
    from pipeline import kafka as kq

    s = _settings()
    if (event is None) == (file is None):
        raise BadArgument("give either one EVENT argument or --file FILE (- for stdin)")
    if event is not None:
        numbered = [(1, os.fsencode(event))]
    elif str(file) == "-":
        numbered = [
            (i, ln.rstrip(b"\r\n")) for i, ln in enumerate(sys.stdin.buffer, 1) if ln.strip()
        ]
    else:
        numbered = [(i, ln) for i, ln in enumerate(file.read_bytes().splitlines(), 1) if ln.strip()]
    lines = [ln for _, ln in numbered]
    topic = topic or s.topic_raw
    check_kafka(s, [topic])
    verdict = check_locally(s, lines, _known_tenants(s), topic)
    keys = []
    for ln in lines:
        try:
            d = orjson.loads(ln)
            keys.append(f"{d.get('tenant_id')}|{d.get('host')}")
        except (orjson.JSONDecodeError, AttributeError):
            keys.append(None)
    deliveries = _Deliveries()
    p = kq.producer(
        s,
        on_delivery=deliveries,
        **kafka_quiet(),
        **{"message.timeout.ms": max(1000, int(timeout * 1000))},
    )
    kq.produce_all(p, topic, lines, keys)
    deliveries.check(p, topic, len(lines), timeout + 5, s)
    n = len(lines)
    line = f"sent {n} event{'' if n == 1 else 's'} to {topic}"
    unchecked = (
        "" if verdict.tenants_checked else " (tenants not checked: PostgreSQL not reachable)"
    )
    if verdict.first is None:
        typer.echo(line + unchecked)
        return
    i, reason, detail = verdict.first
    typer.echo(
        f"{line}; {verdict.n_rejected} will be dead-lettered: {by_reason(verdict.rejected)} "
        f"(first: line {numbered[i][0]}, {reason}: {one_line(detail, 120)}){unchecked}",
        err=True,
    )
    raise typer.Exit(EXIT_REJECTED)


def _known_tenants(s: Settings) -> frozenset[str] | None:
    """Registered tenants (+ the allowlist) for the local check; ``None`` when PostgreSQL cannot
    be asked in time (the check then accepts any tenant and says so)."""
    import psycopg

    from storage.tenants import load_tenants

    try:
        with psycopg.connect(
            s.pg_dsn(), autocommit=True, connect_timeout=max(1, round(s.connect_timeout_s))
        ) as conn:
            return load_tenants(conn) | s.tenant_allowlist()
    except psycopg.Error:
        return None


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(help="events per second")] = 100.0,
    hosts: Annotated[int, typer.Option()] = 10,
    tenant: Annotated[str, typer.Option()] = "demo",
    seed: Annotated[int, typer.Option()] = 42,
    duration: Annotated[
        float | None, typer.Option(help="seconds to run (default: forever)")
    ] = None,
    backfill: Annotated[
        float, typer.Option(help="first send N seconds of history at full speed")
    ] = 0.0,
    interval: Annotated[float, typer.Option(help="event-time seconds between samples")] = 10.0,
    anomaly_rate: Annotated[float, typer.Option()] = 0.002,
    settle: Annotated[
        float,
        typer.Option(
            help="then follow the events until each is stored or dead-lettered, "
            "giving up after N s without progress; 0 = do not follow"
        ),
    ] = 15.0,
) -> None:
    """Produce realistic seasonal host metrics with injected anomalies to the raw topic.

    The history of ``--backfill`` starts after the newest stored event of the tenant's simulated
    hosts: older events would fall behind windows the detect stage already closed and be
    dead-lettered as ``ts_too_old``. At the end the command counts what was stored and what was
    dead-lettered, by reason (exit 6 when anything was).
    """
    from cli.tally import Outcome, by_reason
    from pipeline import kafka as kq
    from pipeline.simulate import Simulator
    from storage.connect import connect
    from storage.series import latest_event_time
    from storage.tenants import load_tenants

    s = _settings()
    if rate <= 0 or hosts < 1 or interval <= 0 or backfill < 0:
        raise BadArgument("--rate and --interval must be > 0, --hosts >= 1, --backfill >= 0")
    if backfill > s.max_past_age_s:
        raise BadArgument(
            f"--backfill {backfill:g} is older than EVENTOPS_MAX_PAST_AGE_S="
            f"{s.max_past_age_s:g}: those events would be dead-lettered as ts_out_of_range"
        )
    check_kafka(s, [s.topic_raw, s.topic_dlq])
    now = time.time()
    sim = Simulator(
        hosts=hosts,
        tenant=tenant,
        seed=seed,
        interval=interval,
        start=now - backfill,
        anomaly_rate=anomaly_rate,
    )
    with connect(s, autocommit=True) as conn:
        if tenant not in load_tenants(conn) | s.tenant_allowlist():
            raise NotFound(
                f"tenant {tenant!r} does not exist — create it first: "
                f"eventops tenants create {tenant}"
            )
        latest = latest_event_time(conn, tenant, sim.names)
    if latest is not None and latest >= sim.start:
        # one interval after the newest stored event, or now if that is in the future (ids stay
        # unique: they carry the event time)
        sim.start = latest + interval if latest + interval <= now else max(now, latest + 0.001)
        kept = max(0.0, now - sim.start)
        upto = iso_z(latest, "seconds")
        typer.echo(
            f"note: {tenant}'s simulated hosts already have events up to {upto}; "
            f"history starts after them ({kept:.0f} s instead of {backfill:.0f} s), since "
            "older events would be dead-lettered as ts_too_old",
            err=True,
        )
        backfill = kept
    outcome = (
        Outcome(
            s,
            f'"event_id":"sim-{seed}-{tenant}-'.encode(),
            tenant,
            sim.names,
            f"sim-{seed}-{tenant}-",
            sim.start - 1,
        )
        if settle > 0
        else None
    )
    deliveries = _Deliveries()
    p = kq.producer(s, on_delivery=deliveries, **kafka_quiet())
    per_tick = hosts * 4
    backfill_ticks = int(backfill / interval)
    sent = 0
    t0 = time.monotonic()
    try:
        for evs in sim.events():
            keys = [f"{tenant}|{sim.names[i // 4]}" for i in range(len(evs))]
            kq.produce_all(p, s.topic_raw, evs, keys)
            sent += len(evs)
            if sim.tick > backfill_ticks:
                # live: pace by rate, event time follows the wall clock
                sim.interval = max(per_tick / rate, 1e-3)
                sim.start = time.time() - sim.tick * sim.interval
                time.sleep(per_tick / rate)
            if duration is not None and time.monotonic() - t0 >= duration:
                break
    except KeyboardInterrupt:  # the usual end of a run without --duration: report it
        pass
    try:
        deliveries.check(p, s.topic_raw, sent, 60.0, s)
        line = f"sent {sent} events, {len(sim.anomalies)} anomalies injected"
        if outcome is None:
            typer.echo(line)
            return
        pending = outcome.settle(sent, settle)
    finally:
        if outcome is not None:
            outcome.close()
    n_dead = sum(outcome.dead.values())
    line += f": {outcome.stored} stored, {n_dead} dead-lettered"
    if n_dead:
        line += f" ({by_reason(outcome.dead)})"
    if pending:
        line += (
            f", {pending} not processed after {settle:g} s without progress (is a worker "
            "running? eventops worker normalize,enrich,detect,sink)"
        )
    typer.echo(line, err=bool(n_dead))
    if n_dead:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def demo(
    hosts: Annotated[int, typer.Option()] = 12,
    backfill_hours: Annotated[float, typer.Option()] = 6.0,
    port: Annotated[
        int | None,
        typer.Option(help="port of the dashboard and API (default EVENTOPS_DEMO_PORT, 8080)"),
    ] = None,
) -> None:
    """Embedded pipeline + simulator with anomalies + API on one process (no Kafka needed)."""
    from serving.demo import run_demo

    s = _settings()
    if port is not None:
        s = s.model_copy(update={"demo_port": port})
    run_demo(s, hosts=hosts, backfill_s=backfill_hours * 3600)


def _register_plugins() -> None:
    """Commands that live beside their packages (each module's ``register(app)``).

    Those modules import heavy libraries (MLflow, uvicorn) inside their commands only.
    """
    import importlib

    for name in ("cli.keys", "cli.models", "cli.notify"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(app)


_register_plugins()


@app.command(
    "backtest",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
def backtest(ctx: typer.Context) -> None:
    """Replay CSV series through the detectors; score them when --windows labels are given."""
    # training.backtest imports pandas and the detectors (seconds on a busy machine): only the
    # command that needs it pays, so every other command reaches its first check sooner
    from training.backtest import backtest_command

    one = typer.Typer(add_completion=False)
    one.command()(backtest_command)
    typer.main.get_command(one)(ctx.args, prog_name="eventops backtest")


@app.command(
    "eval",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
def eval_(ctx: typer.Context) -> None:
    """Leave-one-kind-out on nab-dev (--data), the synthetic corpus and the simulator, NAB-style."""
    from training.evalsuite import eval_command  # pandas and the detectors: only this command

    one = typer.Typer(add_completion=False)
    one.command()(eval_command)
    typer.main.get_command(one)(ctx.args, prog_name="eventops eval")


def main() -> None:
    """Run the CLI; an error ends it with one line on stderr and its exit code
    (:mod:`cli.errors`), the traceback only at DEBUG level."""
    try:
        app()  # click prints its own usage errors (exit 2) and turns typer.Exit into SystemExit
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the one place errors become a line + exit code
        msg, code = describe(e)
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            log.error("%s: %s", type(e).__name__, e, exc_info=e)
        typer.echo(f"eventops: {msg}", err=True)
        _exit(code)


def _exit(code: int) -> None:
    """Exit now, even if a library left a non-daemon thread running (it would hold the exit)."""
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
