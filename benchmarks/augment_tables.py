"""Augmentation demo: does adding genforge's synthetic rows to a small real sample help a classifier?

    .venv/bin/python benchmarks/augment_tables.py --write     # 3 tables x 3 sizes x 5 draws, ~5 min on 2 cores
    .venv/bin/python benchmarks/augment_tables.py --quick     # every code path in about a minute; figures mean nothing

Three real tables shipped inside installed packages: palmerpenguins' penguins (344 rows, target
`species`, missing values), scikit-learn's breast cancer (569 rows, 30 numbers, target `diagnosis`)
and scikit-learn's wine (178 rows, 13 numbers, target `cultivar`, 3 classes). Per table:

1. A held-out test split (`--holdout`, 30%, stratified by the target, seed 0) that nothing but the
   final scoring ever sees: no generator, no classifier, no preprocessing fit.
2. From the rest, a small real sample of n rows (`--sizes`, 20, 50 and 100), stratified by the target,
   drawn afresh for each of `--seeds` draws (5). Everything below is repeated per draw, seeded by it.
3. Each genforge table family (copula, tvae, ctgan) is trained on that sample alone, through the
   Python API as a user would: `genforge.api.ingest` of the sample (kind table, the table's
   categorical columns declared, every row kept in train: split val = test = 0, no duplicate
   dropping, the size gate off since the sample is small on purpose) into a temporary GENFORGE_HOME
   with tracking off, then `train` and `generate`. Training settings are the family's shipped
   `configs/<family>-penguins.yaml` (the reference implementations' optimizers, constant LR, no
   clipping, no EMA, fp32), with the budget of those configs: 300 steps for ctgan and tvae (one step
   per epoch there, 300 epochs), one for the copula; the batch is the whole sample (n is a multiple of
   ctgan's pac of 10, so no row is dropped). The copula's and the configs' `rules` (penguin body mass
   ranges) are left out: the demo uses no table-specific knowledge.
4. max(`--multipliers`) x n synthetic rows are generated (seeded by the draw); genforge seeds each row
   on its own, so the first 1 x n of them are exactly what a 1 x n request returns.
5. The same classifier, with the same seed, is trained on: the real sample alone; the real sample plus
   m x n synthetic rows; the m x n synthetic rows alone. Each is scored on the held-out real rows:
   accuracy and macro F1. Two classifiers: a random forest (100 trees, seeded) and a logistic
   regression (standard scaling, C = 1); both one-hot encode categories (missing as a category of its
   own) and median-impute numbers, fitted on their training rows only.

Reported per cell: mean and standard deviation over the draws, and the paired difference
(augmented or synthetic-only minus real-only, same draw, same classifier seed) with a 95% t
interval over the draws. The interval covers the variation between draws (sample, generator and
classifier seeds); the test rows are fixed, so it does not cover the test set's own sampling error.
A cell "helps" when the interval of its accuracy difference lies above 0, "hurts" when below.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
OUT = ROOT / "out" / "augment_tables"
TABLES = ("penguins", "breast_cancer", "wine")
FAMILIES = ("copula", "tvae", "ctgan")
CLASSIFIERS = ("rf", "logreg")
CATEGORICAL = {"penguins": ["species", "island", "sex"], "breast_cancer": ["diagnosis"], "wine": ["cultivar"]}
TARGET = {"penguins": "species", "breast_cancer": "diagnosis", "wine": "cultivar"}
MISSING = "<missing>"
# what this script sets in the run config; the rest of `train:` and `model:` comes from the shipped config
OWN_TRAIN_KEYS = {"steps", "epochs", "minutes", "batch_size", "seed", "threads", "val_every", "val_items",
                  "checkpoint_every", "keep_checkpoints", "log_every", "init_from"}


# --- the tables --------------------------------------------------------------------------------------

def load_table(name: str) -> pd.DataFrame:
    """The table with plain dtypes: categorical columns as Python strings (None when missing), numbers float64."""
    if name == "penguins":
        from palmerpenguins import load_penguins
        frame = load_penguins()
    else:
        from sklearn.datasets import load_breast_cancer, load_wine
        data = (load_breast_cancer if name == "breast_cancer" else load_wine)(as_frame=True)
        frame = data.frame.rename(columns={"target": TARGET[name]})
        names = [str(n) for n in data.target_names]
        frame[TARGET[name]] = [names[i] for i in frame[TARGET[name]]]
    cats = CATEGORICAL[name]
    for c in frame.columns:
        frame[c] = frame[c].astype(object).where(frame[c].notna(), None) if c in cats else frame[c].astype("float64")
    return frame.dropna(subset=[TARGET[name]]).reset_index(drop=True)


def shipped_settings(family: str) -> dict[str, Any]:
    """`model:` and `train:` of configs/<family>-penguins.yaml, less the family, its table-specific rules
    and what this script sets itself (budget, batch, seed, validation, checkpoints)."""
    import yaml
    path = REPO / "configs" / f"{family}-penguins.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {"path": str(path.relative_to(REPO)),
            "model": {k: v for k, v in data.get("model", {}).items() if k not in ("family", "rules")},
            "train": {k: v for k, v in data.get("train", {}).items() if k not in OWN_TRAIN_KEYS}}


# --- genforge: ingest the sample, train, generate ----------------------------------------------------

def synthesize(sample: pd.DataFrame, table: str, family: str, n_rows: int, seed: int, args: argparse.Namespace,
               home: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train `family` on the real `sample` alone and return n_rows synthetic rows (and timings)."""
    from rich.console import Console

    from genforge import api

    cats = CATEGORICAL[table]
    dataset = f"{table.replace('_', '-')}-n{len(sample)}-draw{seed}"
    source = home / f"{dataset}.parquet"
    t = time.perf_counter()
    if not source.exists():  # one ingest per draw, shared by the families
        sample.to_parquet(source, index=False)
        api.ingest(str(source), dataset,
                   {"kind": "table",
                    "table": {"types": {c: "categorical" if c in cats else "numeric" for c in sample.columns},
                              "drop_duplicate_rows": False},
                    "split": {"val": 0.0, "test": 0.0, "seed": seed},
                    "gate": {"min_examples": None, "min_per_class": None}})
    ingest_s = time.perf_counter() - t
    steps = 1 if family == "copula" else args.steps
    shipped = shipped_settings(family)
    config = {"name": f"augment-{dataset}-{family}", "data": {"dataset": dataset, "val_split": "train"},
              "model": {**shipped["model"], "family": family},
              "train": {**shipped["train"], "steps": steps, "batch_size": len(sample), "seed": seed,
                        "threads": args.threads, "val_every": 0, "checkpoint_every": steps, "log_every": steps}}
    t = time.perf_counter()
    run = api.train(config, console=Console(stderr=True, quiet=True))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = api.generate(run.id, n_rows, seed=seed, batch_size=n_rows, out=home / "samples" / run.id).samples.frame
    generate_s = time.perf_counter() - t
    if not args.keep:
        shutil.rmtree(run.path, ignore_errors=True)
    return rows, {"ingest_s": ingest_s, "train_s": train_s, "generate_s": generate_s, "steps": steps,
                  "config_from": shipped["path"]}


