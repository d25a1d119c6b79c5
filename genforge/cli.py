"""The `genforge` command: parses, validates, delegates. No logic of its own lives here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from genforge.errors import GenforgeError

SetOpt = typer.Option(None, "--set", help="override a config field: a.b=value (repeatable)")

console = Console(stderr=True)

_app = typer.Typer(help="genforge: from raw business data to a served generator.", no_args_is_help=True,
                   pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Ingest, clean, split and gate datasets.", no_args_is_help=True)
_app.add_typer(data_app, name="data")


# ---- data -------------------------------------------------------------------------------


@data_app.command("ingest")
def data_ingest(
    source: str = typer.Argument(..., help="image folder, .txt/.jsonl/.csv/.parquet file, or builtin:digits|reviews|penguins"),
    name: str = typer.Option(..., "--name", help="dataset name"),
    config: str = typer.Option(None, "--config", help="ingest config YAML (see genforge/data/options.py)"),
    kind: str = typer.Option(None, "--kind", help="image | text | table (default: from the source)"),
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="publish even if the quality gate fails (recorded)"),
) -> None:
    """Validate, clean, de-duplicate, split and gate SOURCE into a versioned dataset."""
    from genforge.config import load_config
    from genforge.data.ingest import ingest
    from genforge.data.options import IngestConfig
    from genforge.data.report import print_ingest

    cfg = load_config(IngestConfig, config, (set_ or []) + ([f"kind={kind}"] if kind else []))
    print_ingest(ingest(source, name, cfg, force=force))


@data_app.command("list")
def data_list() -> None:
    """List every dataset version in the workspace."""
    from genforge.data.report import print_list
    from genforge.data.store import list_datasets

    print_list(list_datasets())


@data_app.command("show")
def data_show(ref: str = typer.Argument(..., help="NAME or NAME@VERSION"),
              json_: bool = typer.Option(False, "--json", help="print the whole manifest as JSON")) -> None:
    """Show a dataset version: source, counts, split, cleaning and gate report."""
    from genforge.data.report import print_manifest
    from genforge.data.store import open_dataset

    print_manifest(open_dataset(ref).manifest, as_json=json_)


def app() -> None:
    """Entry point: user errors print one clear message (no traceback) and exit 1."""
    try:
        _app()
    except GenforgeError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(1)
