"""Split (deterministic, order-free, stratified), quality gate (rules, figures, --force) and the
ingest command's config handling, seen from the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from genforge.data.gate import GateStats, run_gate
from genforge.data.options import GateOptions, SplitOptions
from genforge.data.split import assign_splits, split_summary
from genforge.data.store import open_dataset

KEYS = [f"key{i}" for i in range(1000)]


def test_split_is_deterministic_order_free_and_seeded():
    labels = np.arange(1000) % 4
    a = assign_splits(KEYS, labels, SplitOptions())
    assert np.array_equal(a, assign_splits(KEYS, labels, SplitOptions()))
    perm = np.random.default_rng(0).permutation(1000)
    shuffled = assign_splits([KEYS[i] for i in perm], labels[perm], SplitOptions())
    assert np.array_equal(shuffled, a[perm])  # each example lands in the same split whatever the input order
    other = assign_splits(KEYS, labels, SplitOptions(seed=1))
    assert (other != a).sum() > 100 and sorted(other) == sorted(a)


def test_split_is_stratified_and_small_classes_reach_every_split():
    labels = np.array([0] * 700 + [1] * 290 + [2] * 10)
    a = assign_splits(KEYS, labels, SplitOptions(val=0.1, test=0.2))
    for c, n in ((0, 700), (1, 290), (2, 10)):
        got = {s: int(((a == s) & (labels == c)).sum()) for s in ("train", "val", "test")}
        assert got == {"val": round(n * 0.1), "test": round(n * 0.2), "train": n - round(n * 0.1) - round(n * 0.2)}
    tiny = assign_splits(["a", "b", "c"], np.array([0, 0, 0]), SplitOptions())
    assert sorted(tiny) == ["test", "train", "val"]
    summary = split_summary(a, labels, ["x", "y", "z"], SplitOptions(val=0.1, test=0.2))
    assert summary["stratified"] and summary["sizes"] == {"train": 700, "val": 100, "test": 200}
    assert summary["per_class"]["val"] == {"x": 70, "y": 29, "z": 1}


def test_unlabeled_split_uses_the_overall_fractions():
    a = assign_splits(KEYS, np.full(1000, -1), SplitOptions())
    assert [(a == s).sum() for s in ("train", "val", "test")] == [800, 100, 100]
    assert not split_summary(a, None, [], SplitOptions())["stratified"]


def test_gate_names_each_failed_rule_with_its_figure():
    stats = GateStats(n_examples=12, per_class={"cat": 9, "dog": 3}, duplicate_share=0.6, unreadable_share=0.25,
                      min_resolution=8, missing_share={"a": 0.1, "b": 0.7}, length_violation_share=None)
    report = run_gate(stats, GateOptions())
    assert not report.passed
    assert {r.rule for r in report.failed} == {"min_examples", "min_per_class", "max_duplicate_share",
                                             "max_unreadable_share", "min_resolution", "max_missing_share"}
    text = report.summary()
    for line in ("min_examples: 12 examples, at least 100 required", "min_per_class: class 'dog' has 3 examples",
                 "max_duplicate_share: 0.6 of the input", "max_unreadable_share: 0.25 of the input",
                 "min_resolution: smallest image side is 8 px, at least 16", "max_missing_share: column 'b' is 0.7 missing"):
        assert line in text
    state = {r.rule: r.passed for r in report.rules}
    assert state["max_length_violation_share"] is None  # no figure: not applicable
    off = run_gate(stats, GateOptions(min_examples=None, min_per_class=2, max_duplicate_share=None, max_unreadable_share=0.3,
                                      min_resolution=None, max_missing_share=None))
    assert off.passed and not off.forced and {r.detail for r in off.rules if r.passed is None} == {"switched off", "not applicable"}
    assert run_gate(stats, GateOptions(), force=True).to_json()["forced"] is True


# ---- the command line -------------------------------------------------------------------


def genforge(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The real entry point in a fresh process: exit codes and messages as a user sees them."""
    env = {"GENFORGE_HOME": str(home), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", "from genforge.cli import app; app()", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def small_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, n in (("big", 8), ("small", 2)):
        (root / c).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)).save(root / c / f"{k}.png")
    (root / "small" / "broken.png").write_bytes(b"not an image")
    return root


def test_failed_gate_exits_nonzero_naming_rules_and_force_is_recorded(tmp_path, workspace):
    folder = small_folder(tmp_path / "f")
    base = ["data", "ingest", str(folder), "--name", "tiny", "--set", "image.workers=1"]
    failed = genforge(*base, home=workspace)
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "Traceback" not in out, out
    assert "failed the quality gate" in out
    assert "min_examples: 10 examples, at least 100 required" in out
    assert "min_per_class: class 'small' has 2 examples, at least 10 required" in out
    assert "max_unreadable_share" not in out  # 1 of 11 files unreadable: within 0.1, so not named
    assert not any(p.is_dir() for p in (workspace / "datasets" / "tiny").iterdir())  # nothing published, no temporaries
    rejected = json.loads((workspace / "datasets" / "tiny" / "rejected.json").read_text())
    assert rejected["counts"]["skipped"] == 1 and rejected["gate"]["passed"] is False

    forced = genforge(*base, "--force", home=workspace)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "FAILED (forced)" in forced.stdout
    gate = open_dataset("tiny").manifest.gate
    assert gate["forced"] is True and gate["passed"] is False
    listed = genforge("data", "list", home=workspace)
    assert "forced" in listed.stdout


def test_unknown_key_and_overrides_from_the_command_line(tmp_path, workspace):
    folder = small_folder(tmp_path / "f")
    bad = genforge("data", "ingest", str(folder), "--name", "t", "--set", "image.sise=16", home=workspace)
    assert bad.returncode == 1 and "unknown key 'image.sise'; allowed keys: channels, chunk_size" in bad.stderr
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("gate:\n  min_exampels: 1\n")
    bad_yaml = genforge("data", "ingest", str(folder), "--name", "t", "--config", str(yaml_file), home=workspace)
    assert bad_yaml.returncode == 1 and "unknown key 'gate.min_exampels'" in bad_yaml.stderr and "min_examples" in bad_yaml.stderr

    yaml_file.write_text("image:\n  size: 24\n  workers: 1\ngate:\n  min_examples: 1\n  min_per_class: 1\n")
    ok = genforge("data", "ingest", str(folder), "--name", "t", "--config", str(yaml_file), "--set", "image.size=16", home=workspace)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    m = open_dataset("t").manifest
    assert m.config["image"]["size"] == 16 and m.data_schema["height"] == 16 and m.config["gate"]["min_examples"] == 1