# --- the classifiers ---------------------------------------------------------------------------------

def plain(frame: pd.DataFrame, columns: list[str], cats: list[str], target: str) -> pd.DataFrame:
    """Categories as strings (missing: a category of its own), numbers float64; rows without a target dropped."""
    frame = frame[columns].copy()
    for c in columns:
        if c in cats:
            frame[c] = [MISSING if pd.isna(v) else str(v) for v in frame[c].astype(object)]
        else:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    return frame[frame[target] != MISSING].reset_index(drop=True)


def classifier(kind: str, xcats: list[str], nums: list[str], seed: int):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    if kind == "rf":
        encode = ColumnTransformer([("cat", onehot, xcats),
                                    ("num", SimpleImputer(strategy="median", keep_empty_features=True), nums)])
        return make_pipeline(encode, RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1))
    encode = ColumnTransformer([("cat", onehot, xcats),
                                ("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                                      StandardScaler()), nums)])
    return make_pipeline(encode, LogisticRegression(C=1.0, max_iter=5000))


def score(kind: str, train: pd.DataFrame, test: pd.DataFrame, cats: list[str], target: str, seed: int) -> dict[str, float]:
    """Accuracy and macro F1 on the real `test` rows of classifier `kind` trained on `train`."""
    from sklearn.metrics import accuracy_score, f1_score

    xcats = [c for c in cats if c != target]
    nums = [c for c in train.columns if c not in cats]
    y_test = test[target].to_numpy()
    if train[target].nunique() < 2:  # one class only: a classifier can only predict it
        pred = np.full(len(test), train[target].iloc[0], dtype=object)
    else:
        model = classifier(kind, xcats, nums, seed).fit(train.drop(columns=[target]), train[target])
        pred = model.predict(test.drop(columns=[target]))
    return {"accuracy": float(accuracy_score(y_test, pred)),
            "macro_f1": float(f1_score(y_test, pred, average="macro", labels=sorted(set(y_test)), zero_division=0))}


# --- one table ---------------------------------------------------------------------------------------

def run_table(table: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    frame = load_table(table)
    cats, target, columns = CATEGORICAL[table], TARGET[table], list(frame.columns)
    pool, test = train_test_split(frame, test_size=args.holdout, stratify=frame[target], random_state=0)
    pool, test_plain = pool.reset_index(drop=True), plain(test, columns, cats, target)
    out: dict[str, Any] = {"rows": len(frame), "pool_rows": len(pool), "test_rows": len(test_plain),
                           "columns": columns, "categorical": cats, "target": target,
                           "classes": {str(k): int(v) for k, v in frame[target].value_counts().sort_index().items()},
                           "missing_cells": int(frame.isna().sum().sum()), "sizes": {}}
    top = max(args.multipliers)
    for n in args.sizes:
        if n > len(pool):
            raise SystemExit(f"--sizes: {n} rows asked of {table}, whose non-held-out rows are {len(pool)}")
        draws = []
        for seed in range(args.seeds):
            sample, _ = train_test_split(pool, train_size=n, stratify=pool[target], random_state=1000 + seed)
            sample = sample.reset_index(drop=True)
            real = plain(sample, columns, cats, target)
            sets: dict[str, pd.DataFrame] = {"real": real}
            timing, synth_classes = {}, {}
            for family in args.families:
                rows, info = synthesize(sample, table, family, top * n, seed, args, home)
                timing[family] = info
                synth = plain(rows, columns, cats, target)
                synth_classes[family] = {str(k): int(v) for k, v in synth[target].value_counts().sort_index().items()}
                timing[family]["target_missing_rows"] = top * n - len(synth)
                for m in args.multipliers:
                    part = synth.iloc[:m * n]
                    sets[f"real+{family} {m}x"] = pd.concat([real, part], ignore_index=True)
                    sets[f"{family} only {m}x"] = part
            t = time.perf_counter()
            scores = {kind: {name: score(kind, rows, test_plain, cats, target, seed) for name, rows in sets.items()}
                      for kind in args.classifiers}
            draws.append({"seed": seed, "sample_classes": {str(k): int(v) for k, v in
                                                           real[target].value_counts().sort_index().items()},
                          "synthetic_classes": synth_classes, "timing": timing,
                          "classify_s": time.perf_counter() - t, "scores": scores})
            genforge_s = sum(v["ingest_s"] + v["train_s"] + v["generate_s"] for v in timing.values())
            real_acc = ", ".join(f"{k} {scores[k]['real']['accuracy']:.3f}" for k in args.classifiers)
            print(f"  {table} n={n} draw {seed}: genforge {genforge_s:.1f} s, classifiers "
                  f"{draws[-1]['classify_s']:.1f} s; real-only accuracy {real_acc}; load {os.getloadavg()[0]:.2f}",
                  flush=True)
        out["sizes"][str(n)] = {"draws": draws, "summary": summarize(draws, args)}
    return out


def summarize(draws: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Mean and std over draws per cell; paired differences against real-only with a 95% t interval."""
    from scipy.stats import t as student

    k = len(draws)
    quantile = float(student.ppf(0.975, k - 1)) if k > 1 else float("nan")
    out: dict[str, Any] = {}
    for kind in args.classifiers:
        out[kind] = {}
        for name in draws[0]["scores"][kind]:
            cell: dict[str, Any] = {}
            for metric in ("accuracy", "macro_f1"):
                values = np.array([d["scores"][kind][name][metric] for d in draws])
                diffs = values - np.array([d["scores"][kind]["real"][metric] for d in draws])
                sd = float(values.std(ddof=1)) if k > 1 else 0.0
                half = float(quantile * diffs.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
                cell[metric] = {"mean": float(values.mean()), "std": sd}
                if name != "real":
                    mean = float(diffs.mean())
                    cell[metric]["diff"] = {"mean": mean, "ci95": [mean - half, mean + half],
                                            "wins": int((diffs > 0).sum()), "losses": int((diffs < 0).sum())}
            if name != "real":
                low, high = cell["accuracy"]["diff"]["ci95"]
                cell["verdict"] = "helps" if low > 0 else "hurts" if high < 0 else "no clear difference"
            out[kind][name] = cell
    return out


# --- report ------------------------------------------------------------------------------------------

def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in os.popen("lscpu").read().splitlines()
                  if line.startswith("Model name")), platform.processor() or "?")
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": model, "cores": os.cpu_count(),
            "torch_threads": args.threads, "versions": {p: version(p) for p in
                                                        ("genforge", "torch", "scikit-learn", "pandas", "numpy", "palmerpenguins")},
            "git": git + ("+dirty" if dirty else ""), "load_before": os.getloadavg()}


def signed(x: float) -> str:
    return f"{x:+.3f}"


def cell_text(cell: dict[str, Any], metric: str) -> str:
    return f"{cell[metric]['mean']:.3f} ± {cell[metric]['std']:.3f}"


def diff_text(cell: dict[str, Any], metric: str) -> str:
    if "diff" not in cell[metric]:
        return "-"
    d = cell[metric]["diff"]
    low, high = d["ci95"]
    return f"{signed(d['mean'])} [{signed(low)}, {signed(high)}]"


def table_lines(name: str, t: dict[str, Any], args: argparse.Namespace) -> list[str]:
    classes = ", ".join(f"{k} {v}" for k, v in t["classes"].items())
    lines = [f"### {name}", "",
             f"{t['rows']} rows ({classes}), {len(t['columns'])} columns, {t['missing_cells']} missing cells; "
             f"target `{t['target']}`; {t['test_rows']} held-out test rows, samples drawn from the other {t['pool_rows']}.", ""]
    names = {"rf": "random forest", "logreg": "logistic regression"}
    for kind in args.classifiers:
        lines += [f"{names[kind]}: mean ± std over {args.seeds} draws; Δ = this row minus real only, same draw, "
                  "mean [95% t interval]", "",
                  "| n | training rows | accuracy | Δ accuracy | macro F1 | Δ macro F1 | verdict |",
                  "|---:|---|---:|---:|---:|---:|---|"]
        for n, block in t["sizes"].items():
            for row, cell in block["summary"][kind].items():
                label = "real only" if row == "real" else row
                lines.append(f"| {n} | {label} | {cell_text(cell, 'accuracy')} | {diff_text(cell, 'accuracy')} | "
                             f"{cell_text(cell, 'macro_f1')} | {diff_text(cell, 'macro_f1')} | {cell.get('verdict', '')} |")
        lines.append("")
    return lines


def overview(tables: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Per table and size: real-only accuracy, and the best augmented and best synthetic-only cells (accuracy)."""
    lines = ["### Overview (accuracy; Δ against real only, mean [95% interval]; best cell of each kind)", "",
             "| table | n | classifier | real only | best real + synthetic | Δ | best synthetic only | Δ |",
             "|---|---:|---|---:|---|---:|---|---:|"]
    for name, t in tables.items():
        for n, block in t["sizes"].items():
            for kind in args.classifiers:
                cells = block["summary"][kind]
                row = [name, n, kind, f"{cells['real']['accuracy']['mean']:.3f}"]
                for prefix in ("real+", "only"):
                    chosen = {k: c for k, c in cells.items() if (k.startswith(prefix) if prefix == "real+" else prefix in k)}
                    best = max(chosen, key=lambda k: chosen[k]["accuracy"]["mean"])
                    row += [f"{best} ({chosen[best]['accuracy']['mean']:.3f})", diff_text(chosen[best], "accuracy")]
                lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def compact(value: Any) -> Any:
    """Floats rounded to 4 decimals for the results json (scores are on 50-171 test rows; more digits say nothing)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value]
    return value


def findings(tables: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Counts of augmented cells that help, hurt or are unclear, per classifier, and the cells that help."""
    lines = ["### Summary (augmented rows only: real + synthetic against real alone, accuracy, 95% interval)", ""]
    for kind in args.classifiers:
        counts = {"helps": [], "hurts": [], "no clear difference": []}
        for name, t in tables.items():
            for n, block in t["sizes"].items():
                for row, cell in block["summary"][kind].items():
                    if row.startswith("real+"):
                        d = cell["accuracy"]["diff"]["mean"]
                        counts[cell["verdict"]].append(f"{name} n={n} {row[5:]} ({signed(d)})")
        total = sum(len(v) for v in counts.values())
        lines.append(f"- {kind}: of {total} cells, {len(counts['helps'])} help, {len(counts['hurts'])} hurt, "
                     f"{len(counts['no clear difference'])} show no clear difference.")
        for verdict in ("helps", "hurts"):
            if counts[verdict]:
                lines.append(f"  - {verdict}: " + "; ".join(counts[verdict]))
    return lines + [""]


def timing_lines(tables: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = ["### Time", "", "genforge seconds per draw (ingest + train + generate), mean over draws:", "",
             "| table | n | " + " | ".join(args.families) + " | classifiers |",
             "|---|---:|" + "---:|" * (len(args.families) + 1)]
    for name, t in tables.items():
        for n, block in t["sizes"].items():
            draws = block["draws"]
            per = [np.mean([sum(d["timing"][f][k] for k in ("ingest_s", "train_s", "generate_s")) for d in draws])
                   for f in args.families]
            lines.append(f"| {name} | {n} | " + " | ".join(f"{x:.1f}" for x in per) +
                         f" | {np.mean([d['classify_s'] for d in draws]):.1f} |")
    return lines + [""]


def report(info: dict[str, Any], tables: dict[str, Any], args: argparse.Namespace) -> str:
    v = info["versions"]
    lines = [f"## Augmentation demo, {info['date']}", "",
             f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/augment_tables.py', *sys.argv[1:]])}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}; load before "
             f"{', '.join(f'{x:.2f}' for x in info['load_before'])}, after {', '.join(f'{x:.2f}' for x in info['load_after'])}; "
             f"wall {info['wall_s'] / 60:.1f} min. genforge {v['genforge']} (git {info['git']}), torch {v['torch']}, "
             f"scikit-learn {v['scikit-learn']}, pandas {v['pandas']}, numpy {v['numpy']}, palmerpenguins {v['palmerpenguins']}.", "",
             f"Sizes {', '.join(map(str, args.sizes))}; {args.seeds} draws; synthetic rows {', '.join(f'{m}x' for m in args.multipliers)} "
             f"the sample; families {', '.join(args.families)} ({args.steps} steps for ctgan/tvae at batch = n, 1 for the "
             f"copula; the rest of the shipped configs); held-out {args.holdout:.0%}.", ""]
    lines += findings(tables, args)
    lines += overview(tables, args)
    for name, t in tables.items():
        lines += table_lines(name, t, args)
    lines += timing_lines(tables, args)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated: {', '.join(TABLES)}")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated: {', '.join(FAMILIES)}")
    p.add_argument("--classifiers", default=",".join(CLASSIFIERS), help="comma-separated: rf, logreg")
    p.add_argument("--sizes", default="20,50,100", help="real sample sizes, multiples of 10 (ctgan's pac)")
    p.add_argument("--multipliers", default="1,5", help="synthetic rows as multiples of the sample size")
    p.add_argument("--seeds", type=int, default=None, help="draws of the small sample (5; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="ctgan/tvae training steps at batch = n (300; 20 with --quick)")
    p.add_argument("--holdout", type=float, default=0.3, help="share of each table held out for testing")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--keep", action="store_true", help="keep the genforge workspace (printed) and its runs")
    p.add_argument("--quick", action="store_true", help="2 draws, 20 steps, n = 50: every code path; the figures mean nothing")
    p.add_argument("--write", action="store_true",
                   help="write results/augment_tables-<tag>.md and .json (not with --quick)")
    p.add_argument("--json", default=None, help="file name under benchmarks/out/augment_tables/ for this run's json (last.json)")
    p.add_argument("--tag", default=None, help="results file tag (default: today's date, YYYY-MM-DD)")
    args = p.parse_args()

    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    args.tables, args.families, args.classifiers = split(args.tables), split(args.families), split(args.classifiers)
    for option, values, known in (("--tables", args.tables, TABLES), ("--families", args.families, FAMILIES),
                                  ("--classifiers", args.classifiers, CLASSIFIERS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            p.error(f"{option}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    args.sizes = [int(x) for x in split("50" if args.quick else args.sizes)]
    args.multipliers = [int(x) for x in split(args.multipliers)]
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.steps = args.steps or (20 if args.quick else 300)
    bad = [n for n in args.sizes if n < 10 or n % 10]
    if bad:
        p.error(f"--sizes must be multiples of 10 (ctgan's pac), at least 10, got {', '.join(map(str, bad))}")
    if not args.multipliers or min(args.multipliers) < 1:
        p.error(f"--multipliers must be whole numbers of at least 1, got {args.multipliers}")
    if args.seeds < 2:
        p.error(f"--seeds must be at least 2 for an interval, got {args.seeds}")
    if args.write and args.quick:
        p.error("--write records full runs only; drop --quick")

    # a workspace of its own, set before genforge is imported (it reads GENFORGE_HOME)
    home = Path(tempfile.mkdtemp(prefix="genforge-augment-"))
    os.environ["GENFORGE_HOME"], os.environ["GENFORGE_TRACKING"] = str(home), "off"
    sys.path.insert(0, str(REPO))
    import torch
    torch.set_num_threads(args.threads)

    info = machine_info(args)
    print(f"{info['cpu']}, {info['cores']} cores; load {info['load_before'][0]:.2f}; git {info['git']}; "
          f"workspace {home}", flush=True)
    t0 = time.perf_counter()
    try:
        tables = {name: run_table(name, args, home) for name in args.tables}
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    info["wall_s"], info["load_after"] = time.perf_counter() - t0, os.getloadavg()
    text = report(info, tables, args)
    print("\n" + text)
    payload = {"info": info, "args": {k: v for k, v in vars(args).items() if k != "write"}, "tables": tables}
    OUT.mkdir(parents=True, exist_ok=True)
    last = OUT / (args.json or "last.json")
    last.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    print(f"\njson: {last.relative_to(REPO)}")
    if args.write:
        from genforge.workspace import atomic_write_text
        tag = args.tag or datetime.now(timezone.utc).strftime("%Y-%m-%d")
        md, js = RESULTS / f"augment_tables-{tag}.md", RESULTS / f"augment_tables-{tag}.json"
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(md, "# Augmentation demo: small real sample vs sample + synthetic rows\n\n" + text + "\n")
        atomic_write_text(js, json.dumps(compact(payload), indent=1, default=str) + "\n")
        print(f"written: {md.relative_to(REPO)}, {js.relative_to(REPO)}")


if __name__ == "__main__":
    main()
