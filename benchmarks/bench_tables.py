"""genforge's table synthesizers (ctgan, tvae, copula) against SDV's CTGAN, TVAE and Gaussian copula.

    bash benchmarks/setup_tables.sh                          # SDV in a venv of its own; plotnine's two tables
    .venv/bin/python benchmarks/bench_tables.py --write      # 4 tables x 3 models x 2 contenders -> results/tables.md
    .venv/bin/python benchmarks/bench_tables.py --quick --tables penguins   # every path in a few minutes

Four real tables shipped inside PyPI packages: palmerpenguins' penguins (344 rows, missing values),
scikit-learn's breast cancer (569 rows, 30 numbers, the diagnosis as a categorical column), and from
plotnine's wheel txhousing (8,602 rows, missing values, `city` categorical with 46 values) and
diamonds (53,940 rows, 7 numbers and 3 categorical columns). Each is split once, seeded, 80/20
(scikit-learn's `train_test_split`: txhousing -> 6,881 train rows), and every contender gets the same
train rows with the same column types: the table's categorical columns categorical, every other one
numeric (SDV's `Metadata.detect_from_dataframes` would call txhousing's `city` PII and replace it with
fake names; the detected types are recorded in the json).

Each contender fits and samples in a fresh process of its own (isolation, and its peak RSS from
`getrusage` in that process): genforge in .venv through its Python API (`ingest` of the train rows,
all kept in train, none dropped as duplicates; `train`; `generate`) in a temporary GENFORGE_HOME with
tracking off; SDV in benchmarks/out/tables/sdv-venv (see setup_tables.sh for why not .venv). Same
epochs and batch for both: the batch is min(--batch, train rows), for CTGAN rounded down to a multiple of
10 (its pac); genforge's steps see the rows SDV sees in those epochs (CTGAN: SDV's max(rows // batch, 1)
full batches per epoch; TVAE: ceil(epochs x rows / batch) full batches, where SDV's loader adds each
epoch's partial last batch; the copula: one). On the two small tables TVAE's batch is the whole train
split, so both make one full update per epoch: with a batch of 270 on penguins' 275 rows SDV would make
a second update per epoch from 5 rows, twice genforge's updates on the same rows. Contenders alternate per model (genforge
ctgan, sdv ctgan, genforge tvae, ...) so load from elsewhere falls on both.

`sdv_seeded` (opt-in: `--contenders genforge,sdv,sdv_seeded`): SDV's CTGAN or TVAE with each run's
mixtures drawn from the run's seed. rdt's `ClusterBasedNormalizer` fits its mixture with
`random_state` 42 whatever the global seed, so every `sdv` run of a table fits the same mixtures (checked:
breast cancer's 30 mixtures equal for seeds 0 and 1) and the spread of SDV's runs leaves out the mixture's
luck, which genforge's runs, each drawing its own from `train.seed`, include. This contender puts both on one
footing; `sdv` stays SDV as its users run it, and the target is judged against it.

Precision: genforge trains at its shipped configs' `train.precision: auto`, which is bf16 autocast where
the CPU runs bf16 natively (avx512_bf16 or AMX in its flags) and fp32 elsewhere; the json records
what each run resolved to. SDV has no precision setting and trains in fp32. `sdv_bf16` (opt-in) is the
peer allowed the same hardware feature: SDV's `fit` inside `torch.autocast("cpu", dtype=torch.bfloat16)`.

Figures per contender:
- fit s: SDV's `synthesizer.fit`; genforge's `train` (its own preprocessing, the model, one final
  checkpoint). Preparation beside it (genforge's ingest; SDV's metadata detection), not in the ratio.
- sampling rows/s: max(train rows, 1,000) rows in one call from the fitted model in memory
  (`synthesizer.sample`; genforge's `Model.sample` on the run loaded from its checkpoint, the load
  not timed, as SDV's synthesizer is in memory when `fit` returns). genforge's `generate` of the
  same rows (load, sample, write the csv and its label) is timed after it: generate_s in the json.
- peak RSS of the contender's process (imports included; the RSS after imports beside it).
- quality: sdmetrics' single-table `QualityReport` score of the first train-rows synthetic rows against
  the real train rows, as SDV reports it, and genforge's `evaluation.tabular.quality_report` beside it.
  `--draws K` scores K disjoint draws of train-rows rows per fit (the rows past the timed call's are
  sampled untimed) and averages quality, TSTR and exact copies over them: on penguins one 275-row draw
  moves quality by about 0.01 and TSTR by about 0.04, the size of the gaps the target is judged on.
- TSTR: accuracy on the real held-out rows of a seeded random forest (100 trees, one-hot categories,
  median-filled numbers) trained on as many synthetic rows as there are real train rows; the real row
  is the same forest trained on the real train rows.
- exact copies: share of synthetic rows equal to a train row on normalised values
  (`evaluation.tabular.exact_copy_share`); the real row: held-out rows equal to a train row.
Targets (from the issue): each genforge model fits at least 2x faster than its SDV counterpart at equal
or better quality (sdmetrics' score), and genforge's best model per table at least matches SDV's best
in quality and in TSTR accuracy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
OUT = ROOT / "out" / "tables"
SDV_PYTHON = OUT / "sdv-venv" / "bin" / "python"
RESULTS_MD = ROOT / "results" / "tables.md"
RESULTS_JSON = ROOT / "results" / "tables.jsonl"  # one run per line, appended like the markdown
FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
TABLES = ("penguins", "breast_cancer", "txhousing", "diamonds")
MODELS = ("ctgan", "tvae", "copula")
CONTENDERS = ("genforge", "sdv", "sdv_seeded", "sdv_bf16")
SDV_CONTENDERS = ("sdv", "sdv_seeded", "sdv_bf16")
SDV_CLASS = {"ctgan": "CTGANSynthesizer", "tvae": "TVAESynthesizer", "copula": "GaussianCopulaSynthesizer"}
# the categorical columns of each table (every other column is numeric) and the TSTR target
CATEGORICAL = {"penguins": ["species", "island", "sex"], "breast_cancer": ["target"], "txhousing": ["city"],
               "diamonds": ["cut", "color", "clarity"]}
TARGET = {"penguins": "species", "breast_cancer": "target", "txhousing": "city", "diamonds": "cut"}
MISSING = "<missing>"


# --- the tables (parent, .venv) -----------------------------------------------------------------------

def load_table(name: str) -> pd.DataFrame:
    if name == "penguins":
        from palmerpenguins import load_penguins
        return load_penguins()
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer
        data = load_breast_cancer(as_frame=True)
        frame = data.frame.copy()
        frame["target"] = [str(data.target_names[i]) for i in frame["target"]]
        return frame
    path = OUT / f"{name}.csv"
    if not path.exists():
        sys.exit(f"{path} is missing: run bash benchmarks/setup_tables.sh (it takes {name}.csv out of plotnine's wheel)")
    return pd.read_csv(path)


def prepare(name: str, seed: int, holdout: float) -> dict[str, Any]:
    """Split the table once and write train/holdout parquet files every contender reads."""
    from sklearn.model_selection import train_test_split
    frame = load_table(name)
    cats = CATEGORICAL[name]
    for c in frame.columns:  # plain dtypes that pandas 2 (SDV's venv) and 3 read alike
        frame[c] = frame[c].astype(object).where(frame[c].notna(), None) if c in cats else frame[c].astype("float64")
    train, held = (f.reset_index(drop=True) for f in train_test_split(frame, test_size=holdout, random_state=seed))
    folder = OUT / "run" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    train.to_parquet(folder / "train.parquet", index=False)
    held.to_parquet(folder / "holdout.parquet", index=False)
    meta = {"table": name, "rows": len(frame), "train_rows": len(train), "holdout_rows": len(held),
            "columns": list(frame.columns), "categorical": cats, "target": TARGET[name],
            "missing_cells": int(frame.isna().sum().sum())}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def batch_for(model: str, rows: int, limit: int) -> int:
    """The batch both contenders use: at most `limit` and the train rows; CTGAN's a multiple of its pac (10)."""
    return min(limit, rows // 10 * 10) if model == "ctgan" else min(limit, rows)


def steps_for(model: str, rows: int, batch: int, epochs: int) -> int:
    """genforge's steps for SDV's `epochs`: the same rows seen. CTGAN: SDV's steps, max(rows // batch, 1)
    full batches an epoch. TVAE: SDV's loader keeps each epoch's last partial batch (txhousing's 6,881
    rows: 13 of 500 and one of 381), while every genforge batch is full, so genforge gets the full
    batches that hold epochs x rows rows (where the batch is the whole split: one per epoch, as SDV)."""
    if model == "ctgan":
        return epochs * max(rows // batch, 1)
    if model == "tvae":
        return math.ceil(epochs * rows / batch)
    return 1  # the copula is fitted, not trained: one step is the least a genforge budget can say


# --- one contender in its own process (child) ---------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM. Not getrusage's ru_maxrss, which Linux keeps
    across exec: a child started by a parent that had grown to 733 MB reported 733 MB whatever it used
    (a 10 MB child of a 1.6 GB parent read 1,556 MB; VmHWM 11 MB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: no exec carry-over to fear


def child_sdv(args: argparse.Namespace, train: pd.DataFrame, meta: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    import random

    import numpy as np
    import torch
    from sdv import single_table
    import torch._dynamo  # noqa: F401  (as in genforge's child: the optimizers' first construction imports it)
    from sdv.metadata import Metadata
    torch.set_num_threads(args.threads)
    import_rss = peak_rss_mb()
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    if args.child == "sdv_seeded":  # rdt's mixtures from the run's seed, not its fixed 42 (module docstring)
        from rdt.transformers.numerical import ClusterBasedNormalizer
        ClusterBasedNormalizer._get_current_random_seed = lambda self: args.seed
    name, cats = meta["table"], meta["categorical"]

    t = time.perf_counter()
    metadata = Metadata.detect_from_dataframes({name: train})
    detected = {c: v["sdtype"] for c, v in metadata.to_dict()["tables"][name]["columns"].items()}
    table = metadata.to_dict()["tables"][name]
    if table.get("primary_key"):
        metadata.remove_primary_key(name)
    for c in train.columns:  # the same types as genforge gets: the table's categoricals, every other column numeric
        if c in cats and detected[c] != "categorical":
            metadata.update_column(column_name=c, table_name=name, sdtype="categorical")
        elif c not in cats and detected[c] != "numerical":
            metadata.update_column(column_name=c, table_name=name, sdtype="numerical")
    metadata.validate()
    prep_s = time.perf_counter() - t

    cls = getattr(single_table, SDV_CLASS[args.model])
    kw = {} if args.model == "copula" else {"epochs": args.epochs, "batch_size": args.batch_size, "enable_gpu": False}
    synth = cls(metadata, **kw)
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.child == "sdv_bf16"):
        synth.fit({name: train})  # SDV 2 takes tables by name, also for one table
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = synth.sample(num_rows=args.n)
    sample_s = time.perf_counter() - t
    if isinstance(rows, dict):  # SDV 2: {table name: rows}
        (rows,) = rows.values()
    more = args.draws * len(train) - len(rows)
    if more > 0:  # further draws to score, not timed
        extra = synth.sample(num_rows=more)
        rows = pd.concat([rows, *(extra.values() if isinstance(extra, dict) else [extra])], ignore_index=True)
    changed = {c: s for c, s in detected.items() if s != ("categorical" if c in cats else "numerical")}
    return rows, {"prep_s": prep_s, "fit_s": fit_s, "sample_s": sample_s, "import_rss_mb": import_rss,
                  "sdv_detected_differently": changed, "settings": kw}


# what the benchmark sets itself in genforge's run config; the rest of `train:` comes from the shipped config
BENCH_TRAIN_KEYS = {"steps", "epochs", "minutes", "batch_size", "seed", "threads", "val_every", "val_items",
                    "checkpoint_every", "keep_checkpoints", "log_every", "init_from"}


def shipped_settings(model: str) -> dict[str, Any]:
    """The training settings of the family's shipped config (configs/<model>-penguins.yaml: the reference
    implementation's optimizer, schedule, clipping, EMA and precision), less the budget, batch, seed and
    validation, which the benchmark sets, and less the model's table-specific `rules`."""
    import yaml
    path = REPO / "configs" / f"{model}-penguins.yaml"
    if not path.exists():
        return {"path": None, "model": {}, "train": {}}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {"path": str(path.relative_to(REPO)),
            "model": {k: v for k, v in data.get("model", {}).items() if k not in ("family", "rules")},
            "train": {k: v for k, v in data.get("train", {}).items() if k not in BENCH_TRAIN_KEYS}}


def ingest_train(folder: Path, meta: dict[str, Any], seed: int) -> str:
    """The split's train rows as a genforge dataset (all of them in train, none dropped as duplicates),
    with the table's column types; returns the dataset's name."""
    from genforge import api
    name = meta["table"].replace("_", "-")
    types = {c: "categorical" if c in meta["categorical"] else "numeric" for c in meta["columns"]}
    api.ingest(str(folder / "train.parquet"), name,
               {"kind": "table", "table": {"types": types, "drop_duplicate_rows": False},
                "split": {"val": 0.0, "test": 0.0, "seed": seed}})
    return name


def run_config(run: str, model: str, dataset: str, steps: int, batch: int, seed: int, threads: int) -> dict[str, Any]:
    """genforge's run config for the benchmark: the shipped training settings, the benchmark's budget and batch."""
    shipped = shipped_settings(model)
    return {"name": run, "data": {"dataset": dataset, "val_split": "train"}, "model": {**shipped["model"], "family": model},
            "train": {**shipped["train"], "steps": steps, "batch_size": batch, "seed": seed, "threads": threads,
                      "val_every": 0, "checkpoint_every": steps}}


def child_genforge(args: argparse.Namespace, train: pd.DataFrame, meta: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    import torch
    from rich.console import Console

    import genforge.runs  # noqa: F401  (imported before the baseline RSS, as SDV's modules are)
    import genforge.trainer  # noqa: F401
    import sklearn.mixture  # noqa: F401  (genforge imports it when it first fits; SDV's rdt at import)
    import torch._dynamo  # noqa: F401  (the optimizers' first construction imports it, in both contenders' fits)
    from genforge import api
    from genforge.models import SampleRequest
    from genforge.runs import load_run
    importlib.import_module(f"genforge.models.{args.model}")  # the family's code, as SDV's synthesizers are imported
    torch.set_num_threads(args.threads)
    import_rss = peak_rss_mb()

    t = time.perf_counter()
    name = ingest_train(Path(args.dir), meta, args.seed)
    prep_s = time.perf_counter() - t

    steps = steps_for(args.model, len(train), args.batch_size, args.epochs)
    config = run_config(f"bench-{args.model}", args.model, name, steps, args.batch_size, args.seed, args.threads)
    t = time.perf_counter()
    run = api.train(config, overrides=args.gf_set or None, console=Console(stderr=True, quiet=True))
    fit_s = time.perf_counter() - t
    model = load_run(run.id).model()  # not timed: SDV's synthesizer is in memory when its fit returns
    t = time.perf_counter()
    rows = model.sample(SampleRequest.make(args.n, args.seed), batch_size=args.n).frame
    sample_s = time.perf_counter() - t
    t = time.perf_counter()
    again = api.generate(run.id, args.n, seed=args.seed, batch_size=args.n).samples.frame  # what a user runs
    generate_s = time.perf_counter() - t
    assert again.equals(rows), "generate drew other rows than the model did"
    more = args.draws * len(train) - len(rows)
    if more > 0:  # further draws to score, not timed
        rows = pd.concat([rows, model.sample(SampleRequest.make(more, args.seed + 1), batch_size=more).frame],
                         ignore_index=True)
    return rows, {"prep_s": prep_s, "fit_s": fit_s, "sample_s": sample_s, "generate_s": generate_s,
                  "import_rss_mb": import_rss, "steps": steps,
                  "config": config, "config_from": shipped_settings(args.model)["path"], "overrides": args.gf_set,
                  "precision": run.info["precision"]}


def child(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    train = pd.read_parquet(folder / "train.parquet")
    fn = child_sdv if args.child in SDV_CONTENDERS else child_genforge
    rows, info = fn(args, train, meta)
    rows.to_parquet(folder / f"{args.child}-{args.model}.parquet", index=False)
    print(json.dumps({**info, "rows": len(rows), "timed_rows": args.n, "peak_rss_mb": peak_rss_mb()}))


def child_sdmetrics(args: argparse.Namespace) -> None:
    """sdmetrics' QualityReport (in SDV's venv) of each named frame against the real train rows."""
    import warnings

    from sdmetrics.reports.single_table import QualityReport
    warnings.filterwarnings("ignore")
    folder = Path(args.dir)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    cats = meta["categorical"]
    sdmeta = {"columns": {c: {"sdtype": "categorical" if c in cats else "numerical"} for c in meta["columns"]}}

    def plain(frame: pd.DataFrame, draw: int = 0) -> pd.DataFrame:
        size = meta["train_rows"]
        frame = frame[meta["columns"]].iloc[draw * size:(draw + 1) * size].copy()
        for c in frame.columns:
            frame[c] = frame[c].astype(object) if c in cats else pd.to_numeric(frame[c], errors="coerce").astype("float64")
        return frame

    real = plain(pd.read_parquet(folder / "train.parquet"))
    out = {}
    for name in args.frames.split(","):
        frame, scores = pd.read_parquet(folder / f"{name}.parquet"), []
        for draw in range(args.draws if name != "holdout" else 1):
            report = QualityReport()
            report.generate(real, plain(frame, draw), sdmeta, verbose=False)
            props = report.get_properties()
            scores.append({"score": float(report.get_score()),
                           **{str(p): float(s) for p, s in zip(props["Property"], props["Score"])}})
        out[name] = {k: sum(d[k] for d in scores) / len(scores) for k in scores[0]}
        out[name]["draws"] = [d["score"] for d in scores]
    print(json.dumps(out))


# --- scoring (parent, .venv) --------------------------------------------------------------------------

def tstr_accuracy(train: pd.DataFrame, test: pd.DataFrame, target: str, cats: list[str], seed: int, threads: int) -> float:
    """Accuracy on the real `test` rows of a random forest trained on `train` (synthetic or real)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    def plain(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[list(test.columns)].copy()
        for c in frame.columns:
            if c in cats:
                frame[c] = [MISSING if pd.isna(v) else str(v) for v in frame[c].astype(object)]
            else:
                frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
        return frame[frame[target] != MISSING]

    a, b = plain(train), plain(test)
    xcats = [c for c in cats if c != target]
    nums = [c for c in a.columns if c not in cats]
    model = make_pipeline(
        ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), xcats),
                           ("num", SimpleImputer(strategy="median", keep_empty_features=True), nums)]),
        RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=threads))
    if a[target].nunique() < 2:  # one class only: the forest can only predict it
        return float((b[target] == a[target].iloc[0]).mean()) if len(a) else 0.0
    model.fit(a.drop(columns=[target]), a[target])
    return float((model.predict(b.drop(columns=[target])) == b[target].to_numpy()).mean())


def sdmetrics_scores(folder: Path, frames: list[str], draws: int) -> dict[str, Any]:
    if not SDV_PYTHON.exists():
        return {f: {"error": "no sdv-venv: run bash benchmarks/setup_tables.sh"} for f in frames}
    p = subprocess.run([str(SDV_PYTHON), "-W", "ignore", __file__, "--child", "sdmetrics", "--dir", str(folder),
                        "--frames", ",".join(frames), "--draws", str(draws)], capture_output=True, text=True)
    if p.returncode:
        return {f: {"error": p.stderr.strip()[-2000:]} for f in frames}
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_contender(args: argparse.Namespace, contender: str, model: str, folder: Path, meta: dict[str, Any],
                  batch: int, n: int, seed: int) -> dict[str, Any]:
    python = str(SDV_PYTHON) if contender in SDV_CONTENDERS else sys.executable
    if contender in SDV_CONTENDERS and not SDV_PYTHON.exists():
        return {"error": "no sdv-venv: run bash benchmarks/setup_tables.sh"}
    home = OUT / "work" / f"{meta['table']}-{contender}-{model}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "GENFORGE_HOME": str(home), "GENFORGE_TRACKING": "off", "PYTHONWARNINGS": "ignore"}
    cmd = [python, __file__, "--child", contender, "--model", model, "--dir", str(folder), "--epochs", str(args.epochs),
           "--batch-size", str(batch), "--n", str(n), "--threads", str(args.threads), "--seed", str(seed),
           "--draws", str(args.draws)]
    for s in args.gf_set:
        cmd += ["--gf-set", s]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.child_timeout} s"}
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    wall = time.perf_counter() - t
    if p.returncode:
        return {"error": (p.stderr.strip() or p.stdout.strip())[-3000:]}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_s": wall}


SUMMARISED = ("fit_s", "prep_s", "sample_rows_per_s", "peak_rss_mb", "import_rss_mb", "quality_sdmetrics",
              "quality_genforge", "tstr_accuracy", "exact_copies")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender's repeats: the median of each figure, its range, and every run (an error if any failed)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return {"error": failed[0]["error"], "runs": runs}
    out: dict[str, Any] = {**runs[0], "runs": runs, "range": {}}
    for k in SUMMARISED:
        values = [r[k] for r in runs if r.get(k) is not None]
        out[k] = float(np.median(values)) if values else None
        out["range"][k] = (min(values), max(values)) if values else None
    return out


def bench_table(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Every contender on one table, `args.repeats` times with model seeds seed, seed + 1, ... (the split and
    the TSTR forest keep `args.seed`), contenders alternating within each repeat; figures are medians."""
    from genforge.evaluation.tabular import exact_copy_share, quality_report

    meta = prepare(name, args.seed, args.holdout)
    folder = OUT / "run" / name
    rows = meta["train_rows"]
    batches = {model: batch_for(model, rows, args.batch) for model in args.models}
    n = max(rows, 1000)
    cats, target = meta["categorical"], meta["target"]
    print(f"\n== {name}: {meta['rows']} rows, {rows} train / {meta['holdout_rows']} held out, "
          f"categorical {cats}, {meta['missing_cells']} missing cells; epochs {args.epochs}, batches {batches}, "
          f"{n} rows sampled, {args.repeats} repeat(s); load {os.getloadavg()[0]:.2f}", flush=True)
    train = pd.read_parquet(folder / "train.parquet")
    held = pd.read_parquet(folder / "holdout.parquet")
    runs: dict[str, list[dict[str, Any]]] = {f"{c}-{m}": [] for m in args.models for c in args.contenders
                                             if not (c in ("sdv_seeded", "sdv_bf16") and m == "copula")}
    real: dict[str, Any] = {}
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        results: dict[str, dict[str, Any]] = {}
        for model in args.models:
            for contender in args.contenders:
                key = f"{contender}-{model}"
                if key not in runs:  # sdv_seeded / sdv_bf16 - copula: SDV's copula fits no mixture and no network
                    continue
                r = results[key] = {**run_contender(args, contender, model, folder, meta, batches[model], n, seed), "seed": seed}
                if "error" in r:
                    print(f"  {key} (seed {seed}): FAILED\n    " + r["error"].replace("\n", "\n    "), flush=True)
                else:
                    print(f"  {key} (seed {seed}): fit {r['fit_s']:.1f} s, sampled {r['timed_rows']} rows in {r['sample_s']:.2f} s"
                          + (f" (generate {r['generate_s']:.2f} s)" if "generate_s" in r else "") + ", "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        done = [k for k, r in results.items() if "error" not in r]
        sdm = sdmetrics_scores(folder, [*done, *(["holdout"] if not real else [])], args.draws)
        if not real:
            real = {"quality_sdmetrics": sdm["holdout"].get("score"), "sdmetrics": sdm["holdout"],
                    "quality_genforge": quality_report(train, held, cats)["score"],
                    "tstr_accuracy": tstr_accuracy(train, held, target, cats, args.seed, args.threads),
                    "exact_copies": exact_copy_share(train, held, cats)}
        for k in done:
            frame = pd.read_parquet(folder / f"{k}.parquet")
            draws = [frame.iloc[d * rows:(d + 1) * rows] for d in range(args.draws)]  # draw 0: the timed call's first rows
            r = results[k]
            r["sample_rows_per_s"] = r["timed_rows"] / r["sample_s"]
            r["sdmetrics"] = sdm.get(k, {})
            r["quality_sdmetrics"] = r["sdmetrics"].get("score")
            r["quality_genforge"] = float(np.mean([quality_report(train, d, cats)["score"] for d in draws]))
            r["tstr_draws"] = [tstr_accuracy(d, held, target, cats, args.seed, args.threads) for d in draws]
            r["tstr_accuracy"] = float(np.mean(r["tstr_draws"]))
            r["exact_copies"] = float(np.mean([exact_copy_share(train, d, cats) for d in draws]))
        for k, r in results.items():
            runs[k].append(r)
    return {"meta": meta, "batches": batches, "epochs": args.epochs, "n_sampled": n, "draws": args.draws, "repeats": args.repeats,
            "contenders": {k: summarise(v) for k, v in runs.items()}, "real": real}


# --- report -------------------------------------------------------------------------------------------

def fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def interval(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], key: str, draws: int = 4000) -> str:
    """' [lo, hi]': a 95% bootstrap interval of median(a) - median(b), each contender's runs resampled
    on their own (seeded): how far the seed-to-seed spread alone moves the difference of medians.
    Empty for fewer than 3 runs a side."""
    a, b = (np.array([r[key] for r in runs if r.get(key) is not None]) for runs in (runs_a, runs_b))
    if min(len(a), len(b)) < 3:
        return ""
    rng = np.random.default_rng(0)
    d = np.median(rng.choice(a, (draws, len(a))), 1) - np.median(rng.choice(b, (draws, len(b))), 1)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return f" [{lo:+.3f}, {hi:+.3f}]"


def table_report(name: str, t: dict[str, Any], args: argparse.Namespace) -> list[str]:
    m = t["meta"]
    # The copula fits in closed form in float64: autocast has nothing to act on, so no precision is shown for it.
    gf = [r for k, c in t["contenders"].items() if k.startswith("genforge-") and k != "genforge-copula"
          for r in c["runs"] if "precision" in r]
    precisions = sorted({f"{r['precision']} ({r['config']['model']['family']})" for r in gf})
    shipped = ", ".join(sorted({str(r["config"]["train"].get("precision", "auto")) for r in gf}))
    lines = [f"### {name}: {m['rows']:,} rows ({m['train_rows']:,} train, {m['holdout_rows']:,} held out), "
             f"categorical {', '.join(m['categorical'])}, TSTR target `{m['target']}`", "",
             f"Epochs {t['epochs']}, batch {', '.join(f'{b} ({m_})' for m_, b in t['batches'].items())}, "
             f"{t['n_sampled']:,} rows sampled; quality and TSTR "
             + (f"the mean over {t['draws']} disjoint draws of {m['train_rows']:,} rows per fit, the first from the timed call."
                if t.get("draws", 1) > 1 else f"on the first {m['train_rows']:,}.")
             + (f" Medians of {t['repeats']} runs (model seeds {', '.join(str(r['seed']) for r in next(iter(t['contenders'].values()))['runs'])}), "
                "ranges in brackets." if t["repeats"] > 1 else "")
             + (f" genforge's precision: {', '.join(precisions)} (`train.precision` {shipped});" if precisions else "")
             + " SDV's: fp32" + (" (`sdv_bf16`: its fit under bf16 autocast)." if any(k.startswith("sdv_bf16") for k in t["contenders"]) else "."), "",
             "| model | contender | fit s | prep s | sampling rows/s | peak RSS MB (after imports) | quality sdmetrics | "
             "quality genforge | TSTR accuracy | exact copies |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    res = t["contenders"]
    for key, r in res.items():
        contender, model = key.split("-", 1)
        if "error" in r:
            lines.append(f"| {model} | {contender} | failed: {r['error'].splitlines()[-1][:120]} |||||||")
            continue
        spread = lambda k, spec=".3f": f" ({format(r['range'][k][0], spec)}-{format(r['range'][k][1], spec)})" \
            if t["repeats"] > 1 and r["range"].get(k) else ""  # noqa: E731
        lines.append(f"| {model} | {contender} | {r['fit_s']:.1f}{spread('fit_s', '.1f')} | {r['prep_s']:.1f} | "
                     f"{r['sample_rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} ({r['import_rss_mb']:,.0f}) | "
                     f"{fmt(r['quality_sdmetrics'])}{spread('quality_sdmetrics')} | {fmt(r['quality_genforge'])} | "
                     f"{fmt(r['tstr_accuracy'])}{spread('tstr_accuracy')} | {fmt(r['exact_copies'], '.4f')} |")
    real = t["real"]
    lines += [f"| real held-out rows | | | | | | {fmt(real['quality_sdmetrics'])} | {fmt(real['quality_genforge'])} | "
              f"{fmt(real['tstr_accuracy'])} | {fmt(real['exact_copies'], '.4f')} |", ""]
    ok = lambda k: k in res and "error" not in res[k]  # noqa: E731
    for peer in SDV_CONTENDERS:
        pairs = [m_ for m_ in args.models if ok(f"genforge-{m_}") and ok(f"{peer}-{m_}")]
        if not pairs:
            continue
        ci = " [95% interval over seeds]" if t["repeats"] >= 3 else ""
        verdict = {"sdv": "target: >= 2x and quality >= SDV's (medians)",
                   "sdv_seeded": "quality >= (same footing: a mixture per seed on both sides; not the target)",
                   "sdv_bf16": "quality >= (SDV allowed bf16 too; not the target)"}[peer]
        lines += [f"| model | {peer} fit s / genforge fit s | sampling rows/s genforge / {peer} | "
                  f"quality genforge - {peer} (sdmetrics){ci} | TSTR genforge - {peer}{ci} | {verdict} |",
                  "|---|---:|---:|---:|---:|---|"]
        for model in pairs:
            g, s = res[f"genforge-{model}"], res[f"{peer}-{model}"]
            ratio = s["fit_s"] / g["fit_s"]
            dq = None if g["quality_sdmetrics"] is None or s["quality_sdmetrics"] is None else g["quality_sdmetrics"] - s["quality_sdmetrics"]
            met = (ratio >= 2 or peer != "sdv") and dq is not None and dq >= 0
            lines.append(f"| {model} | {ratio:.2f}x | {g['sample_rows_per_s'] / s['sample_rows_per_s']:.2f}x | {fmt(dq, '+.3f')}{interval(g['runs'], s['runs'], 'quality_sdmetrics')} | "
                         f"{g['tstr_accuracy'] - s['tstr_accuracy']:+.3f}{interval(g['runs'], s['runs'], 'tstr_accuracy')} | "
                         f"{('met' if met else 'NOT met') if peer == 'sdv' else ('yes' if met else 'no')} |")
        lines.append("")
    best = {}
    for contender in ("genforge", "sdv"):
        mine = [res[f"{contender}-{m_}"] for m_ in args.models if ok(f"{contender}-{m_}")]
        if mine:
            best[contender] = (max(r["quality_sdmetrics"] or float("-inf") for r in mine), max(r["tstr_accuracy"] for r in mine))
    if len(best) == 2:
        (gq, ga), (sq, sa) = best["genforge"], best["sdv"]
        lines += [f"Best model: quality genforge {gq:.3f} vs SDV {sq:.3f}, TSTR accuracy genforge {ga:.3f} vs SDV {sa:.3f} "
                  f"(real {fmt(real['tstr_accuracy'])}): target {'met' if gq >= sq and ga >= sa else 'NOT met'}.", ""]
    return lines


def machine_info() -> dict[str, Any]:
    from genforge.devices import cpu_flags
    model = next((line.split(":", 1)[1].strip() for line in os.popen("lscpu").read().splitlines()
                  if line.startswith("Model name")), platform.processor() or "?")
    sdv_versions = {}
    if SDV_PYTHON.exists():
        p = subprocess.run([str(SDV_PYTHON), "-W", "ignore", "-c",
                            "import json, importlib.metadata as m; print(json.dumps({k: m.version(k) for k in "
                            "('sdv', 'sdmetrics', 'ctgan', 'rdt', 'copulas', 'torch', 'pandas')}))"],
                           capture_output=True, text=True)
        sdv_versions = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-300:]}
    git = os.popen(f"git -C {REPO} rev-parse --short HEAD").read().strip()
    dirty = bool(os.popen(f"git -C {REPO} status --porcelain --untracked-files=no").read().strip())
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": model, "cores": os.cpu_count(),
            "flags": ", ".join(sorted(cpu_flags() & FLAGS)) or "none of " + ", ".join(sorted(FLAGS)),
            "genforge": {"torch": version("torch"), "pandas": version("pandas"), "scikit-learn": version("scikit-learn"),
                         "genforge": version("genforge")},
            "sdv_venv": sdv_versions, "git": git + ("+dirty" if dirty else ""), "load_before": os.getloadavg()}


def append_text(path: Path, text: str, header: str = "") -> None:
    """Add `text` at the end of a results file (started with `header`), written atomically."""
    from genforge.workspace import atomic_write_text
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, (path.read_text(encoding="utf-8") if path.exists() else header) + text)


def publish(text: str, path: Path, header: str, write: bool) -> None:
    """Print a report and, with --write, add it to its results file (the small benchmarks beside this one)."""
    print("\n" + text)
    if write:
        append_text(path, text + "\n", header)
        print(f"written: {path.relative_to(REPO)}")


def report(info: dict[str, Any], tables: dict[str, Any], args: argparse.Namespace) -> str:
    sv = info["sdv_venv"]
    lines = [f"## genforge vs SDV on tables, {info['date']}", "",
             f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_tables.py', *sys.argv[1:]])}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads per contender; flags: {info['flags']}; "
             f"load before {', '.join(f'{x:.2f}' for x in info['load_before'])}, after "
             f"{', '.join(f'{x:.2f}' for x in info['load_after'])}. genforge {info['genforge']['genforge']} (git {info['git']}), "
             f"torch {info['genforge']['torch']}, pandas {info['genforge']['pandas']}; SDV's venv: sdv {sv.get('sdv', '-')}, "
             f"sdmetrics {sv.get('sdmetrics', '-')}, ctgan {sv.get('ctgan', '-')}, rdt {sv.get('rdt', '-')}, "
             f"torch {sv.get('torch', '-')}, pandas {sv.get('pandas', '-')}.", ""]
    for name, t in tables.items():
        lines += table_report(name, t, args)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated: {', '.join(TABLES)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--contenders", default="genforge,sdv", help="comma-separated: genforge, sdv, sdv_seeded, sdv_bf16")
    p.add_argument("--epochs", type=int, default=None, help="300 (2 with --quick)")
    p.add_argument("--table-epochs", action="append", default=[], metavar="TABLE=N",
                   help="other epochs for one table, both contenders (diamonds=30: 300 epochs of 43k rows take SDV's "
                        "CTGAN about half an hour here); repeatable")
    p.add_argument("--batch", type=int, default=500, help="at most this; a table's train rows cap it (CTGAN's rounded down to 10)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of each table held out for TSTR")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per contender")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=1, help="score each fit on this many disjoint train-size draws and "
                   "average them (on penguins one draw moves quality by ~0.01 and TSTR by ~0.04)")
    p.add_argument("--repeats", type=int, default=1, help="runs per contender with model seeds seed, seed+1, ...: medians and ranges")
    p.add_argument("--gf-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of genforge's run config (e.g. train.ema=0); repeatable")
    p.add_argument("--child-timeout", type=float, default=None, help="seconds one contender may take")
    p.add_argument("--keep", action="store_true", help="keep each genforge workspace under benchmarks/out/tables/work/")
    p.add_argument("--quick", action="store_true", help="2 epochs: every code path; the figures mean nothing")
    p.add_argument("--write", action="store_true", help=f"append to {RESULTS_MD.relative_to(REPO)} and "
                                                        f"{RESULTS_JSON.relative_to(REPO)} (not with --quick)")
    # a contender's own process
    p.add_argument("--child", choices=[*CONTENDERS, "sdmetrics"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--frames", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "sdmetrics":
        return child_sdmetrics(args)
    if args.child:
        return child(args)

    sys.path.insert(0, str(REPO))
    args.epochs = args.epochs or (2 if args.quick else 300)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    args.tables, args.models, args.contenders = split(args.tables), split(args.models), split(args.contenders)
    for option, values, known in (("--tables", args.tables, TABLES), ("--models", args.models, MODELS),
                                  ("--contenders", args.contenders, CONTENDERS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            p.error(f"{option}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if set(SDV_CONTENDERS) & set(args.contenders) and not SDV_PYTHON.exists():
        p.error(f"{SDV_PYTHON.relative_to(REPO)} is missing: run bash benchmarks/setup_tables.sh (or --contenders genforge)")
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; flags {info['flags']}; load {os.getloadavg()[0]:.2f}; "
          f"git {info['git']}", flush=True)
    per_table = {k: int(v) for k, _, v in (x.partition("=") for x in args.table_epochs)}
    tables = {name: bench_table(argparse.Namespace(**{**vars(args), "epochs": per_table.get(name, args.epochs)}), name)
              for name in args.tables}
    info["load_after"] = os.getloadavg()
    text = report(info, tables, args)
    print("\n" + text)
    payload = {"info": info, "args": {k: v for k, v in vars(args).items() if k in
                                      ("tables", "models", "contenders", "epochs", "table_epochs", "batch", "holdout",
                                       "threads", "seed", "repeats",
                                       "gf_set", "quick")}, "tables": tables}
    last = OUT / "last.json"
    last.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    print(f"\njson: {last.relative_to(REPO)}")
    if args.write and not args.quick:
        append_text(RESULTS_MD, text + "\n", "# Tables: genforge against SDV\n\n")
        append_text(RESULTS_JSON, json.dumps(payload, default=str) + "\n")
        print(f"written: {RESULTS_MD.relative_to(REPO)}, {RESULTS_JSON.relative_to(REPO)}")


if __name__ == "__main__":
    main()
