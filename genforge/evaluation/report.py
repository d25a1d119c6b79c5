"""The evaluation report: one self-contained HTML file a product owner can open offline.

Every image (sample grids, loss curves) is an embedded base64 PNG and the style sheet is inline,
so the file can be mailed or archived alone. The page is a jinja2 template (`templates/`);
this module only prepares what it shows.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from rich.table import Table

from genforge.data.store import Dataset
from genforge.evaluation.text import MEMORISED_NGRAM
from genforge.models import ImageSamples, TableSamples, TextSamples
from genforge.outputs import image_grid, to_pil
from genforge.runs import Run

PER_CLASS = 10  # images per class row in the grids
PAD = 2         # grid padding in pixels, as `image_grid` draws it
SHOWN_PROMPTS, SHOWN_PER_PROMPT = 4, 3  # texts shown per run: the first prompts, a few samples each
SHOWN_DOCUMENTS, SHOWN_REAL = 6, 3  # unprompted samples shown, and real held-out texts beside them
SHOWN_ROWS = 10  # table rows shown per run, and real held-out rows
# what n counts, training speed
UNITS = {"image": ("images", "images/s"), "text": ("texts", "tokens/s"), "table": ("rows", "rows/s")}
TIMINGS = {"evaluator_s": "evaluator", "perplexity_s": "perplexity", "judge_s": "label judge", "metrics_s": "metrics",
           "fid_s": "FID", "total_s": "total"}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "lower", "higher", or "reference": the closer to the real reference row, the better
    digits: int
    meaning: str

    @property
    def arrow(self) -> str:
        return {"lower": "↓", "higher": "↑", "reference": "≈"}[self.better]


# Every figure of genforge's evaluator network says so in its key and label: none is the standard one.
IMAGE_METRICS = (
    Metric("evaluator_fd", "FD (evaluator)", "lower", 3, "Fréchet distance between the evaluator-network features of these "
           "images and of the training images: overall realism and variety in one figure."),
    Metric("evaluator_kid", "KID (evaluator)", "lower", 4, "Kernel distance on the same features; unbiased, so sets of different "
           "sizes compare fairly. About 0 for real images."),
    Metric("evaluator_precision", "Precision (evaluator)", "higher", 3, "Share of images that fall among real images in the "
           "evaluator's feature space: fidelity."),
    Metric("evaluator_recall", "Recall (evaluator)", "higher", 3, "Share of real images that the set reaches in the evaluator's "
           "feature space: variety. Collapsed or repetitive sets score near 0."),
    Metric("evaluator_classifier_score", "Classifier score", "higher", 2, "Inception-Score style: high when each image is clearly "
           "one class and all classes appear; at most the number of classes."),
    Metric("evaluator_class_coverage", "Class coverage", "higher", 2, "Share of classes that receive at least half their expected "
           "share of images."),
    Metric("evaluator_conditional_accuracy", "Conditional accuracy", "higher", 3, "Share of images the evaluator labels as the "
           "class asked for. On the reference row: the evaluator's own accuracy on held-out images, the ceiling."),
    Metric("memorisation", "Memorisation", "lower", 3, "Share of images that are near-copies of one training image (nearest training image "
           "under a quarter of the mean distance to the 50 nearest)."),
    Metric("fid", "FID (Inception)", "lower", 2, "Standard FID with the Inception-v3 network of published figures, against "
           "statistics of train-split images. It falls as either image count grows, so it compares only with FIDs made at "
           "the same two counts, which the report's notes name."),
)
# Counted in the tokens of `text.tokenize` (characters for Chinese, words otherwise), except perplexity.
TEXT_METRICS = (
    Metric("perplexity", "Perplexity", "lower", 2, "exp of the model's mean loss per token over the whole held-out split, "
           "in the run's own BPE tokens (so exactly comparable only between runs that share a tokenizer). Read it against "
           "the unigram baseline row; it does not apply to real texts."),
    Metric("distinct_1", "Distinct-1", "reference", 3, "Distinct tokens / all tokens of the set (Li et al. 2016): "
           "vocabulary variety. Far below the real row: dull or repetitive; far above: word salad."),
    Metric("distinct_2", "Distinct-2", "reference", 3, "Distinct token pairs / all tokens of the set: phrase variety."),
    Metric("self_bleu", "Self-BLEU", "reference", 3, "Mean BLEU-4 of each text against all the others: 1 when all are "
           "alike, 0 when none shares a token. Above the real row: samples resemble each other (several samples of one "
           "prompt share its topic, so expect somewhat more)."),
    Metric("repetition", "Repetition", "lower", 3, "Mean share of each text's 4-grams that repeat an earlier 4-gram of "
           "the same text: loops."),
    Metric("length_mean", "Length", "reference", 1, "Mean tokens per text. Samples stop at the sampling budget "
           "(max_tokens), and real texts are cut to the same budget before they are scored."),
    Metric("length_std", "Length std", "reference", 1, "Spread of the tokens per text: near 0 when every sample "
           "runs to the budget."),
    Metric("ngram_memorisation", f"Memorisation ({MEMORISED_NGRAM}-gram)", "lower", 3, f"Share of texts that copy "
           f"{MEMORISED_NGRAM} or more tokens in a row from a training text. The real row shows how much unseen texts "
           "share with the training texts anyway."),
    Metric("label_agreement", "Label agreement", "higher", 3, "Runs trained with label prompts: share of completions "
           "that a classifier fit on the labeled train texts assigns to the class their prompt asked for. On the "
           "reference row: the classifier's accuracy on real held-out texts, the ceiling. Chance level and method: "
           "see how the text figures are made."),
)
# sdmetrics' Quality Report and the privacy and utility figures of `tabular`, each against the train split.
TABLE_METRICS = (
    Metric("quality_score", "Quality score", "higher", 3, "sdmetrics' Quality Report score: the mean of the column "
           "shapes and column pair trends scores, 1 when the rows follow the train split's distributions exactly. "
           "A small set scores lower by chance alone, so the reference row is a guide, not a ceiling."),
    Metric("column_shapes", "Column shapes", "higher", 3, "Mean over the columns of 1 − KS statistic (numbers, "
           "dates) or 1 − total variation distance (categories) against the train split."),
    Metric("column_pair_trends", "Pair trends", "higher", 3, "Mean over the column pairs of the correlation "
           "similarity (two numbers) or contingency similarity (the others, numbers in 10 bins): relations kept."),
    Metric("ml_synthetic", "ML score (synthetic)", "higher", 3, "Train on synthetic, test on real (TSTR): a random "
           "forest trained on the samples predicts the label column of the real held-out rows (macro F1 for a "
           "category, R² for a number). Not on the reference row: its rows are the test set."),
    Metric("ml_real", "ML score (real)", "higher", 3, "The same forest trained on the train split (TRTR), "
           "tested on the same held-out rows: what the real data achieves."),
    Metric("ml_difference", "ML difference", "higher", 3, "ML score (synthetic) − ML score (real): 0 is as "
           "useful as the real data, below 0 less useful. A difference, not a ratio: R² can be 0 or negative."),
    Metric("dcr_median", "DCR median", "reference", 3, "Median distance from each row to its closest train-split "
           "row (Gower: 0 same values, 1 as far apart as the train split's range). Well below the reference row: "
           "rows sit closer to training rows than unseen real rows do, a sign of copying."),
    Metric("dcr_p05", "DCR 5th percentile", "reference", 3, "The 5th percentile of the same distances: the "
           "closest rows. Near 0 while the reference row's is not: some rows are near-copies."),
    Metric("exact_copies", "Exact copies", "lower", 3, "Share of rows equal to a train-split row in every "
           "compared column (id and text columns left out). The reference row shows how often unseen real "
           "rows coincide with training rows anyway."),
)
METRICS = IMAGE_METRICS + TEXT_METRICS + TABLE_METRICS
KIND_METRICS = {"image": IMAGE_METRICS, "text": TEXT_METRICS, "table": TABLE_METRICS}


@dataclass
class ReportEntry:
    """One evaluated run as the report shows it."""

    run: Run
    metrics: dict[str, Any]
    samples: ImageSamples | TextSamples | TableSamples
    reference: TextSamples | None = None  # the real held-out texts the reference row scored


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_data_uri(array: np.ndarray) -> str:
    """(H, W, C) or (H, W) uint8 -> a data: URI, so the page needs no other file."""
    buf = io.BytesIO()
    to_pil(array).save(buf, format="PNG", optimize=True)
    return _data_uri(buf.getvalue())


def class_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int = PER_CLASS) -> dict[str, Any]:
    """A grid with one row per class (first `per_class` images of each), or one square grid
    when unlabeled; with the row names and the cell size the template needs to align them."""
    labels = np.asarray(labels)
    if classes and (labels >= 0).any():
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(classes))]).astype(int)
        rows = [classes[c] for c in range(len(classes)) if (labels == c).any()]
    else:
        keep, rows = np.arange(min(len(images), per_class * per_class)), []
    grid = image_grid(images[keep], labels[keep].tolist() if rows else None, pad=PAD)
    scale = max(1, 64 // images.shape[2])  # small images are shown enlarged, pixels kept sharp
    return {"uri": png_data_uri(grid), "width": grid.shape[1] * scale, "rows": rows,
            "row_height": (images.shape[2] + PAD) * scale, "pad": PAD * scale}


def text_groups(samples: TextSamples, reference: TextSamples | None) -> list[dict[str, Any]]:
    """The samples grouped by prompt (the first few prompts, a few samples each) with a real held-out
    text of the same prompt; unprompted samples are one group, beside a few real held-out texts."""
    prompts = samples.prompts or [""] * len(samples)
    groups: dict[str, list[str]] = {}
    for p, t in zip(prompts, samples.texts):
        groups.setdefault(p, []).append(t)
    real = reference or TextSamples([])
    if list(groups) == [""]:
        return [{"prompt": None, "samples": groups[""][:SHOWN_DOCUMENTS], "real": real.texts[:SHOWN_REAL]}]
    real_prompts = real.prompts or [""] * len(real)
    return [{"prompt": p, "samples": texts[:SHOWN_PER_PROMPT],
             "real": [t for q, t in zip(real_prompts, real.texts) if q == p][:1]}
            for p, texts in list(groups.items())[:SHOWN_PROMPTS]]


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def table_preview(frame: pd.DataFrame, rows: int = SHOWN_ROWS) -> dict[str, Any]:
    """The first rows as strings, as the page shows them: numbers to 6 significant digits, missing values empty."""
    head = frame.head(rows)
    return {"columns": [str(c) for c in head.columns],
            "rows": [[_cell(v) for v in r] for r in head.itertuples(index=False)]}


def column_scores(entries: list["ReportEntry"]) -> dict[str, Any] | None:
    """Each compared column's shape score (1 − KS or 1 − TVD) in every row that has one, the reference
    row once: the column that pulls a quality score down. None for runs of other kinds."""
    named: dict[str, dict[str, float | None]] = {}
    for e in entries:
        for name, d in e.metrics.get("quality", {}).items():
            named.setdefault(name, d["column_shapes"])
    if not named:
        return None
    columns = list(dict.fromkeys(c for shapes in named.values() for c in shapes))
    return {"names": list(named),
            "rows": [{"column": c, "cells": [format_value(s.get(c), 3) for s in named.values()]} for c in columns]}


def loss_curves(entries: list[ReportEntry]) -> str | None:
    """Train (and val) loss against step for each run, as an embedded PNG; None without metrics."""
    from matplotlib.figure import Figure  # not pyplot: no global state, no display backend

    fig = Figure(figsize=(8, 3.6), dpi=100)
    ax = fig.subplots()
    drawn = False
    for j, e in enumerate(entries):
        records = e.run.metrics()
        for split, style in (("train", "-"), ("val", "o--")):
            points = [(m["step"], m["loss"]) for m in records if m.get("split") == split and "loss" in m]
            if points:
                steps, losses = zip(*points)
                label = f"{e.run.id} {split}" if len(entries) > 1 else split
                ax.plot(steps, losses, style, markersize=3, label=label, color=f"C{j}" if len(entries) > 1 else None)
                drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _data_uri(buf.getvalue())


def format_value(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Only the metrics some row has, each cell formatted; `unit`: what the rows' n counts."""
    metrics = [m for m in METRICS if any(r.get(m.key) is not None for r in rows)]
    kind = next((k for k, group in KIND_METRICS.items() if set(metrics) & set(group)), "image")
    return {"metrics": metrics, "unit": UNITS[kind][0],
            "arrows": {m.better for m in metrics},
            "rows": [{"name": r["name"], "kind": r["kind"], "n": format_value(r["n"], 0),
                      "cells": [format_value(r.get(m.key), m.digits) for m in metrics]} for r in rows]}


