"""The `genforge` command: parses, validates, delegates. No logic of its own lives here."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from genforge.errors import GenforgeError
from genforge.labels.cli import labels_app
from genforge.review.cli import review_app
from genforge.serve.feedback_cli import feedback_app
from genforge.serve.keys_cli import keys_app

SetOpt = typer.Option(None, "--set", help="override a config field: a.b=value (repeatable)")

console = Console(stderr=True)

_app = typer.Typer(help="genforge: from raw business data to a served generator.", no_args_is_help=True,
                   pretty_exceptions_enable=False, add_completion=False)


@_app.callback()
def _root(tracking_uri: str = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                           help="MLflow tracking and registry server (default: sqlite in the workspace)")) -> None:
    """genforge: from raw business data to a served generator."""
    import os

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri


data_app = typer.Typer(help="Ingest, clean, split and gate datasets.", no_args_is_help=True)
_app.add_typer(data_app, name="data")
_app.add_typer(keys_app, name="keys")
_app.add_typer(labels_app, name="labels")
_app.add_typer(feedback_app, name="feedback")
_app.add_typer(review_app, name="review")


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
    import genforge
    from genforge.data.report import print_ingest

    print_ingest(genforge.ingest(source, name, config, overrides=(set_ or []) + ([f"kind={kind}"] if kind else []),
                                 force=force))


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
    config: Path = typer.Argument(..., help="run config YAML (see configs/)"),
    set_: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the newest run of this config from its newest good "
                                "checkpoint (train.* and sample.* may change, e.g. --set train.steps=N to extend it)"),
    resume_from: str = typer.Option(None, "--resume-from", help="continue this run (id, unique prefix or path) instead"),
) -> None:
    """Train a model on a dataset version; under torchrun, with DDP."""
    import genforge

    genforge.train(config, overrides=set_, resume=resume, run=resume_from, console=console)


@_app.command("generate")
def generate_cmd(
    run: str = typer.Argument(..., help="run id, unique prefix, 'latest', or a run directory"),
    n: int = typer.Option(64, "--n", help="how many samples (per prompt, with --prompt)"),
    label: str = typer.Option(None, "--label", help="class (name or index) for every image (default: classes in turn)"),
    prompt: list[str] = typer.Option(None, "--prompt", help="a prompt to complete (repeatable)"),
    prompts: Path = typer.Option(None, "--prompts", help="a file of prompts: one per line, or jsonl with a 'prompt' field"),
    seed: int = typer.Option(0, "--seed", help="item i of this call gets a seed made from (seed, i)"),
    out: Path = typer.Option(None, "--out", help="output folder or file (default: RUN/samples/...)"),
    set_: list[str] = typer.Option(None, "--set", help="a sampling option: sample.<field>=value (e.g. sample.steps=20)"),
    batch_size: int = typer.Option(64, "--batch-size"),
) -> None:
    """Sample from a trained run and write the samples (images: a PNG grid and one PNG each)."""
    import genforge
    from genforge.api import sample_overrides
    from genforge.data.prompts import read_prompts

    texts = list(prompt or []) + (read_prompts(prompts) if prompts else [])
    result = genforge.generate(run, n, seed=seed, labels=None if label is None else [label], prompts=texts or None,
                               options=sample_overrides(set_), out=out, batch_size=batch_size)
    console.print(f"wrote {len(result.samples)} {result.samples.kind} samples: {result.path}", highlight=False)


# ----------------------------------------------------------------------------- evaluate / compare

FidOpt = typer.Option(None, "--fid/--no-fid", help="standard Inception FID (default: when the optional `fid` extra is installed)")


def _print_evaluation(metrics: dict, title: str) -> None:
    from genforge.evaluation.report import metrics_table

    console.print(metrics_table(metrics["rows"], title=title))
    for warning in metrics.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    fid_info = metrics.get("standard_fid", {})
    if fid_info and not fid_info.get("available", True):
        console.print(fid_info["reason"], highlight=False)
    console.print("report:", highlight=False)
    print(metrics["report"])


@_app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="run id, unique prefix, 'latest', or a run directory"),
    n: int = typer.Option(None, "--n", help="samples to score (default: the held-out split's size, at most 1000 images or 200 texts)"),
    seed: int = typer.Option(0, "--seed"),
    set_: list[str] = typer.Option(None, "--set", help="a sampling option: sample.<field>=value"),
    fid: bool = FidOpt,
) -> None:
    """Score a run's samples beside real held-out data; write eval/metrics.json and eval/report.html."""
    import genforge
    from genforge.api import sample_overrides

    metrics = genforge.evaluate(run, n=n, seed=seed, options=sample_overrides(set_), fid=fid)
    _print_evaluation(metrics, f"evaluation of {metrics['run']}")


