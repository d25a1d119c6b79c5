"""Table runs through `genforge evaluate` and `genforge compare`: the real reference row on the built-in
penguins table (no model needed), and tiny Gaussian-copula runs end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from clirun import invoke
from rich.console import Console

import genforge
from genforge.data.store import open_dataset
from genforge.errors import ConfigError
from genforge.evaluation.pipeline import TableReference
from genforge.evaluation.report import metrics_table
from genforge.models import FAMILIES

COPULA = {"name": "t", "data": {"dataset": "penguins"}, "model": {"family": "copula"},
          "train": {"steps": 1, "batch_size": 64}}


@pytest.fixture
def penguins():
    genforge.ingest("builtin:penguins", "penguins")
    return open_dataset("penguins")


def test_reference_row_of_penguins_held_out_against_train(penguins):
    """Golden figures of the 34 real val rows against the 276 train rows, as the evaluation's reference row."""
    reference = TableReference.for_dataset(penguins, "train", "val")
    row, details = reference.score(penguins.frame("val"), utility=False)
    assert row == {"n": 34, "quality_score": pytest.approx(0.8797, abs=1e-3), "column_shapes": pytest.approx(0.9201, abs=1e-3),
                   "column_pair_trends": pytest.approx(0.8394, abs=1e-3), "dcr_median": pytest.approx(0.0198, abs=1e-3),
                   "dcr_p05": pytest.approx(0.0091, abs=1e-3), "exact_copies": 0.0}  # no ML figure: val is its test set
    assert reference.columns() == {"compared": {"species": "categorical", "island": "categorical", "bill_length_mm": "numeric",
                                                "bill_depth_mm": "numeric", "flipper_length_mm": "numeric",
                                                "body_mass_g": "numeric", "sex": "categorical", "year": "numeric"},
                                   "skipped": {}}
    assert set(details["column_shapes"]) == set(reference.columns()["compared"]) and len(details["column_pair_trends"]) == 28
    assert "ml_efficacy" not in details

    # the train rows themselves: a perfect copy, and exactly as useful as the real data
    copy, details = reference.score(penguins.frame("train"))
    assert copy["quality_score"] == 1.0 and copy["dcr_median"] == 0.0 and copy["exact_copies"] == 1.0
    assert copy["ml_synthetic"] == copy["ml_real"] > 0.9 and copy["ml_difference"] == 0.0
    assert details["ml_efficacy"] == {"task": "classification", "metric": "macro_f1"}


def test_table_without_label_column_names_what_it_leaves_out(tmp_path, penguins):
    """Free text (not generated) and ids (a distribution of unique values) are left out, each with why;
    without a label column ML efficacy is not measured, and says how to get it."""
    import palmerpenguins

    df = palmerpenguins.load_penguins()
    df["customer_id"] = [f"C{i:05d}" for i in range(len(df))]
    df["note"] = [f"penguin number {i} was seen {['early', 'late', 'at noon'][i % 3]} near the shore by observer {i * 7}"
                  for i in range(len(df))]
    df.to_csv(tmp_path / "birds.csv", index=False)
    genforge.ingest(str(tmp_path / "birds.csv"), "birds")
    birds = open_dataset("birds")
    reference = TableReference.for_dataset(birds, "train", "val")
    assert reference.target is None and "names no label column" in reference.unavailable
    assert "table.label_column=COLUMN" in reference.unavailable
    skipped = reference.columns()["skipped"]
    assert skipped["note"].startswith("text: free text") and skipped["customer_id"].startswith("id: ")
    generated = birds.frame("val").drop(columns=["note"])  # what a table family returns: no free-text column
    row, details = reference.score(generated)
    assert "ml_synthetic" not in row and 0.5 < row["quality_score"] < 1 and "customer_id" not in details["column_shapes"]


def _copula_is_registered() -> None:
    if "copula" not in FAMILIES:
        pytest.fail("model.family copula is not registered yet (genforge.models.FAMILIES lacks it): this test "
                    "runs once the table families land")


