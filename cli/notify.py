"""``eventops channels|silences|notify …``: where alerts go, what is muted, and deliveries.

Registered by ``cli.main`` (``register(app)``). The delivery worker itself is
``eventops worker notify``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from cli.errors import BadArgument
from cli.keys import connect_db

channels_app = typer.Typer(
    help="Notification channels (Alertmanager, webhooks) per tenant.", no_args_is_help=True
)
silences_app = typer.Typer(
    help="Silences and maintenance windows per tenant.", no_args_is_help=True
)
notify_app = typer.Typer(
    help="Deliveries of alerts to channels: the log, replays.", no_args_is_help=True
)

TenantOpt = Annotated[str, typer.Option("--tenant", envvar="EVENTOPS_TENANT", help="tenant id")]


def _known(conn, tenant: str) -> None:
    from storage.tenants import load_tenants

    if tenant not in load_tenants(conn):
        raise BadArgument(
            f"no tenant {tenant!r} (`eventops tenants list`; create it with"
            " `eventops tenants create`)"
        )


def parse_time(text: str | None) -> float | None:
    """ISO 8601 (``2026-12-01T02:00:00Z``) or ``now`` as epoch seconds.

    >>> parse_time("1970-01-01T00:01:00Z"), parse_time(None)
    (60.0, None)
    """
    if text is None:
        return None
    if text == "now":
        return time.time()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadArgument(f"time {text!r} is not ISO 8601, e.g. 2026-12-01T02:00:00Z") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    from cli.models import parse_every

    try:
        return parse_every(text)
    except ValueError as e:
        raise BadArgument(str(e).replace("interval", "duration")) from None


# --- channels -------------------------------------------------------------------------------


@channels_app.command("add")
def channels_add(
    tenant: TenantOpt,
    name: Annotated[str, typer.Argument(help="a name for the channel, unique per tenant")],
    kind: Annotated[str, typer.Option(help="alertmanager | webhook")] = "webhook",
    url: Annotated[str, typer.Option(help="Alertmanager's base URL, or the webhook's URL")] = "",
    min_severity: Annotated[str, typer.Option(help="warning | critical")] = "warning",
    match: Annotated[
        list[str] | None,
        typer.Option("--match", help="label matcher, e.g. host=~web-.* or env=prod (repeat)"),
    ] = None,
) -> None:
    """Add a channel; a webhook's signing secret is printed once."""
    from notify.channels import ChannelSpec
    from storage.notify import add_channel

    try:
        spec = ChannelSpec.check(
            name, kind, url, {"min_severity": min_severity, "matchers": match or []}
        )
    except ValueError as e:
        raise BadArgument(str(e)) from None
    with connect_db() as conn:
        _known(conn, tenant)
        row = add_channel(conn, tenant, spec.name, spec.kind, spec.url, spec.secret, spec.filter)
    if row is None:
        raise BadArgument(
            f"tenant {tenant!r} already has a channel {name!r}; pick another name"
            " or `eventops channels delete` it first"
        )
    typer.echo(f"channel {name} ({kind} {url}) added for tenant {tenant}")
    if spec.secret:
        typer.echo(spec.secret)
        typer.echo(
            "signing secret above (Standard Webhooks) — store it now, it is not shown again",
            err=True,
        )


@channels_app.command("list")
def channels_list(tenant: TenantOpt) -> None:
    """The tenant's channels (never their secrets)."""
    from storage.notify import list_channels

    with connect_db() as conn:
        for cid, _t, name, kind, url, filt, enabled, _c in list_channels(conn, tenant):
            typer.echo(
                f"{cid}\t{name}\t{kind}\t{url}\t{json.dumps(filt)}\t"
                f"{'enabled' if enabled else 'disabled'}"
            )


@channels_app.command("delete")
def channels_delete(tenant: TenantOpt, name: str) -> None:
    """Delete a channel (and its delivery log)."""
    from storage.notify import delete_channel

    with connect_db() as conn:
        if not delete_channel(conn, tenant, name):
            raise BadArgument(
                f"tenant {tenant!r} has no channel {name!r} (`eventops channels list --tenant …`)"
            )
    typer.echo(f"channel {name} deleted")


# --- silences -------------------------------------------------------------------------------


