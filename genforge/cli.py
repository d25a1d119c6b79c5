"""The `genforge` command: parses, validates, delegates. No logic of its own lives here."""

from __future__ import annotations

import sys
from pathlib import Path

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


# ----------------------------------------------------------------------------- train / generate

@_app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="run config YAML (see configs/quickstart.yaml)"),
    set_: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the newest run of this config from its newest good checkpoint"),
    resume_from: str = typer.Option(None, "--resume-from", help="continue this run (id, unique prefix or path) instead"),
) -> None:
    """Train a model on a dataset version; under torchrun, with DDP."""
    from genforge.runs import load_run_config
    from genforge.trainer import train

    train(load_run_config(config, set_), resume=resume or bool(resume_from), run=resume_from, console=console)


@_app.command("generate")
def generate_cmd(
    run: str = typer.Argument(..., help="run id, unique prefix, 'latest', or a run directory"),
    n: int = typer.Option(64, "--n", help="how many images"),
    label: int = typer.Option(None, "--label", help="class index for every image (default: classes in turn)"),
    steps: int = typer.Option(None, "--steps", help="sampling steps (default: the run's sample.steps)"),
    guidance: float = typer.Option(None, "--guidance", help="classifier-free guidance scale (1 = none, 0 = unconditional)"),
    sampler: str = typer.Option(None, "--sampler", help="ddim or ddpm"),
    eta: float = typer.Option(None, "--eta", help="DDIM noise, 0 (deterministic) to 1"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", help="output folder (default: RUN/samples/...)"),
    batch_size: int = typer.Option(64, "--batch-size"),
) -> None:
    """Sample images from a trained run: a PNG grid plus one PNG per image."""
    from genforge.runs import generate

    grid = generate(run, n, labels=None if label is None else [label] * n, seed=seed, steps=steps, guidance=guidance,
                    sampler=sampler, eta=eta, out=out, batch_size=batch_size)
    console.print(f"wrote {n} images to {grid.parent}\ngrid: {grid}", highlight=False)


# ----------------------------------------------------------------------------- evaluate / compare

FidOpt = typer.Option(None, "--fid/--no-fid", help="standard Inception FID (default: when the optional `fid` extra is installed)")


@_app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="run id, unique prefix, 'latest', or a run directory"),
    n: int = typer.Option(None, "--n", help="samples to score (default: the held-out split's size, at most 1000)"),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(None, "--steps", help="sampling steps (default: the run's sample.steps)"),
    guidance: float = typer.Option(None, "--guidance", help="classifier-free guidance scale"),
    sampler: str = typer.Option(None, "--sampler", help="ddim or ddpm"),
    fid: bool = FidOpt,
) -> None:
    """Score a run's samples beside real held-out images; write eval/metrics.json and eval/report.html."""
    import json

    from genforge.evaluation.pipeline import EvalOptions, evaluate_run
    from genforge.evaluation.report import metrics_table

    report = evaluate_run(run, EvalOptions(n=n, seed=seed, steps=steps, guidance=guidance, sampler=sampler, fid=fid))
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    console.print(metrics_table(metrics["rows"], title=f"evaluation of {metrics['run']}"))
    if not metrics["standard_fid"]["available"]:
        console.print(metrics["standard_fid"]["reason"], highlight=False)
    console.print("report:", highlight=False)
    print(report)


@_app.command("compare")
def compare_cmd(
    runs: list[str] = typer.Argument(..., help="two or more runs (id, unique prefix, 'latest', or a run directory)"),
    out: Path = typer.Option(None, "--out", help="output folder (default: WORKSPACE/reports/compare-<time>)"),
    n: int = typer.Option(None, "--n", help="samples per run when a run must be evaluated first"),
    seed: int = typer.Option(0, "--seed"),
    fid: bool = FidOpt,
) -> None:
    """One metric table and report across runs (runs without a current evaluation are evaluated first)."""
    import json

    from genforge.evaluation.pipeline import EvalOptions, compare_runs
    from genforge.evaluation.report import metrics_table

    report = compare_runs(runs, EvalOptions(n=n, seed=seed, fid=fid), out=out)
    rows = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))["rows"]
    console.print(metrics_table(rows, title="comparison"))
    console.print("report:", highlight=False)
    print(report)