@_app.command("compare")
def compare_cmd(
    runs: list[str] = typer.Argument(..., help="two or more runs (id, unique prefix, 'latest', or a run directory)"),
    out: Path = typer.Option(None, "--out", help="output folder (default: WORKSPACE/reports/compare-<time>)"),
    n: int = typer.Option(None, "--n", help="samples per run: every run is scored at this one n"),
    seed: int = typer.Option(0, "--seed"),
    fid: bool = FidOpt,
) -> None:
    """One metric table and report across runs, all at one n (runs evaluated otherwise are evaluated again)."""
    import genforge

    _print_evaluation(genforge.compare(runs, n=n, seed=seed, fid=fid, out=out), "comparison")


# ----------------------------------------------------------------------------- export / import

@_app.command("export")
def export_cmd(
    run: str = typer.Argument(..., help="a gpt run (id, unique prefix, 'latest', or a run directory) or checkpoint folder"),
    format_: str = typer.Option("hf", "--format", help="hf: a Hugging Face GPT-2 folder (GPT2LMHeadModel, AutoTokenizer); "
                                "adapter: a LoRA run's adapter alone; merged: a LoRA run with its adapters folded in"),
    out: Path = typer.Option(..., "--out", help="the folder to write (new, or empty)"),
) -> None:
    """Export a trained model for another toolkit (EMA weights where kept)."""
    from genforge import interop
    from genforge.errors import ConfigError

    writers = {"hf": interop.export_hf, "adapter": interop.export_adapter, "merged": interop.export_merged}
    if format_ not in writers:
        raise ConfigError(f"--format must be one of {', '.join(writers)}, got {format_!r}")
    console.print(f"exported {run} to {writers[format_](run, out)}", highlight=False)


@_app.command("import")
def import_cmd(
    path: Path = typer.Argument(..., help="a local Hugging Face GPT-2 folder: config.json, model.safetensors, tokenizer.json"),
    name: str = typer.Option(..., "--name", help="model name: the folder WORKSPACE/models/NAME"),
) -> None:
    """Import a Hugging Face GPT-2 model as a checkpoint folder to sample from or fine-tune (train.init_from)."""
    import json

    from genforge.interop import import_hf

    folder = import_hf(path, name)
    model = json.loads((folder / "model.json").read_text(encoding="utf-8"))["model"]
    console.print(f"imported {path} to {folder}\nfine-tune it with train.init_from: {folder} and model: "
                  + json.dumps({k: v for k, v in model.items() if v is not None}), highlight=False)


# ----------------------------------------------------------------------------- pipeline, tracking, registry

@_app.command("run")
def run_cmd(config: Path = typer.Argument(..., help="run config YAML (see configs/)"), set_: list[str] = SetOpt) -> None:
    """Ingest, train, evaluate, register and (registry.promote) promote; run again, it goes on where it stopped."""
    from genforge.pipeline import run_pipeline
    from genforge.tracking import tracking_uri

    result = run_pipeline(config, set_, console=console, say=lambda m: console.print(f"[bold]>> {m}[/]", highlight=False))
    _print_evaluation(result.evaluation, f"evaluation of {result.run}")
    for stage, what in result.stages.items():
        console.print(f"{stage:>9}: {what}", highlight=False)
    champ = f"champion: version {result.champion}" if result.champion else "no champion yet"
    uri = tracking_uri()
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
    console.print(f"\nmodel {result.registered} version {result.version} ({champ})\n"
                  f"look at it:  {ui}   (runs, metrics, the model card)\n"
                  f"             genforge models; genforge history {result.registered}\n"
                  f"sample it:   genforge generate {result.run} --n 64", highlight=False)


@_app.command("serve")
def serve_cmd(config: Path = typer.Option(None, "--config", help="serve config YAML (default: every registered "
                                          "model's champion, on 127.0.0.1:8000)"), set_: list[str] = SetOpt) -> None:
    """The OpenAI-compatible API: /v1/completions, /v1/chat/completions, /v1/images/generations, /metrics."""
    from genforge.serve.server import passive_openmp, serve

    passive_openmp()
    serve(config, set_)


@_app.command("sync")
def sync_cmd(run: str = typer.Argument(..., help="run id, unique prefix, 'latest', or a run directory")) -> None:
    """Send a run (metrics, config, evaluation) to MLflow: after tracking was off or the server was down."""
    from genforge.runs import resolve_run
    from genforge.tracking import sync, tracking_uri

    console.print(f"synced to MLflow run {sync(resolve_run(run))} at {tracking_uri()}", highlight=False)