def test_evaluate_and_compare_table_runs_end_to_end(penguins, tmp_path):
    _copula_is_registered()
    a = genforge.train(COPULA)
    b = genforge.train({**COPULA, "name": "t2", "train": {"steps": 2, "batch_size": 64}})
    result = invoke("evaluate", str(a.path))
    eval_dir = a.path / "eval"
    assert str(eval_dir / "report.html") in result.stdout
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["kind"] == "table" and metrics["options"]["n"] == 276  # default: the train split's rows
    ref, run = metrics["rows"]
    assert (ref["kind"], ref["name"], ref["n"]) == ("reference", "real held-out (val)", 34)
    assert (run["kind"], run["name"], run["n"]) == ("samples", a.id, 276)
    assert ref["quality_score"] == pytest.approx(0.8797, abs=1e-3)  # the golden figure above
    assert "ml_synthetic" not in ref
    for key in ("quality_score", "column_shapes", "column_pair_trends", "dcr_median", "dcr_p05", "exact_copies",
                "ml_synthetic", "ml_real"):
        assert 0 <= run[key] <= 1, key
    assert run["ml_difference"] == pytest.approx(run["ml_synthetic"] - run["ml_real"]) and run["ml_real"] > 0.9
    assert metrics["ml_efficacy"] == {"available": True, "target": "species", "task": "classification",
                                      "metric": "macro_f1", "train_rows": 276, "test_split": "val", "test_rows": 34}
    assert set(metrics["quality"]) == {ref["name"], a.id} and metrics["columns"]["skipped"] == {}
    [warning] = [w for w in metrics["warnings"] if not w.startswith("training:")]
    assert "34 real rows against 276 samples" in warning
    saved = pd.read_csv(eval_dir / "samples.csv")
    assert len(saved) == 276 and list(saved.columns) == list(penguins.frame("train").columns)
    html = (eval_dir / "report.html").read_text(encoding="utf-8")
    for shown in ("Quality score", "Pair trends", "ML score (synthetic)", "ML difference", "DCR median",
                  "DCR 5th percentile", "Exact copies", "Real held-out rows", "How the table figures are made",
                  "Column shapes, per column", "rows/s", "predicts <b>species</b>", "family: copula"):
        assert shown in html, shown
    console = Console(width=250, record=True)
    console.print(metrics_table(metrics["rows"]))
    terminal = console.export_text()
    assert "rows" in terminal and "Quality score ↑" in terminal and "ML difference ↑" in terminal

    created = metrics["created_at"]
    out = tmp_path / "cmp"
    invoke("compare", str(a.path), str(b.path), "--out", str(out))  # default n: 276 for both, a's evaluation reused
    table = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert table["kind"] == "table" and [r["kind"] for r in table["rows"]] == ["reference", "samples", "samples"]
    assert [r["name"] for r in table["rows"]] == ["real held-out (val)", a.id, b.id]
    assert json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))["created_at"] == created
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Comparison of 2 runs" in html and f"<b>{b.id}</b>: ML efficacy" in html
    with pytest.raises(ConfigError, match="standard FID is an image figure"):
        invoke("evaluate", str(a.path), "--fid")


def test_table_evaluation_reaches_mlflow(penguins, monkeypatch):
    """Every figure of the two rows as a number: eval/<key> and eval_reference/<key>."""
    _copula_is_registered()
    monkeypatch.setenv("GENFORGE_TRACKING", "on")
    run = genforge.train(COPULA)
    genforge.evaluate(run.id, n=50)
    from genforge.tracking import client

    [mlflow_run] = client().search_runs([client().get_experiment_by_name("t").experiment_id])
    logged = mlflow_run.data.metrics
    assert {"eval/quality_score", "eval/ml_difference", "eval/dcr_median", "eval_reference/dcr_median"} <= set(logged)
    assert np.isfinite(logged["eval/quality_score"]) and "eval_reference/ml_synthetic" not in logged
