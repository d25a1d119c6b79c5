"""The evaluate stage: score a run's samples against its dataset, always beside real held-out images.

`evaluate_run` writes `runs/<id>/eval/` (metrics.json, samples.safetensors, report.html);
`compare_runs` puts several runs in one table and report, all scored at one n. `ImageReference.score`
is the piece the registry and the service reuse on arrays: every figure of one image set, against one
dataset. Figures from genforge's evaluator network are keyed `evaluator_*`, so none of them reads as
the standard figure of the same name; `fid` is the standard Inception FID.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from genforge.data.store import Dataset, open_dataset
from genforge.errors import ConfigError, ModelError
from genforge.evaluation import fid, image
from genforge.evaluation.evaluator import Evaluator, EvaluatorConfig, load_or_train_evaluator
from genforge.evaluation.report import ReportEntry, render_report
from genforge.models import SampleRequest
from genforge.runs import Run, load_run
from genforge.workspace import atomic_write_json, atomic_write_text, atomic_write_with, home

FORMAT = "genforge-eval/2"  # 2: evaluator figures renamed evaluator_*, options are the reuse key
COMPARE_FORMAT = "genforge-compare/1"
MAX_DEFAULT_N = 1000


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


@dataclass(frozen=True)
class EvalOptions:
    n: int | None = None          # samples; default: the held-out split's size, at most 1000
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


def _default_n(heldout_images: int) -> int:
    """n when none is given: the whole held-out split, at most MAX_DEFAULT_N (sampling is the slow part)."""
    return min(heldout_images or MAX_DEFAULT_N, MAX_DEFAULT_N)


def _heldout(dataset: Dataset, split: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The real images of the reference row: the run's val split, else the test split."""
    for name in dict.fromkeys((split, "val", "test")):
        images, labels = dataset.images(name)
        if len(images):
            return name, images, labels
    return "", images, labels


def _no_heldout_warning(dataset: Dataset) -> str:
    return (f"dataset {dataset.ref} has no held-out images (its val and test splits are empty), so there is no "
            "real reference row and the figures cannot be read against real images: ingest it again with a "
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


def evaluate_run(ref: str, options: EvalOptions = EvalOptions()) -> Path:
    """Sample from a run, score the samples and the real held-out images, write eval/. Returns the report path."""
    options.check()
    t_start = time.perf_counter()
    run = load_run(ref)
    dataset = open_dataset(run.dataset_ref)
    if dataset.kind != "image":
        raise ModelError(f"run {run.id} was trained on {dataset.kind} data; `genforge evaluate` scores image runs for now")
    t0 = time.perf_counter()
    reference = ImageReference.for_dataset(dataset)
    evaluator_s = time.perf_counter() - t0

    split, real, real_labels = _heldout(dataset, run.config.data.val_split)
    n = options.n or _default_n(len(real))
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
    rows = [{**r, "fid": fid_scores.get(r["name"])} for r, _ in scored]

    sample_labels = requested if k else np.full(n, -1)
    eval_dir = run.path / "eval"
    atomic_write_with(eval_dir / "samples.safetensors",
                      lambda p: save_file({"images": samples, "labels": sample_labels.astype(np.int64)}, p))
    metrics = {
        "format": FORMAT, "run": run.id, "dataset": dataset.ref, "checkpoint": run.checkpoint().path.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {**asdict(options), "n": n},
        "evaluator": reference.evaluator.meta if reference.evaluator else {"available": False, "reason": reference.unavailable},
        "standard_fid": fid_info,
        "rows": rows,
        "warnings": ([] if len(real) else [_no_heldout_warning(dataset)])
                    + [f"training: {w}" for w in run.info.get("warnings", [])],  # the family's health checks
        "training": _training_timings(run),
        "timings": {"evaluator_s": round(evaluator_s, 2), "sampling_s": round(sampling_s, 2), "metrics_s": round(metrics_s, 2),
                    "fid_s": fid_info.get("seconds"), "total_s": round(time.perf_counter() - t_start, 2)},
    }
    atomic_write_json(eval_dir / "metrics.json", metrics)
    report = eval_dir / "report.html"
    atomic_write_text(report, render_report([ReportEntry(run, metrics, samples, sample_labels)], dataset, rows))
    return report


def compare_runs(refs: list[str], options: EvalOptions = EvalOptions(), out: Path | None = None) -> Path:
    """One table and report across runs, every run (and the reference row) scored at one n.

    A stored evaluation is reused only when its `evaluation_key` matches; otherwise the run is
    evaluated again. n defaults to evaluate's default, the smallest over the runs' datasets.
    """
    options.check()
    if len(refs) < 2:
        raise ConfigError(f"compare needs at least 2 runs, got {len(refs)}")
    runs = [load_run(ref) for ref in refs]
    if options.n is None:
        heldout = [len(_heldout(open_dataset(r.dataset_ref), r.config.data.val_split)[1]) for r in runs]
        options = replace(options, n=min(map(_default_n, heldout)))
    entries = []
    for run in runs:
        path = run.path / "eval" / "metrics.json"
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if (metrics is None or metrics.get("format") != FORMAT
                or evaluation_key(metrics["checkpoint"], metrics["options"])
                != evaluation_key(run.checkpoint().path.name, asdict(options))
                or (options.fid and not metrics["standard_fid"]["available"])):  # FID asked for, not measured then
            evaluate_run(str(run.path), options)
            metrics = json.loads(path.read_text(encoding="utf-8"))
        saved = load_file(str(run.path / "eval" / "samples.safetensors"))
        entries.append(ReportEntry(run, metrics, saved["images"], saved["labels"]))
    datasets = {e.metrics["dataset"] for e in entries}
    # one shared reference row when every run was scored on the same dataset version
    table = _compare_table(entries, shared_reference=len(datasets) == 1)
    out = out or home() / "reports" / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    warnings = [f"{e.run.id}: {w}" for e in entries for w in e.metrics["warnings"]]
    atomic_write_json(out / "metrics.json", {"format": COMPARE_FORMAT, "runs": [e.run.id for e in entries],
                                             "datasets": sorted(datasets), "options": asdict(options),
                                             "rows": table, "warnings": warnings})
    report = out / "report.html"
    atomic_write_text(report, render_report(entries, open_dataset(next(iter(datasets))) if len(datasets) == 1 else None,
                                            rows=table))
    return report


def _compare_table(entries: list[ReportEntry], shared_reference: bool) -> list[dict]:
    rows = []
    for i, e in enumerate(entries):
        for r in e.metrics["rows"]:
            if r["kind"] == "reference" and shared_reference and i > 0:
                continue
            name = r["name"] if shared_reference or r["kind"] != "reference" else f"{r['name']} [{e.metrics['dataset']}]"
            rows.append({**r, "name": name})
    return rows