def metrics_table(rows: list[dict[str, Any]], title: str = "evaluation") -> Table:
    """The same figures for the terminal, one metric per line so that it fits 80 columns."""
    t = _table(rows)
    table = Table(title=title)
    table.add_column("metric")
    for r in t["rows"]:
        suffix = f" ({r['kind']})" if r["kind"] in ("reference", "baseline") else ""
        table.add_column(r["name"] + suffix, justify="right", overflow="fold")
    table.add_row(t["unit"], *[r["n"] for r in t["rows"]])
    for i, m in enumerate(t["metrics"]):
        table.add_row(f"{m.label} {m.arrow}", *[r["cells"][i] for r in t["rows"]])
    return table


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def _notes(entries: list[ReportEntry]) -> list[str]:
    """Every run's warnings and its standard-FID caveat, each said once: the runs of a comparison share most."""
    said = []
    for e in entries:
        said += e.metrics["warnings"]
        f = e.metrics.get("standard_fid")
        if f:
            said.append(f["comparable_with"] if f["available"] else f["reason"])
    return list(dict.fromkeys(said))


def _sampling(metrics: dict[str, Any], unit: str) -> str:
    """How the samples were made, in one line: count, prompts, budget, seed, overrides and time."""
    o, s = metrics.get("options", {}), metrics.get("sampling")
    what = f"{o.get('n')} {unit}"
    if s and s["prompts"]:
        lo, hi = s["samples_per_prompt"]
        what += f" from {s['prompts']} {s['source']} ({lo if lo == hi else f'{lo}–{hi}'} each)"
    elif s:
        what += f", {s['source']}"
    if s:
        what += f", at most {s['max_tokens']} tokens"
    overrides = "".join(f", {k} {v}" for k, v in o.get("sample", {}).items())
    return f"{what}, seed {o.get('seed')}{overrides}: {metrics.get('timings', {}).get('sampling_s')} s"