@silences_app.command("add")
def silences_add(
    tenant: TenantOpt,
    match: Annotated[
        list[str] | None,
        typer.Option(
            "--match",
            help="label matcher, e.g. host=web-1, metric=~disk_.* (repeat;"
            " none: every alert of the tenant)",
        ),
    ] = None,
    duration: Annotated[str | None, typer.Option(help="e.g. 2h (or give --end)")] = None,
    start: Annotated[str | None, typer.Option(help="ISO 8601 (default now)")] = None,
    end: Annotated[str | None, typer.Option(help="ISO 8601")] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="cron, UTC: a recurring maintenance window of --duration each time,"
            " e.g. '0 2 * * 6'"
        ),
    ] = None,
    author: Annotated[str, typer.Option()] = "",
    comment: Annotated[str, typer.Option()] = "",
) -> None:
    """Mute matching alerts for a while, or every time a schedule fires (maintenance window)."""
    from core.silences import new_silence
    from storage.notify import add_silence

    try:
        s = new_silence(
            tenant,
            match or [],
            now=time.time(),
            starts_at=parse_time(start),
            ends_at=parse_time(end),
            duration_s=_duration(duration),
            schedule=schedule,
            author=author,
            comment=comment,
        )
    except ValueError as e:
        raise BadArgument(str(e)) from None
    with connect_db() as conn:
        _known(conn, tenant)
        s = add_silence(conn, s)
    d = s.to_dict(time.time())
    typer.echo(f"{s.id}\t{s.kind}\t{d['state']}\t{d['starts_at']} → {d['ends_at'] or 'no end'}")


@silences_app.command("list")
def silences_list(
    tenant: TenantOpt,
    expired: Annotated[bool, typer.Option(help="include expired ones")] = False,
) -> None:
    """The tenant's silences and maintenance windows."""
    from storage.notify import list_silences

    now = time.time()
    with connect_db() as conn:
        for s in list_silences(conn, tenant, expired):
            d = s.to_dict(now)
            what = " ".join(str(m) for m in s.matchers) or "(every alert)"
            when = f"{d['schedule']} for {s.duration_s:g}s" if s.schedule else ""
            typer.echo(
                f"{s.id}\t{s.kind}\t{d['state']}\t{what}\t{d['starts_at']} → "
                f"{d['ends_at'] or 'no end'}\t{when}\t{s.author}\t{s.comment}"
            )


@silences_app.command("expire")
def silences_expire(tenant: TenantOpt, silence_id: str) -> None:
    """End a silence now (it is kept, expired); alerts it muted that still fire are sent."""
    from storage.notify import expire_silence

    with connect_db() as conn:
        if expire_silence(conn, tenant, silence_id) is None:
            raise BadArgument(f"tenant {tenant!r} has no active silence {silence_id!r}")
    typer.echo(f"silence {silence_id} expired")


# --- deliveries -----------------------------------------------------------------------------


@notify_app.command("log")
def notify_log(
    tenant: TenantOpt,
    alert: Annotated[str | None, typer.Option(help="one alert's deliveries")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """Deliveries, newest first: channel, transition, state, attempts, last status."""
    from storage.notify import deliveries

    with connect_db() as conn:
        for r in deliveries(conn, tenant, alert, limit):
            (
                _id,
                _cid,
                ch,
                _k,
                seq,
                aid,
                kind,
                state,
                silenced,
                attempts,
                _n,
                status,
                err,
                _c,
                _d,
            ) = r
            extra = f"silenced by {','.join(silenced)}" if silenced else (err or "")
            typer.echo(f"{seq}\t{aid}\t{kind}\t{ch}\t{state}\t{attempts}\t{status or '-'}\t{extra}")


@notify_app.command("replay")
def notify_replay(
    tenant: TenantOpt,
    alert: Annotated[str | None, typer.Option(help="only this alert")] = None,
    channel: Annotated[str | None, typer.Option(help="only this channel")] = None,
    since: Annotated[str | None, typer.Option(help="deliveries created since (ISO 8601)")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="delivered ones too, not only failed")
    ] = False,
) -> None:
    """Send deliveries again (the failed ones, or with --all every one): same webhook-id."""
    from storage.notify import replay

    t = parse_time(since)
    states = ("failed", "delivered") if all_ else ("failed",)
    with connect_db() as conn:
        n = replay(
            conn,
            tenant,
            states=states,
            alert_id=alert,
            channel=channel,
            since=datetime.fromtimestamp(t, UTC) if t is not None else None,
        )
    typer.echo(
        f"{n} deliver{'y' if n == 1 else 'ies'} queued again (sent by `eventops worker notify`)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(channels_app, name="channels")
    app.add_typer(silences_app, name="silences")
    app.add_typer(notify_app, name="notify")
