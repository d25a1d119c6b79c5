"""The `genforge` command: parses, validates, delegates. No logic of its own lives here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from genforge.errors import GenforgeError

console = Console(stderr=True)

_app = typer.Typer(help="genforge: from raw business data to a served generator.", no_args_is_help=True,
                   pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Ingest, clean, split and gate datasets.", no_args_is_help=True)
_app.add_typer(data_app, name="data")


def app() -> None:
    """Entry point: user errors print one clear message (no traceback) and exit 1."""
    try:
        _app()
    except GenforgeError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(1)
