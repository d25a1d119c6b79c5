"""`genforge keys`: create, list and revoke the API keys of `genforge serve` (see genforge/serve/keys.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from genforge.errors import GenforgeError
from genforge.serve.keys import Key, KeyStore

keys_app = typer.Typer(help="API keys for `genforge serve`: create, list, revoke.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """One red line and exit 1 for a user error, as `genforge` does at its root: here too, because this app also
    runs on its own (tests, embedding) where the root's handler is not around it."""
    try:
        yield
    except GenforgeError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


@keys_app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="a label for the key, e.g. marketing-team"),
    models: str = typer.Option(None, "--models", help="comma-separated served model names it may use (default: all)"),
    rpm: int = typer.Option(None, "--rpm", help="requests per minute (default: unlimited)"),
    upm: int = typer.Option(None, "--upm", help="units per minute: tokens, images or rows (default: unlimited)"),
    json_: bool = typer.Option(False, "--json", help="print one JSON object: the secret and the record"),
) -> None:
    """Create a key and print its secret, once: only its hash is kept."""
    with _user_errors():
        secret, key = KeyStore().create(name, None if models is None else [m.strip() for m in models.split(",")],
                                        rpm, upm)
    if json_:
        print(json.dumps({"secret": secret, "key": asdict(key)}, indent=1))
        return
    out.print(f"created {key.id} ({key.name}): models {', '.join(key.models or ['all'])}, "
              f"rpm {_limit(key.requests_per_minute)}, upm {_limit(key.units_per_minute)}",
              markup=False, highlight=False)
    print(secret)
    out.print("[bold]store this secret now: it cannot be shown again[/] (send it as `Authorization: Bearer <secret>`)")


@keys_app.command("list")
def list_cmd(json_: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """Every key, revoked ones too, oldest first (never the secrets)."""
    with _user_errors():
        keys: list[Key] = KeyStore().list()
    if json_:
        print(json.dumps([asdict(k) for k in keys], indent=1))
        return
    if not keys:
        out.print("no API keys; create one with `genforge keys create NAME`")
        return
    t = Table(title="API keys")
    for col in ("id", "name", "prefix", "models", "rpm", "upm", "created", "revoked"):
        t.add_column(col)
    for k in keys:
        t.add_row(k.id, escape(k.name), k.prefix + "...", escape(", ".join(k.models or ["all"])),
                  _limit(k.requests_per_minute), _limit(k.units_per_minute), k.created_at, k.revoked_at or "-")
    out.print(t)


@keys_app.command("revoke")
def revoke_cmd(key_id: str = typer.Argument(..., help="the key's id, as `genforge keys list` shows it")) -> None:
    """Revoke a key: its secret stops working at once, in every worker of a running service."""
    with _user_errors():
        key = KeyStore().revoke(key_id)
    out.print(f"revoked {key.id} ({key.name}) at {key.revoked_at}", markup=False, highlight=False)
