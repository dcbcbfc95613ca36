"""``eventops keys …``: per-tenant API keys (registered by ``cli.main``)."""

from __future__ import annotations

from typing import Annotated

import typer

keys_app = typer.Typer(help="API keys (per tenant, scope read|ingest|admin).", no_args_is_help=True)


def connect_db():
    """A connection to the EventOps database (the table commands of the CLI)."""
    from core.settings import Settings
    from storage.connect import connect

    return connect(Settings())


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant id (see `eventops tenants create`)")],
    scope: Annotated[str, typer.Option(help="read | ingest | admin")] = "read",
    label: Annotated[str, typer.Option(help="free text, e.g. who holds the key")] = "",
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from serving import auth

    with connect_db() as conn:
        try:
            key_id, key = auth.create_key(conn, tenant, scope, label)
        except ValueError as e:  # unknown tenant, bad scope: one line, exit 2
            from cli.errors import BadArgument

            raise BadArgument(str(e)) from None
    typer.echo(key)
    typer.echo(
        f"key id {key_id}, tenant {tenant}, scope {scope} — "
        "store the key now, it is not shown again",
        err=True,
    )


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """List keys (ids, never secrets)."""
    from storage.tenants import list_keys

    with connect_db() as conn:
        for k in list_keys(conn, tenant):
            state = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
            typer.echo(f"{k['key_id']}\t{k['tenant_id']}\t{k['scope']}\t{state}\t{k['label']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id (running APIs stop accepting it within EVENTOPS_AUTH_CACHE_S)."""
    from storage.tenants import revoke_key

    with connect_db() as conn:
        ok = revoke_key(conn, key_id)
    typer.echo("revoked" if ok else "no such active key")
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
