"""The evaluate stage: score a run's samples against its dataset, always beside real held-out data.

`evaluate_run` writes `runs/<id>/eval/` for image, text and table runs: metrics.json, report.html and
the samples scored (samples.safetensors; for text samples.jsonl, and reference/samples.jsonl, the real
texts of the reference row; for tables samples.csv). `compare_runs` puts several runs of one kind in
one table and report, all scored at one n and seed. `ImageReference.score`, `TextReference.score` and
`TableReference.score` are the pieces the registry and the service reuse: every figure of one set of
images, texts or rows, against one dataset. Figures from genforge's evaluator network are keyed
`evaluator_*`, so none of them reads as the standard figure of the same name; `fid` is the standard
Inception FID.

A text run's table has three rows: the run (its samples' figures, and its perplexity on the whole
held-out split, computed by the family's own `encode` and `val_loss`, so packed documents and
prompt/completion data are both scored on exactly the tokens the model learns), the real held-out
texts scored like the samples (the reference; perplexity does not apply), and a unigram model of the
train split's tokens (the baseline perplexity any language model must beat). A run trained with
`model.label_prompts` (a labeled dataset, each class's prompt asking for a text of that class) is
asked for every class evenly, and its label agreement is measured: the share of samples that a
classifier fit on the train split's texts and labels (`text.LabelJudge`) assigns to the class asked
for; on the reference row, that classifier's accuracy on the real held-out texts.

A table run's table has two rows, the run's samples and the real held-out rows, each scored against
the train split (`tabular`): sdmetrics' quality score, distance to the closest training record and
the exact-copy share (the held-out rows show what unseen real rows score). ML efficacy, when the
dataset names a label column, is on the run's row only, since the held-out rows are its test set: a
forest trained on the samples (TSTR) against one trained on the train split (TRTR), as their
difference, never a ratio (TRTR can be 0 or negative for R^2).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file

from genforge.batches import batch_rows
from genforge.data.store import Dataset, open_dataset
from genforge.devices import autocast
from genforge.errors import ConfigError, ModelError
from genforge.evaluation import fid, image, tabular, text
from genforge.evaluation.evaluator import Evaluator, EvaluatorConfig, load_or_train_evaluator
from genforge.evaluation.report import ReportEntry, render_report
from genforge.models import Batch, ImageSamples, SampleRequest, TableSamples, TextSamples, gpt
from genforge.outputs import write_table, write_texts
from genforge.review.summary import reviews_of
from genforge.runs import Run, load_run
from genforge.sampling import Model
from genforge.tracking import track_evaluation
from genforge.tokenizer import TextTokenizer
from genforge.workspace import atomic_write_json, atomic_write_text, atomic_write_with, home

FORMAT = "genforge-eval/2"  # 2: evaluator figures renamed evaluator_*, options are the reuse key
COMPARE_FORMAT = "genforge-compare/1"
# sampling is the slow part, and slower for texts; a table's DCR compares every sample with every train row
MAX_DEFAULT_N = {"image": 1000, "text": 200, "table": 10_000}
SAMPLES_PER_PROMPT = 4  # prompt/completion data: every sampled held-out prompt gets at least this many


@dataclass
class ImageReference:
    """A dataset's train split seen through its evaluator: what every image set is scored against."""

    train_images: np.ndarray
    evaluator: Evaluator | None  # None for unlabeled data: only memorisation is measured then
    train_features: np.ndarray | None = None
    unavailable: str | None = None  # why the evaluator figures are missing

    @classmethod
    def for_dataset(cls, dataset: Dataset, config: EvaluatorConfig = EvaluatorConfig()) -> "ImageReference":
        train_images, _ = dataset.images("train")
        if len(dataset.classes) < 2:
            return cls(train_images, None, unavailable=f"dataset {dataset.ref} has no class labels, so genforge's "
                       "evaluator network cannot be trained: FD, KID, precision/recall and class figures are not measured")
        ev = load_or_train_evaluator(dataset, config)
        return cls(train_images, ev, ev.embed(train_images)[0])

    def score(self, images: np.ndarray, requested: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
        """Every figure for one set of uint8 (N, C, H, W) images; None where it does not apply."""
        if images.dtype != np.uint8 or images.shape[1:] != self.train_images.shape[1:]:
            raise ValueError(f"images must be uint8 (N, {', '.join(map(str, self.train_images.shape[1:]))}) like the "
                             f"train split, got {images.dtype} {tuple(images.shape)}")
        row: dict[str, Any] = {"n": int(len(images)), "memorisation": image.memorisation(images, self.train_images)}
        if self.evaluator is None:
            return row
        feats, probs = self.evaluator.embed(images)
        pred = probs.argmax(1)
        rng = np.random.default_rng(seed)
        # precision/recall depend on the sizes of both sets: compare with as many train images as samples
        real = self.train_features[rng.choice(len(self.train_features), min(len(feats), len(self.train_features)), replace=False)]
        precision, recall = image.precision_recall(real, feats)
        kid, kid_std = image.kernel_inception_distance(self.train_features, feats, seed=seed)
        row |= {
            "evaluator_fd": image.frechet_distance(self.train_features, feats), "evaluator_kid": kid,
            "evaluator_kid_std": kid_std, "evaluator_precision": precision, "evaluator_recall": recall,
            "evaluator_classifier_score": image.classifier_score(probs),
            "evaluator_class_coverage": image.class_coverage(pred, self.evaluator.num_classes, self.evaluator.class_shares),
            "evaluator_conditional_accuracy": None if requested is None else image.conditional_accuracy(pred, requested),
        }
        return row


@dataclass
class TextReference:
    """A dataset's train texts as an n-gram index, and for labeled data the judge of their classes:
    what every set of texts is scored against."""

    train_ngrams: text.NgramIndex
    judge: text.LabelJudge | None = None  # None: label agreement is not measured

    @classmethod
    def for_texts(cls, train_texts: Sequence[str], judge: text.LabelJudge | None = None) -> "TextReference":
        return cls(text.NgramIndex.of(train_texts), judge)

    def score(self, texts: Sequence[str], seed: int = 0, asked: np.ndarray | None = None) -> dict[str, Any]:
        """Every figure of one set of texts (self-BLEU None for fewer than 2), in the tokens of `text.tokenize`;
        label agreement too when there is a judge and `asked`, the class each text was asked for (or is)."""
        lengths = text.length_stats(texts)
        row = {"n": len(texts), "distinct_1": text.distinct_n(texts, 1), "distinct_2": text.distinct_n(texts, 2),
               "self_bleu": text.self_bleu(texts, seed=seed) if len(texts) >= 2 else None,
               "repetition": text.repetition_rate(texts), **{f"length_{k}": v for k, v in lengths.items()},
               "ngram_memorisation": text.ngram_memorisation(texts, self.train_ngrams)}
        if self.judge is not None and asked is not None:
            row["label_agreement"] = text.label_agreement(self.judge.predict(texts), asked)
        return row


def _figure(value: float) -> float | None:
    """None for an undefined score (NaN), so metrics.json stays valid JSON."""
    return None if np.isnan(value) else float(value)


@dataclass
class TableReference:
    """A dataset's train rows, and the real rows ML efficacy tests on: what every table is scored against."""

    train: pd.DataFrame
    categorical: tuple[str, ...] = ()  # compared as categories whatever their values look like (the schema's)
    left_out: dict[str, str] = field(default_factory=dict)  # columns dropped before any metric, with why
    target: str | None = None  # the label column ML efficacy predicts
    test: pd.DataFrame | None = None
    unavailable: str | None = None  # why ML efficacy is not measured

    @classmethod
    def for_dataset(cls, dataset: Dataset, train_split: str = "train", test_split: str = "") -> "TableReference":
        """Kinds follow the schema: its categorical and boolean columns are categories, its free-text columns
        are left out (no table family generates them). ML efficacy predicts the schema's label column,
        tested on `test_split` ("": no held-out rows, not measured)."""
        schema = dataset.manifest.data_schema
        types = {c["name"]: c["type"] for c in schema.get("columns", [])}
        left_out = {c: "text: free text, which the table families do not generate"
                    for c, t in types.items() if t == "text"}
        train = dataset.frame(train_split).drop(columns=list(left_out))
        categorical = tuple(c for c, t in types.items() if t in ("categorical", "boolean"))
        target = schema.get("label_column")
        if target is None:
            reason = (f"dataset {dataset.ref} names no label column to predict; ingest it again with "
                      "table.label_column=COLUMN to measure ML efficacy")
        elif not test_split:
            reason = "there are no real held-out rows to test on"
        else:
            reason = None
        return cls(train, categorical, left_out, target, dataset.frame(test_split) if reason is None else None, reason)

    def columns(self) -> dict[str, dict[str, str]]:
        """The columns the figures compare, with their kind, and every column none uses, with why."""
        kinds = tabular.column_kinds(self.train, self.categorical)
        return {"compared": {c: kind for c, (kind, _) in kinds.items() if kind in tabular.ANALYSED},
                "skipped": self.left_out | tabular.skipped_columns(kinds)}

    def score(self, frame: pd.DataFrame, seed: int = 0, utility: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every figure of one table against the train rows (None where undefined), and what is behind them:
        per-column and per-pair scores, ML efficacy's task and metric. `utility=False` leaves ML efficacy
        out: for the real held-out rows, which are its test set."""
        quality = tabular.quality_report(self.train, frame, self.categorical)
        privacy = tabular.privacy(self.train, frame, categorical=self.categorical)
        row: dict[str, Any] = {
            "n": len(frame), "quality_score": _figure(quality["score"]),
            "column_shapes": _figure(quality["column_shapes"]["score"]),
            "column_pair_trends": _figure(quality["column_pair_trends"]["score"]),
            "dcr_median": privacy["dcr_median"], "dcr_p05": privacy["dcr_p05"], "exact_copies": privacy["exact_copies"]}
        details: dict[str, Any] = {
            "column_shapes": {c: _figure(v["score"]) for c, v in quality["column_shapes"]["columns"].items()},
            "column_pair_trends": [{k: _figure(v) if isinstance(v, float) else v for k, v in p.items()}
                                   for p in quality["column_pair_trends"]["pairs"]]}
        if utility and self.unavailable is None:
            ml = tabular.ml_efficacy(self.train, self.test, frame, self.target, self.categorical, seed)
            row |= {"ml_synthetic": ml["tstr"], "ml_real": ml["trtr"], "ml_difference": ml["difference"]}
            details["ml_efficacy"] = {"task": ml["task"], "metric": ml["metric"]}
        return row, details


@dataclass(frozen=True)
class EvalOptions:
    n: int | None = None          # samples; default: `_default_n`
    seed: int = 0
    sample: dict[str, Any] = field(default_factory=dict)  # overrides of the run's `sample:` section
    batch_size: int = 64
    fid: bool | None = None       # standard FID: None = when the optional network is installed

    def check(self) -> None:
        if self.n is not None and not 10 <= self.n <= 100_000:
            raise ConfigError(f"n must be between 10 and 100000, got {self.n}")


def evaluation_key(checkpoint: str, options: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation's figures depend on: `compare` reuses a stored one only when this matches.

    Every option is in it (so a new one is never silently ignored) except two that change no
    figure: `batch_size` (each sample has its own seed) and `fid` (it adds a figure). n matters
    most: evaluator FD of real held-out digits is 0.26 at n=1000, 1.18 at 200 and 3.98 at 50.
    Sampler settings are compared as given: None (the run's default) and an explicit equal value
    differ, so such a run is evaluated again rather than trusted.
    """
    return {"checkpoint": checkpoint, **{k: v for k, v in options.items() if k not in ("batch_size", "fid")}}


def _default_n(count: int, kind: str) -> int:
    """n when none is given: the whole held-out split (a table's train split), at most MAX_DEFAULT_N of the kind."""
    return min(count or MAX_DEFAULT_N[kind], MAX_DEFAULT_N[kind])


def heldout(dataset: Dataset, split: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The real images of the reference row: the run's val split, else the test split."""
    for name in dict.fromkeys((split, "val", "test")):
        images, labels = dataset.images(name)
        if len(images):
            return name, images, labels
    return "", images, labels


def _no_heldout_warning(dataset: Dataset, unit: str, missing: str = "real reference row") -> str:
    return (f"dataset {dataset.ref} has no held-out {unit} (its val and test splits are empty), so there is no "
            f"{missing} and the figures cannot be read against real {unit}: ingest it again with a "
            "val or test split above 0")


def _standard_fid(dataset: Dataset, sets: dict[str, np.ndarray], generated_images: int,
                  wanted: bool | None) -> tuple[dict, dict[str, float]]:
    """Standard FID of each set against the train split (its Inception features cached by version).

    Both image counts are recorded: FID is biased in each of them, so a figure is comparable only
    with FIDs made at the same two counts.
    """
    reason = fid.unavailable_reason()
    if wanted is False:
        reason = "standard FID not computed (--no-fid)"
    if reason:
        return {"available": False, "reason": reason}, {}
    t0 = time.perf_counter()
    train, _ = dataset.images("train")
    keep = np.sort(np.random.default_rng(0).permutation(len(train))[:fid.REFERENCE_N])
    cache = home() / "evaluators" / dataset.name / dataset.version / f"inception-train-{len(keep)}.safetensors"
    if cache.is_file():
        stats = load_file(str(cache))
    else:
        mu, sigma = image.feature_stats(fid.inception_features(train[keep]))
        stats = {"mu": mu, "sigma": sigma}
        atomic_write_with(cache, lambda p: save_file(stats, p))
    scores = {name: image.frechet_distance_from_stats(stats["mu"], stats["sigma"], *image.feature_stats(fid.inception_features(x)))
              for name, x in sets.items()}
    return {"available": True, "network": fid.NETWORK, "reference": "train split", "reference_images": len(keep),
            "generated_images": generated_images, "comparable_with": fid.comparable_with(len(keep), generated_images),
            "seconds": round(time.perf_counter() - t0, 1)}, scores


def _training_timings(run: Run) -> dict[str, Any]:
    train = [m for m in run.metrics() if m.get("split") == "train"]
    speeds = [m["items_per_s"] for m in train if "items_per_s" in m]
    return {"steps": run.info.get("step"), "wall_s": run.info.get("wall_s"), "device": run.info.get("device"),
            "params": run.info.get("params"), "items_per_s": float(np.median(speeds)) if speeds else None,
            "status": run.info.get("status")}


@dataclass
class Scored:
    """One kind's part of an evaluation; `evaluate_run` writes the same frame around every kind's."""

    n: int
    rows: list[dict[str, Any]]
    sections: dict[str, Any]  # the kind's own parts of metrics.json (evaluator and FID; sampling and perplexity)
    warnings: list[str]
    timings: dict[str, float | None]
    samples: ImageSamples | TextSamples | TableSamples
    reference: TextSamples | None = None  # the real texts the reference row scored (images come from the dataset)


def _score_images(run: Run, dataset: Dataset, options: EvalOptions) -> Scored:
    """The evaluator's figures, memorisation and standard FID of the samples and of real held-out images."""
    t0 = time.perf_counter()
    reference = ImageReference.for_dataset(dataset)
    evaluator_s = time.perf_counter() - t0

    split, real, real_labels = heldout(dataset, run.config.data.val_split)
    n = options.n or _default_n(len(real), "image")
    keep = np.sort(np.random.default_rng(options.seed).permutation(len(real))[:n])  # a seeded subset when n is smaller
    real, real_labels = real[keep], real_labels[keep]

    k = run.data_spec.num_classes
    requested = np.arange(n) % k if k else None
    t0 = time.perf_counter()
    request = SampleRequest.make(n, options.seed, labels=None if requested is None else tuple(requested.tolist()),
                                 options=options.sample)
    samples = run.sample(request, options.batch_size).images
    sampling_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    scored = []  # (row, images)
    if len(real):
        row = reference.score(real, None if k == 0 else real_labels, options.seed)
        scored.append(({"name": f"real held-out ({split})", "kind": "reference", **row}, real))
    scored.append(({"name": run.id, "kind": "samples", **reference.score(samples, requested, options.seed)}, samples))
    metrics_s = time.perf_counter() - t0

    fid_info, fid_scores = _standard_fid(dataset, {r["name"]: x for r, x in scored}, n, options.fid)
    return Scored(
        n, [{**r, "fid": fid_scores.get(r["name"])} for r, _ in scored],
        {"evaluator": reference.evaluator.meta if reference.evaluator else {"available": False, "reason": reference.unavailable},
         "standard_fid": fid_info},
        [] if len(real) else [_no_heldout_warning(dataset, "images")],
        {"evaluator_s": round(evaluator_s, 2), "sampling_s": round(sampling_s, 2), "metrics_s": round(metrics_s, 2),
         "fid_s": fid_info.get("seconds")},
        ImageSamples(samples, None if requested is None else tuple(requested.tolist())))


def _split_texts(run: Run, dataset: Dataset, split: str) -> tuple[list[str] | None, list[str]]:
    """(prompts, or None for plain text; texts) of a split as the run's family reads it: the texts
    are what the model learns to write, whole documents or completions."""
    if not len(dataset.frame(split)):
        return None, []
    a, b = gpt.split_texts(dataset, split, run.config.model)
    return (None, a) if b is None else (a, b)


def heldout_texts(run: Run, dataset: Dataset) -> tuple[str, list[str] | None, list[str]]:
    """(split, prompts, texts) of the reference row: the run's val split, else val, else test; "" when all are empty."""
    for split in dict.fromkeys((run.config.data.val_split, "val", "test")):
        prompts, texts = _split_texts(run, dataset, split)
        if texts:
            return split, prompts, texts
    return "", None, []


def _class_prompts(run: Run, dataset: Dataset) -> list[str] | None:
    """Each class's prompt, in the dataset's class order, when the run learned to write a text of the
    class a prompt names (`model.label_prompts` on a labeled text dataset, read as `gpt.split_texts`
    reads it); None otherwise, and then label agreement is not measured."""
    by_class = getattr(run.config.model, "label_prompts", None)
    if by_class is None or "completion" in dataset.frame(run.config.data.train_split).columns:
        return None  # prompt/completion columns win over label_prompts
    return [by_class[c] for c in dataset.classes]


def _labels(dataset: Dataset, split: str) -> np.ndarray:
    """The class index of each text of a split, in `_split_texts` order."""
    return dataset.frame(split)["label"].to_numpy(np.int64)


def _ask_every_class(class_prompts: list[str], n: int,
                     fits: Callable[[str], bool]) -> tuple[tuple[str, ...], np.ndarray]:
    """The prompt of each of n samples and the class it asks for: sample i asks for class i mod k, so
    every class is asked for evenly (as for image runs) and weighs alike in label agreement."""
    too_long = [i for i, p in enumerate(class_prompts) if not fits(p)]
    if too_long:
        raise ModelError(f"the prompts of classes {too_long} do not fit the model's context with the sampling "
                         "budget; lower sample.max_tokens (--set sample.max_tokens=N)")
    asked = np.arange(n) % len(class_prompts)
    return tuple(class_prompts[c] for c in asked), asked


def _label_judge(dataset: Dataset, split: str, texts: list[str],
                 seed: int) -> tuple[text.LabelJudge | None, dict[str, Any]]:
    """The judge of label agreement, fit on the train split's texts and classes, and what metrics.json
    says of it; no judge when the split holds fewer than 2 classes (nothing to tell apart)."""
    labels = _labels(dataset, split)
    present = len(np.unique(labels))
    if present < 2:
        return None, {"available": False, "reason": f"the {split} split holds texts of {present} class, so no "
                      "classifier can be fit to judge the samples' classes"}
    judge = text.LabelJudge.fit(texts, labels, seed)
    return judge, {"available": True, "method": text.JUDGE, "classes": list(dataset.classes), "train_split": split,
                   "train_texts": judge.train_texts, "texts_in_split": len(texts),
                   "max_train_texts": text.JUDGE_MAX_TEXTS}


def _sample_prompts(pool: Sequence[str], n: int, fits: Callable[[str], bool]) -> tuple[tuple[str, ...], int]:
    """The prompt of each of n samples, and how many distinct prompts were too long to use.

    The first distinct prompts of `pool` that fit the context with the sampling budget, as many as
    give each at least SAMPLES_PER_PROMPT samples, each in one contiguous block of n // P or more:
    several samples per prompt show whether the model answers one prompt in more than one way.
    """
    distinct = list(dict.fromkeys(pool))
    fitting = [p for p in distinct if fits(p)]
    if not fitting:
        raise ModelError(f"none of the {len(distinct)} prompts fits the model's context with the sampling budget; "
                         "lower sample.max_tokens (--set sample.max_tokens=N)")
    chosen = fitting[:max(1, n // SAMPLES_PER_PROMPT)]
    return tuple(chosen[i * len(chosen) // n] for i in range(n)), len(distinct) - len(fitting)


def _targets(batch: Batch) -> torch.Tensor:
    """The token ids a text batch is scored on: each next token whose loss-mask position is set
    (the text families' layout: tokens (N, T+1), mask (N, T))."""
    return batch["tokens"][:, 1:][batch["mask"] > 0]


@torch.inference_mode()
def heldout_perplexity(model: Model, batch: Batch, batch_size: int = 64) -> float:
    """exp of the family's validation loss, each batch weighted by its target tokens, over all of `batch`:
    the same figure as exp(val loss) during training, but over the whole split."""
    total, weight = 0.0, 0.0
    with autocast(model.device, model.precision):
        for i in range(0, batch_rows(batch), batch_size):
            rows = {k: v[i:i + batch_size].to(model.device) for k, v in batch.items()}
            out, w = model.family.val_loss(model.modules, rows)
            total += float(out["loss"]) * w
            weight += w
    return math.exp(total / weight)


def _perplexities(model: Model, dataset: Dataset, split: str, train_split: str,
                  batch_size: int) -> tuple[float | None, float | None, dict[str, Any]]:
    """The model's and the unigram baseline's perplexity on every target token of the held-out
    split, and what they were measured on (or why they were not)."""
    if not split:
        return None, None, {"available": False, "reason": "no held-out texts"}
    encode = lambda name: model.family.encode(model.config, model.spec, model.fitted, dataset, name)  # noqa: E731
    heldout = encode(split)
    targets = _targets(heldout)
    if not len(targets):
        return None, None, {"available": False,
                            "reason": f"no example of the {split} split has a target token within the model's context"}
    train = _targets(encode(train_split))
    return (heldout_perplexity(model, heldout, batch_size),
            text.unigram_perplexity(train.numpy(), targets.numpy(), model.spec.vocab_size),
            {"available": True, "split": split, "tokens": len(targets), "train_tokens": len(train),
             "vocab_size": model.spec.vocab_size})


def _score_texts(run: Run, dataset: Dataset, options: EvalOptions) -> Scored:
    """Perplexity on the whole held-out split beside a unigram baseline's, and the sample figures
    beside those of as many real held-out texts, cut to the samples' token budget; label agreement
    too for a run trained with label prompts."""
    if options.fid:
        raise ConfigError("standard FID is an image figure; evaluate a text run without --fid")
    model = run.model()
    tok = TextTokenizer.from_fitted(model.fitted)
    fmt, budget = run.config.model.format, model.options(options.sample).max_tokens
    split, real_prompts, real = heldout_texts(run, dataset)
    train_prompts, train_texts = _split_texts(run, dataset, run.config.data.train_split)
    n = options.n or _default_n(len(real), "text")
    order = np.random.default_rng(options.seed).permutation(len(real))
    warnings = [] if real else [_no_heldout_warning(dataset, "texts", "real reference row, no perplexity and no "
                                                    "unigram baseline")]
    if 0 < len(real) < n:
        warnings.append(f"the reference row has {len(real)} real texts against {n} samples: distinct-n and self-BLEU "
                        "change with a set's size, so read them with care")

    sampling: dict[str, Any] = {"max_tokens": budget, "prompts": None, "source": "new documents"}
    prompts, asked, class_prompts = None, None, _class_prompts(run, dataset)
    if fmt == "prompt_completion":
        context = model.spec.block_size
        fits = lambda p: len(gpt.prompt_ids(tok, p, fmt)) + budget <= context  # noqa: E731
        if class_prompts is not None:
            prompts, asked = _ask_every_class(class_prompts, n, fits)
            source = "class prompts (model.label_prompts)"
        else:
            prompts, too_long = _sample_prompts([real_prompts[i] for i in order] if real else train_prompts, n, fits)
            source = f"held-out prompts ({split})" if real else "train prompts"
            if not real:
                warnings.append("the samples complete prompts of the train split, which the model has learned")
            if too_long:
                warnings.append(f"{too_long} distinct prompts are too long for the model's context of {context} "
                                f"tokens with max_tokens {budget}; the samples use the others")
        per_prompt = np.unique(prompts, return_counts=True)[1]
        sampling |= {"prompts": len(per_prompt), "samples_per_prompt": [int(per_prompt.min()), int(per_prompt.max())],
                     "source": source}
    t0 = time.perf_counter()
    request = SampleRequest.make(n, options.seed, prompts=prompts, options=options.sample)
    samples = run.sample(request, options.batch_size)
    sampling_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ppl, unigram, perplexity = _perplexities(model, dataset, split, run.config.data.train_split, options.batch_size)
    if real and ppl is None:
        warnings.append(f"perplexity not measured: {perplexity['reason']}")
    perplexity_s = time.perf_counter() - t0

    sections: dict[str, Any] = {"sampling": sampling, "perplexity": perplexity, "text_tokens": text.TOKENS}
    timings = {"sampling_s": round(sampling_s, 2), "perplexity_s": round(perplexity_s, 2)}
    keep = order[:n]
    judge, real_asked = None, None
    if class_prompts is not None:
        t0 = time.perf_counter()
        judge, info = _label_judge(dataset, run.config.data.train_split, train_texts, options.seed)
        if judge is None:
            warnings.append(f"label agreement not measured: {info['reason']}")
        else:  # chance: each row's figure for a judge that always names the row's commonest class
            real_asked = _labels(dataset, split)[keep] if real else None
            chance = {"samples": text.majority_share(asked)}
            if real:
                chance["reference"] = text.majority_share(real_asked)
            info |= {"chance": chance, "asked": asked.tolist()}  # sample i asked for classes[asked[i]]
        sections["label_agreement"] = info
        timings["judge_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    reference = TextSamples([tok.decode(tok.encode(real[i])[:budget]) for i in keep],
                            None if real_prompts is None else [real_prompts[i] for i in keep])
    scorer = TextReference.for_texts(train_texts, judge)
    rows = []
    if real:
        rows.append({"name": f"real held-out ({split})", "kind": "reference", "perplexity": None,
                     **scorer.score(reference.texts, options.seed, real_asked)})
    rows.append({"name": run.id, "kind": "samples", "perplexity": ppl,
                 **scorer.score(samples.texts, options.seed, asked)})
    if unigram is not None:
        rows.append({"name": "unigram baseline", "kind": "baseline", "n": None, "perplexity": unigram})
    timings["metrics_s"] = round(time.perf_counter() - t0, 2)
    return Scored(n, rows, sections, warnings, timings, samples, reference)


def heldout_rows(run: Run, dataset: Dataset) -> tuple[str, pd.DataFrame]:
    """(split, rows) of the reference row: the run's val split, else val, else test; "" when all are empty."""
    for split in dict.fromkeys((run.config.data.val_split, "val", "test")):
        rows = dataset.frame(split)
        if len(rows):
            return split, rows
    return "", rows


def _score_tables(run: Run, dataset: Dataset, options: EvalOptions) -> Scored:
    """The quality score, distance to the closest training record and exact copies of the samples and of
    the real held-out rows, against the train split; ML efficacy of the samples."""
    if options.fid:
        raise ConfigError("standard FID is an image figure; evaluate a table run without --fid")
    split, real = heldout_rows(run, dataset)
    reference = TableReference.for_dataset(dataset, run.config.data.train_split, split)
    n = options.n or _default_n(len(reference.train), "table")
    keep = np.sort(np.random.default_rng(options.seed).permutation(len(real))[:n])  # a seeded subset when n is smaller
    warnings = [] if split else [_no_heldout_warning(dataset, "rows")]
    if 0 < len(keep) < n:
        warnings.append(f"the reference row has {len(keep)} real rows against {n} samples: the quality score of a "
                        "smaller set is lower by chance alone (its KS and TV distances are larger), so read it with care")
    if reference.unavailable:
        warnings.append(f"ML efficacy not measured: {reference.unavailable}")

    t0 = time.perf_counter()
    samples = run.sample(SampleRequest.make(n, options.seed, options=options.sample), options.batch_size)
    sampling_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, details = [], {}
    if split:
        name = f"real held-out ({split})"
        row, details[name] = reference.score(real.iloc[keep], options.seed, utility=False)
        rows.append({"name": name, "kind": "reference", **row})
    row, details[run.id] = reference.score(samples.frame, options.seed)
    rows.append({"name": run.id, "kind": "samples", **row})
    ml = ({"available": False, "reason": reference.unavailable} if reference.unavailable else
          {"available": True, "target": reference.target, **details[run.id]["ml_efficacy"],
           "train_rows": len(reference.train), "test_split": split, "test_rows": len(reference.test)})
    return Scored(n, rows, {"columns": reference.columns(), "ml_efficacy": ml, "quality": details}, warnings,
                  {"sampling_s": round(sampling_s, 2), "metrics_s": round(time.perf_counter() - t0, 2)}, samples)


SCORERS: dict[str, Callable[[Run, Dataset, EvalOptions], Scored]] = {"image": _score_images, "text": _score_texts,
                                                                      "table": _score_tables}


def _save_samples(eval_dir: Path, scored: Scored) -> None:
    """Kept beside metrics.json, so `compare` shows the very samples (and real texts) that were scored."""
    s = scored.samples
    if isinstance(s, ImageSamples):
        labels = np.asarray(s.labels if s.labels is not None else [-1] * len(s), dtype=np.int64)
        atomic_write_with(eval_dir / "samples.safetensors",
                          lambda p: save_file({"images": s.images, "labels": labels}, p))
    elif isinstance(s, TableSamples):
        write_table(s, eval_dir / "samples.csv", {})
    else:
        write_texts(s, eval_dir, {})
        write_texts(scored.reference, eval_dir / "reference", {})


def _read_texts(path: Path) -> TextSamples:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [r["prompt"] for r in records] if records and "prompt" in records[0] else None
    return TextSamples([r["text"] for r in records], prompts)


def _saved_samples(run: Run, kind: str) -> tuple[ImageSamples | TextSamples | TableSamples, TextSamples | None]:
    eval_dir = run.path / "eval"
    if kind == "text":
        return _read_texts(eval_dir / "samples.jsonl"), _read_texts(eval_dir / "reference" / "samples.jsonl")
    if kind == "table":
        return TableSamples(pd.read_csv(eval_dir / "samples.csv")), None
    saved = load_file(str(eval_dir / "samples.safetensors"))
    labels = saved["labels"]
    return ImageSamples(saved["images"], None if (labels < 0).all() else tuple(labels.tolist())), None


def _scorer(run: Run, dataset: Dataset) -> Callable[[Run, Dataset, EvalOptions], Scored]:
    if dataset.kind not in SCORERS:
        raise ModelError(f"run {run.id} was trained on {dataset.kind} data; `genforge evaluate` scores "
                         f"{', '.join(SCORERS)} runs")
    return SCORERS[dataset.kind]


def _keep_human_figures(path: Path, metrics: dict[str, Any]) -> None:
    """A new evaluation of the same checkpoint keeps the human.* figures `genforge review record` wrote there:
    sampling again re-measures the automatic metrics, not what people said."""
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if old.get("checkpoint") != metrics["checkpoint"]:
        return
    human = {k: v for row in old.get("rows", []) if row.get("kind") == "samples"
             for k, v in row.items() if k.startswith("human.")}
    for row in metrics["rows"]:
        if row.get("kind") == "samples":
            row.update(human)


def evaluate_run(ref: str, options: EvalOptions = EvalOptions()) -> Path:
    """Sample from a run, score the samples and the real held-out data, write eval/. Returns the report path."""
    options.check()
    t_start = time.perf_counter()
    run = load_run(ref)
    dataset = open_dataset(run.dataset_ref)
    scored = _scorer(run, dataset)(run, dataset, options)
    eval_dir = run.path / "eval"
    _save_samples(eval_dir, scored)
    metrics = {
        "format": FORMAT, "kind": dataset.kind, "run": run.id, "dataset": dataset.ref,
        "checkpoint": run.checkpoint().path.name, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {**asdict(options), "n": scored.n},
        **scored.sections,
        "rows": scored.rows,
        "warnings": scored.warnings + [f"training: {w}" for w in run.info.get("warnings", [])],  # the family's health checks
        "training": _training_timings(run),
        "timings": {**scored.timings, "total_s": round(time.perf_counter() - t_start, 2)},
        "human_review": reviews_of([run.id]),
    }
    _keep_human_figures(eval_dir / "metrics.json", metrics)
    atomic_write_json(eval_dir / "metrics.json", metrics)
    report = eval_dir / "report.html"
    atomic_write_text(report, render_report([ReportEntry(run, metrics, scored.samples, scored.reference)], dataset,
                                            scored.rows, metrics["human_review"]))
    track_evaluation(run.path, lambda msg: print(f"warning: {msg}", file=sys.stderr))
    return report


def _default_count(run: Run, dataset: Dataset) -> int:
    """What n defaults to before MAX_DEFAULT_N caps it: the held-out images or texts; a table's train rows
    (samples as many as the rows a model is fit on: ML efficacy trains on them)."""
    if dataset.kind == "table":
        return len(dataset.frame(run.config.data.train_split))
    if dataset.kind == "text":
        return len(heldout_texts(run, dataset)[2])
    return len(heldout(dataset, run.config.data.val_split)[1])


def compare_runs(refs: list[str], options: EvalOptions = EvalOptions(), out: Path | None = None) -> Path:
    """One table and report across runs of one kind, every run (and the reference row) scored at one n and seed.

    A stored evaluation is reused only when its `evaluation_key` matches; otherwise the run is
    evaluated again. n defaults to evaluate's default, the smallest over the runs' datasets.
    """
    options.check()
    if len(refs) < 2:
        raise ConfigError(f"compare needs at least 2 runs, got {len(refs)}")
    runs = [load_run(ref) for ref in refs]
    datasets = [open_dataset(r.dataset_ref) for r in runs]
    kinds = sorted({d.kind for d in datasets})
    if len(kinds) > 1:
        raise ConfigError(f"compare needs runs of one kind of data, got {' and '.join(kinds)} runs")
    if options.n is None:
        options = replace(options, n=min(_default_n(_default_count(r, d), d.kind) for r, d in zip(runs, datasets)))
    entries = []
    for run, dataset in zip(runs, datasets):
        path = run.path / "eval" / "metrics.json"
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if (metrics is None or metrics.get("format") != FORMAT
                or evaluation_key(metrics["checkpoint"], metrics["options"])
                != evaluation_key(run.checkpoint().path.name, asdict(options))
                or (options.fid and not metrics.get("standard_fid", {}).get("available"))  # FID asked for, not measured then
                or (dataset.kind == "text" and "label_agreement" not in metrics
                    and _class_prompts(run, dataset) is not None)):  # evaluated before label agreement was measured
            evaluate_run(str(run.path), options)
            metrics = json.loads(path.read_text(encoding="utf-8"))
        entries.append(ReportEntry(run, metrics, *_saved_samples(run, kinds[0])))
    dataset_refs = {e.metrics["dataset"] for e in entries}
    # one shared reference row when every run was scored on the same dataset version
    table = _compare_table(entries, shared_reference=len(dataset_refs) == 1)
    out = out or home() / "reports" / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    warnings = [f"{e.run.id}: {w}" for e in entries for w in e.metrics["warnings"]]
    reviews = reviews_of([e.run.id for e in entries])
    atomic_write_json(out / "metrics.json", {"format": COMPARE_FORMAT, "kind": kinds[0],
                                             "runs": [e.run.id for e in entries], "datasets": sorted(dataset_refs),
                                             "options": asdict(options), "rows": table, "warnings": warnings,
                                             "human_review": reviews})
    report = out / "report.html"
    shared = open_dataset(next(iter(dataset_refs))) if len(dataset_refs) == 1 else None
    atomic_write_text(report, render_report(entries, shared, table, reviews))
    return report


def _compare_table(entries: list[ReportEntry], shared_reference: bool) -> list[dict]:
    """Each run's rows; the reference row once when shared, and each run's own baseline (its tokenizer's) named."""
    rows = []
    for i, e in enumerate(entries):
        for r in e.metrics["rows"]:
            if r["kind"] == "reference" and shared_reference and i > 0:
                continue
            name = r["name"]
            if r["kind"] == "baseline":
                name = f"{name} [{e.run.id}]"
            elif r["kind"] == "reference" and not shared_reference:
                name = f"{name} [{e.metrics['dataset']}]"
            rows.append({**r, "name": name})
    return rows
