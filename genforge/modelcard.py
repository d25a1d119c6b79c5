"""The model card a registered version carries: what a business reader must know before using it.

Sections after Mitchell et al., "Model Cards for Model Reporting" (2019), cut to what genforge knows
for certain: intended use and limitations (from the run config's `registry:` section), the data (its
version, source, licence and quality-gate result), training, the evaluation beside its real reference
row, and the licences of the data and of any imported weights. Markdown: MLflow shows it as the
version's description, and it is MODEL_CARD.md in the version's folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genforge.tracking import is_figure


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _gate(manifest: dict[str, Any]) -> list[str]:
    gate = manifest.get("gate") or {}
    if not gate.get("rules"):
        return ["Quality gate: **none recorded** (the dataset was not made by `genforge data ingest`)."]
    verdict = "passed" if gate.get("passed") else "FAILED"
    if gate.get("forced"):
        verdict += " (published anyway with --force: read the rules below)"
    lines = [f"Quality gate: **{verdict}**.", "", "| rule | figure | limit | result |", "|---|---|---|---|"]
    for r in gate.get("rules", []):
        result = "n/a" if r.get("passed") is None else ("pass" if r["passed"] else "FAIL")
        lines.append(f"| {r['rule']} | {_fmt(r.get('figure'))} | {_fmt(r.get('limit'))} | {result} |")
    return lines


def _metrics(evaluation: dict[str, Any]) -> list[str]:
    rows = evaluation.get("rows", [])
    keys = [k for r in rows for k, v in r.items() if is_figure(v)]
    keys = [k for k in dict.fromkeys(keys) if k != "n"]
    lines = ["| figure | " + " | ".join(r.get("name", "?") for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    lines += [f"| {k} | " + " | ".join(_fmt(r.get(k)) for r in rows) + " |" for k in keys]
    return lines


def _imported(init_from: str | None) -> dict[str, Any]:
    """What model.json of the checkpoint a run started from says about imported weights (genforge import)."""
    try:
        return json.loads((Path(init_from) / "model.json").read_text(encoding="utf-8")).get("imported") or {}
    except (TypeError, OSError, ValueError):
        return {}


def _serving(run: Any) -> list[str]:
    """How `genforge serve` exposes the model: its endpoint, what a prompt is, which options a request may set."""
    from genforge.models import get_family, gpt
    kind = run.data_spec.kind
    options = ", ".join(f"`{o}`" for o in get_family(run.family).REQUEST_OPTIONS) or "none"
    if kind == "text":
        return ["`genforge serve`: `POST /v1/completions` and `POST /v1/chat/completions` (OpenAI's API). "
                f"Chat template: {gpt.CHAT_TEMPLATE}.", f"Request options: {options}, `n`, `seed`, `stream`."]
    if kind == "image":
        classes = run.data_spec.classes
        prompt = f"one of its classes {list(classes)} (empty: the classes in turn)" if classes else "empty"
        return [f"`genforge serve`: `POST /v1/images/generations` (OpenAI's API); the prompt is {prompt}; "
                f"`size` {run.data_spec.width}x{run.data_spec.height}.",
                f"Request options (extra fields): {options}, `n`, `seed`."]
    if kind == "table":
        cols = run.data_spec.columns
        skipped = [c.name for c in cols if c.type == "text"]
        ids = [c.name for c in cols if c.type == "id"]
        rules = run.config.model.rules.model_dump(exclude_defaults=True)
        return ["`genforge serve`: `POST /v1/tables/generations` (`n` rows, `conditions`, `response_format` json or csv).",
                f"Columns generated: {', '.join(c.name for c in cols if c.type != 'text')}"
                + (f"; free text not generated: {', '.join(skipped)}" if skipped else "")
                + (f"; synthetic ids (never real ones): {', '.join(ids)}" if ids else "") + ".",
                f"Business rules every row satisfies: {rules or 'none configured'}. No row equals a real row of "
                "the dataset (checked on normalised values; such rows are drawn again).",
                f"Request options (extra fields): {options}, `n`, `seed`."]
    return [f"Request options: {options}."]


def model_card(run: Any, evaluation: dict[str, Any], manifest: dict[str, Any], name: str) -> str:
    """The card of `run` (a loaded Run) registered as `name`, from its evaluation's metrics.json and its
    dataset's manifest."""
    reg, info = run.config.registry, run.info
    source = manifest.get("source", {})
    imported = _imported(info.get("init_from"))
    opts = evaluation.get("options", {})
    lines = [
        f"# {name}: a genforge {run.family} model",
        "",
        "## Intended use",
        reg.intended_use,
        "",
        "## Limitations",
        reg.limitations,
        "",
        "## Data",
        f"Dataset `{manifest.get('name')}@{manifest.get('version')}` ({manifest.get('kind')}), from "
        f"`{source.get('uri')}`: {source.get('description', '')}".rstrip(": "),
        f"Examples kept: {manifest.get('counts', {}).get('kept', '-')}; split: "
        + ", ".join(f"{k} {v}" for k, v in (manifest.get("split", {}).get("sizes") or {}).items()),
        "",
        *_gate(manifest),
        "",
        "## Training",
        f"Run `{run.id}`: {info.get('step')} steps in {_fmt(info.get('wall_s'))} s on {info.get('device')} "
        f"({info.get('precision')}), {info.get('params'):,} parameters, status {info.get('status')}."
        + (f" Started from `{info['init_from']}`." if info.get("init_from") else ""),
        "",
        "## Evaluation",
        f"Checkpoint `{evaluation.get('checkpoint')}`, {opts.get('n')} samples, seed {opts.get('seed')}, "
        f"sampling options {opts.get('sample') or 'the defaults'}. The reference row scores real held-out data the "
        "same way: the closer a figure is to it, the better.",
        "",
        *_metrics(evaluation),
        *([""] + [f"- warning: {w}" for w in evaluation.get("warnings", [])] if evaluation.get("warnings") else []),
        "",
        "## Serving",
        *_serving(run),
        "",
        "## Licences",
        f"- Training data: {source.get('licence') or 'not recorded at ingest: check the source before use'}",
        f"- This model: {reg.licence or 'not set (registry.licence in the run config)'}",
    ]
    if info.get("init_from"):
        origin = imported.get("name_or_path") or imported.get("from") or info["init_from"]
        lines.append(f"- Weights it started from (`{origin}`): "
                     f"{reg.weights_licence or 'not recorded: check the source model licence before use'}")
    return "\n".join(lines) + "\n"