@_app.command("register")
def register_cmd(
    run: str = typer.Argument(..., help="an evaluated run (id, unique prefix, 'latest', or a run directory)"),
    name: str = typer.Option(None, "--name", help="registered model name (default: registry.name, else the config's name)"),
    update_policy: bool = typer.Option(False, "--update-policy", help="replace the model's promotion policy with this "
                                       "run config's (recorded in the history)"),
) -> None:
    """Register a run's evaluated checkpoint as a new model version, with its figures and model card."""
    from genforge import registry

    v = registry.register(run, name, update_policy=update_policy)
    console.print(f"registered {run} as {v.name} version {v.version}: {v.source}", highlight=False)


@_app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="registered model name"),
    version: str = typer.Argument(..., help="version number"),
    force: bool = typer.Option(False, "--force", help="promote although the policy fails (needs --reason)"),
    reason: str = typer.Option(None, "--reason", help="why: recorded in the history"),
) -> None:
    """Make VERSION the champion if it passes the model's promotion policy."""
    from genforge import registry

    e = registry.promote(name, version, force=force, reason=reason)
    how = "forced past: " + "; ".join(e["failed"]) if e["failed"] else "every rule passed"
    console.print(f"{name}: champion is version {e['to']} (was {e['from'] or 'none'}); {how}", highlight=False)


@_app.command("rollback")
def rollback_cmd(name: str = typer.Argument(..., help="registered model name"),
                 reason: str = typer.Option(None, "--reason", help="why: recorded in the history")) -> None:
    """Make the previous champion the champion again (recorded in the history)."""
    from genforge import registry

    e = registry.rollback(name, reason=reason)
    console.print(f"{name}: champion is version {e['to']} again (was {e['from']})", highlight=False)


@_app.command("history")
def history_cmd(name: str = typer.Argument(..., help="registered model name"),
                json_: bool = typer.Option(False, "--json", help="print the entries as JSON")) -> None:
    """Every promotion, forced promotion, rollback and policy change of a model, oldest first."""
    from genforge import registry
    from genforge.registry_view import print_history

    print_history(registry.history(name), name, console, as_json=json_)


@_app.command("models")
def models_cmd(json_: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """Registered models: versions, aliases and each version's headline figures."""
    from genforge import registry
    from genforge.registry_view import print_models

    print_models(registry.models(), console, as_json=json_)


@_app.command("record")
def record_cmd(name: str = typer.Argument(..., help="registered model name"),
               version: str = typer.Argument(..., help="version number"),
               metric: list[str] = typer.Option(..., "--metric", help="KEY=VALUE, a figure measured after registration "
                                                "(e.g. human_review=4.2); promotion rules may name it")) -> None:
    """Record figures for a model version after registration."""
    from genforge import registry
    from genforge.errors import ConfigError

    figures = {}
    for item in metric:
        key, _, value = item.partition("=")
        try:
            figures[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--metric takes KEY=NUMBER, got {item!r}") from None
    v = registry.record_metrics(name, version, figures)
    console.print(f"{name} version {v.version}: " + ", ".join(f"{k} = {v.metrics[k]:g}" for k in figures), highlight=False)


# ----------------------------------------------------------------------------- AI-content labels

@_app.command("verify")
def verify_cmd(file: Path = typer.Argument(..., help="an image genforge made (PNG; a JPEG copy keeps the watermark), "
                                           "or with --text a text file / samples.jsonl"),
               trust_anchors: Path = typer.Option(None, "--trust-anchors", help="PEM roots to trust for C2PA "
                                                  "(default: the workspace's dev CA, if it signs)"),
               text: bool = typer.Option(False, "--text", help="FILE is text: test it for the text watermark"),
               run: str = typer.Option(None, "--run", help="with --text: the run whose tokenizer made the text"),
               json_: bool = typer.Option(False, "--json", help="print the whole result as JSON")) -> None:
    """Which AI-content labels an image carries (the watermark, read with this workspace's key; metadata;
    C2PA), or with --text whether a text carries the text watermark (a p-value and the tokens it rests on)."""
    if text:
        from genforge.textmark import verify_text_file

        if run is None:
            from genforge.errors import ConfigError
            raise ConfigError("--text needs --run RUN: the run whose tokenizer generated the text")
        results = verify_text_file(file, run)
        if json_:
            console.print_json(data=results)
        for r in results:
            console.print(f"{r['label']}: z {r['z']:.2f}, p-value {r['p_value']:.3g} over {r['scored']} token pairs "
                          f"({r['green']} green): {'watermarked' if r['p_value'] < 1e-3 else 'no watermark found'}",
                          highlight=False)
        return
    from genforge.labels import verify
    from genforge.labels.cli import print_verification

    print_verification(verify(file, trust_anchors), as_json=json_)
