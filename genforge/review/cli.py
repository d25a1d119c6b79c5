"""`genforge review`: prepare blind review sets, read their summaries, record them as metrics (genforge/review/)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from genforge.errors import GenforgeError

review_app = typer.Typer(help="Human review: people rate samples blind; summaries become metrics of the version.",
                         no_args_is_help=True)
out = Console()
DbOpt = typer.Option(None, "--db", help="the review database (default: WORKSPACE/reviews/reviews.db)")


def _fail(e: GenforgeError) -> typer.Exit:
    """One red line and exit 1, also where this app runs without the root's handler (tests, embedding)."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _review(review_id: str, db: Path | None):
    from genforge.errors import ConfigError
    from genforge.review.store import ReviewStore

    store = ReviewStore(db)
    review = store.get(review_id)
    if review is None:
        raise ConfigError(f"no review {review_id!r}; `genforge review list` shows them")
    return store, review


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


@review_app.command("create")
def create_cmd(
    runs: list[str] = typer.Argument(..., help="one run, or two to set side by side (id, unique prefix, 'latest', "
                                               "or a run directory)"),
    n: int = typer.Option(50, "--n", help="items to rate"),
    mode: str = typer.Option(None, "--mode", help="rubric (one run: a score 1-5 per sample, the default) or pairs "
                                                  "(two runs; or one run against real held-out examples)"),
    seed: int = typer.Option(0, "--seed", help="seeds the samples, the items' order and the sides"),
    name: str = typer.Option(None, "--name", help="what reviewers see it as (default: its sources)"),
    db: Path = DbOpt,
) -> None:
    """Prepare a blind review set; reviewers open it on the page of `genforge serve`."""
    from genforge.errors import ConfigError
    from genforge.review.build import create_review
    from genforge.review.store import ReviewStore

    try:
        if mode not in (None, "rubric", "pairs"):
            raise ConfigError(f"--mode is rubric or pairs, got {mode!r}")
        review = create_review(runs, n, mode, seed, name, ReviewStore(db))
    except GenforgeError as e:
        raise _fail(e) from None
    _say(f"created review {review.id}: {review.items} {review.kind} items, {review.mode}, "
         f"{' vs '.join(s.label for s in review.sources)}")
    _say(f"reviewers open it on the page of `genforge serve` (http://HOST:PORT/, with their API key), or through the "
         f"API: GET /v1/reviews/{review.id}; then `genforge review show {review.id}` and "
         f"`genforge review record {review.id}`")


@review_app.command("list")
def list_cmd(db: Path = DbOpt) -> None:
    """Every review set: its items and ratings so far."""
    from genforge.review.store import ReviewStore

    store = ReviewStore(db)
    table = Table(title="reviews")
    table.add_column("id", no_wrap=True)
    for column in ("name", "mode", "kind", "items", "ratings", "created"):
        table.add_column(column)
    for r in store.list():
        table.add_row(r.id, r.name, r.mode, r.kind, str(r.items), str(len(store.ratings(r.id))), r.created_at)
    out.print(table)


@review_app.command("show")
def show_cmd(review_id: str = typer.Argument(..., help="the review's id"),
             json_: bool = typer.Option(False, "--json", help="print the summary as JSON"), db: Path = DbOpt) -> None:
    """A review's summary: ratings, and each figure with its 95% confidence interval."""
    from genforge.review.summary import summarise

    try:
        summary = summarise(*_review(review_id, db))
    except GenforgeError as e:
        raise _fail(e) from None
    if json_:
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        return
    _say(f"{summary['id']} {summary['name']} ({summary['mode']}, {summary['kind']}): {summary['ratings']} ratings "
         f"by {summary['reviewers']} reviewers, {summary['items_rated']} of {summary['items']} items rated")
    for line in _summary_lines(summary):
        _say("  " + line)
    _say(summary["intervals"])


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _summary_lines(summary: dict) -> list[str]:
    """A summary's figures in words: one line per source."""
    if summary["mode"] == "rubric":
        histogram = " ".join(f"{s}:{c}" for s, c in summary["histogram"].items())
        return [f"{summary['source']}: score {_figure(summary['score'])} (95% CI {_figure(summary['low'])}–"
                f"{_figure(summary['high'])}); ratings per score {histogram}"]
    return [f"{s['source']}: preferred {_figure(s['preference'])} (95% CI {_figure(s['low'])}–{_figure(s['high'])}); "
            f"{s['wins']} wins, {s['losses']} losses, {s['ties']} ties" for s in summary["sources"]]


@review_app.command("record")
def record_cmd(review_id: str = typer.Argument(..., help="the review's id"), db: Path = DbOpt) -> None:
    """Record the summary as human.* metrics of each reviewed run (its evaluation) and its registered versions."""
    from genforge.review.summary import record

    try:
        lines = record(*_review(review_id, db))
    except GenforgeError as e:
        raise _fail(e) from None
    for line in lines:
        _say(line)