def _evaluation_time(timings: dict[str, Any]) -> str:
    return ", ".join(f"{label} {timings[k]} s" for k, label in TIMINGS.items() if timings.get(k) is not None)


def _image_labels(samples: ImageSamples) -> np.ndarray:
    """The requested class per image, -1 when unconditional, as `class_grid` takes them."""
    return np.asarray(samples.labels if samples.labels is not None else [-1] * len(samples))


def human_review(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per source of each review (genforge/review/summary.py), its figure and interval formatted."""
    lines = []
    for s in summaries:
        review = f"{s['name']} ({s['id']}, {s['mode']}): {s['ratings']} ratings by {s['reviewers']} reviewers, " \
                 f"{s['items_rated']} of {s['items']} items"
        if s["mode"] == "rubric":
            shown = [(s["source"], "score (1-5)", s["score"], s["low"], s["high"],
                      ", ".join(f"{k}: {v}" for k, v in s["histogram"].items()))]
        else:
            shown = [(x["source"], "preferred", x["preference"], x["low"], x["high"],
                      f"{x['wins']} wins, {x['losses']} losses, {x['ties']} ties") for x in s["sources"]]
        lines += [{"review": "" if i else review, "source": source, "figure": f"{what} {format_value(value, 3)}",
                   "interval": "—" if low is None else f"{low:.3f}–{high:.3f}", "counts": counts}
                  for i, (source, what, value, low, high, counts) in enumerate(shown)]
    return lines


def render_report(entries: list[ReportEntry], dataset: Dataset | None, rows: list[dict[str, Any]],
                  reviews: list[dict[str, Any]]) -> str:
    """The whole page as a string: one run (evaluate) or several (compare), with their human reviews."""
    kind = entries[0].samples.kind
    unit, speed = UNITS[kind]
    runs = []
    for e in entries:
        if isinstance(e.samples, ImageSamples):
            shown = {"grid": class_grid(e.samples.images, _image_labels(e.samples), list(e.run.data_spec.classes))}
        elif isinstance(e.samples, TableSamples):
            shown = {"preview": table_preview(e.samples.frame)}
        else:
            shown = {"groups": text_groups(e.samples, e.reference)}
        runs.append({
            "id": e.run.id, "dataset": e.metrics["dataset"], "checkpoint": e.metrics["checkpoint"], **shown,
            "config": yaml.safe_dump(e.run.config.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
            "training": e.metrics.get("training", {}), "speed_unit": speed,
            "sampling": _sampling(e.metrics, unit), "evaluation_time": _evaluation_time(e.metrics.get("timings", {})),
            "perplexity": e.metrics.get("perplexity"), "label_agreement": e.metrics.get("label_agreement"),
            "ml_efficacy": e.metrics.get("ml_efficacy"),
        })
    card = None
    if dataset is not None:
        m = dataset.manifest
        card = {"ref": m.ref, "kind": m.kind, "created_at": m.created_at, "classes": m.classes,
                "source": json.dumps(m.source, ensure_ascii=False, indent=1, default=str),
                "counts": json.dumps(m.counts, ensure_ascii=False, indent=1, default=str),
                "gate": m.gate, "real_grid": None, "real_rows": None}
        if kind == "image":
            real, real_labels = dataset.images("val")
            if not len(real):
                real, real_labels = dataset.images("test")
            card["real_grid"] = class_grid(real, real_labels, m.classes) if len(real) else None
        elif kind == "table":
            real = dataset.frame("val")
            if not len(real):
                real = dataset.frame("test")
            card["real_rows"] = table_preview(real) if len(real) else None
    first = entries[0].metrics
    return _env().get_template("report.html.j2").render(
        title=("Evaluation of " + entries[0].run.id) if len(entries) == 1 else f"Comparison of {len(entries)} runs",
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), kind=kind, table=_table(rows), runs=runs,
        dataset=card, loss_curves=loss_curves(entries), evaluator=first.get("evaluator", {}),
        standard_fid=first.get("standard_fid", {}), text_tokens=first.get("text_tokens"), notes=_notes(entries),
        columns=first.get("columns"), column_scores=column_scores(entries), human_review=human_review(reviews),
    )
