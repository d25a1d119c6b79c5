"""`genforge feedback`: the service's rated generations, back into training data (genforge/serve/feedback_export.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from genforge.errors import GenforgeError

feedback_app = typer.Typer(help="Ratings of `genforge serve`'s generations, back into training data.",
                           no_args_is_help=True)
out = Console()


def _fail(e: GenforgeError) -> typer.Exit:
    """One red line and exit 1, also where this app runs without the root's handler (tests, embedding)."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@feedback_app.command("export")
def export_cmd(
    name: str = typer.Option(..., "--name", help="the dataset to write a version of"),
    min_rating: int = typer.Option(4, "--min-rating", help="the lowest rating (1-5) exported"),
    model: str = typer.Option(None, "--model", help="only generations of this served model name (default: all)"),
    db: Path = typer.Option(None, "--db", help="the feedback database (default: WORKSPACE/serve/feedback.db)"),
    set_: list[str] = typer.Option(None, "--set", help="an ingest option: a.b=value (e.g. gate.min_examples=20)"),
    force: bool = typer.Option(False, "--force", help="publish even if the quality gate fails (recorded)"),
) -> None:
    """Rated text generations as prompt/completion pairs (the corrected output where given), ingested as a dataset
    version with lineage back to the model versions and generation ids. Images and tables: not exported."""
    from genforge.data.report import print_ingest
    from genforge.serve.feedback_export import export_feedback

    try:
        result = export_feedback(name, min_rating, model, db, set_ or [], force)
    except GenforgeError as e:
        raise _fail(e) from None
    print_ingest(result)
    models = (result.manifest.model_extra or {}).get("lineage", {}).get("models", [])
    out.print(f"{sum(m['examples'] for m in models)} rated generations of "
              + ", ".join(f"{m['model']} {m['version']}" for m in models)
              + f"; train on it with data.dataset: {result.manifest.ref}", markup=False, highlight=False)
