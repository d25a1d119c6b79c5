"""The Python API: `genforge.ingest`, `train`, `generate`, `evaluate`, `compare`.

The CLI calls exactly these and prints what they return, so a notebook or a pipeline gets the same
behaviour and the same values as a terminal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genforge.config import StrictModel, apply_overrides, read_yaml, validate
from genforge.errors import ConfigError, ModelError
from genforge.models import SampleRequest, Samples


def ingest(source: str, name: str, config: Any = None, *, overrides: list[str] | None = None, force: bool = False):
    """Clean, de-duplicate, split and gate `source` into a dataset version; returns the IngestResult.
    `config`: an IngestConfig, a dict, a YAML path, or None for the defaults."""
    from genforge.data.ingest import ingest as run_ingest
    from genforge.data.options import IngestConfig

    if isinstance(config, IngestConfig) and not overrides:
        cfg = config
    else:
        data = (config.model_dump() if isinstance(config, StrictModel) else read_yaml(config) if isinstance(config, (str, Path))
                else dict(config or {}))
        cfg = validate(IngestConfig, apply_overrides(data, overrides), source="ingest options")
    return run_ingest(source, name, cfg, force=force)


def train(config: Any, *, overrides: list[str] | None = None, resume: bool = False, run: str | None = None,
          console: Any = None):
    """Train a run config (a RunConfig, a dict, or a YAML path) and return the loaded `Run`."""
    from genforge.runconfig import RunConfig, load_run_config, parse_run_config
    from genforge.runs import load_run
    from genforge.trainer import train as run_training

    if isinstance(config, RunConfig):
        cfg = parse_run_config(apply_overrides(config.model_dump(mode="json"), overrides)) if overrides else config
    elif isinstance(config, dict):
        cfg = parse_run_config(apply_overrides(config, overrides))
    else:
        cfg = load_run_config(config, overrides)
    return load_run(run_training(cfg, resume=resume or bool(run), run=run, console=console))


def sample_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """`--set sample.x=value` strings -> the `sample:` fields they set (anything else is an error)."""
    data = apply_overrides({}, overrides)
    other = sorted(set(data) - {"sample"})
    if other:
        raise ConfigError(f"--set here takes sample.<field>=value (the run's sample section), got {', '.join(other)}")
    section = data.get("sample", {})
    if not isinstance(section, dict):
        raise ConfigError("--set sample=... needs a field: sample.<field>=value")
    return section


def class_indices(labels: list[str | int] | None, classes: tuple[str, ...]) -> tuple[int, ...] | None:
    """Class names or indices -> indices; an unknown class is an error listing the known ones."""
    if labels is None:
        return None
    out = []
    for y in labels:
        if str(y) in classes:
            out.append(classes.index(str(y)))
        elif isinstance(y, int) or str(y).lstrip("-").isdigit():
            out.append(int(y))
        else:
            raise ModelError(f"unknown class {y!r}; the model's classes are: {', '.join(classes) or '(none: unconditional)'}")
    return tuple(out)


@dataclass
class Generated:
    samples: Samples
    path: Path  # the file a person opens first: the grid, the jsonl, the table


def generate(run: str | Path, n: int = 64, *, seed: int = 0, labels: list[str | int] | None = None,
             prompts: list[str] | None = None, conditions: list[dict[str, Any]] | None = None,
             options: dict[str, Any] | None = None, out: Path | None = None, batch_size: int = 64) -> Generated:
    """Sample from a run's newest good checkpoint and write the samples with the writer of their kind.

    Prompts: `n` completions per prompt. Labels: one class (name or index) for all, or one per item."""
    from genforge.outputs import write_samples
    from genforge.runs import load_run

    loaded = load_run(run)
    spec = loaded.data_spec
    idx = class_indices(labels, spec.classes)
    if idx is not None and len(idx) == 1:
        idx = idx * n
    if prompts is not None:
        prompts = tuple(p for p in prompts for _ in range(n))
    request = SampleRequest.make(len(prompts) if prompts is not None else n, seed, labels=idx, prompts=prompts,
                                 conditions=None if conditions is None else tuple(conditions), options=dict(options or {}))
    samples = loaded.sample(request, batch_size)
    if samples.kind == "text":  # texts reach people like the service's answers: moderated the same way
        from genforge.moderation import Moderator, moderate_samples  # here: images and tables never load its lists

        samples = moderate_samples(Moderator(), samples)
    if out is None:
        tag = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", f"{k}{v}")[:40] for k, v in sorted((options or {}).items()))
        label_tag = f"-label{idx[0]}" if idx and len(set(idx)) == 1 else ""
        out = loaded.path / "samples" / f"n{request.n}-seed{seed}{label_tag}{'-' + tag if tag else ''}"
    meta = {"ai_generated": True, "generator": "genforge", "run": loaded.id, "checkpoint": loaded.checkpoint().path.name,
            "seed": seed, "options": options or {}}  # provenance beside every output: each text record, samples.json
    if samples.kind == "table":  # where a table's label goes: sidecar, columns or both (sample.provenance)
        meta["provenance"] = loaded.model().options(options or {}).provenance
    return Generated(samples, write_samples(samples, Path(out), meta))


def evaluate(run: str | Path, *, n: int | None = None, seed: int = 0, options: dict[str, Any] | None = None,
             fid: bool | None = None) -> dict[str, Any]:
    """Score a run's samples beside real held-out data; returns metrics.json's content (with `report`: its path)."""
    from genforge.evaluation.pipeline import EvalOptions, evaluate_run

    report = evaluate_run(str(run), EvalOptions(n=n, seed=seed, sample=dict(options or {}), fid=fid))
    return {**json.loads((report.parent / "metrics.json").read_text(encoding="utf-8")), "report": str(report)}


def compare(runs: list[str], *, n: int | None = None, seed: int = 0, fid: bool | None = None,
            out: Path | None = None) -> dict[str, Any]:
    """One table and report across runs, all at one n; returns the comparison (with `report`: its path)."""
    from genforge.evaluation.pipeline import EvalOptions, compare_runs

    report = compare_runs(runs, EvalOptions(n=n, seed=seed, fid=fid), out=out)
    return {**json.loads((report.parent / "metrics.json").read_text(encoding="utf-8")), "report": str(report)}
