"""The training loop end to end on a tiny UNet and real digits: the run's artifacts, exact resume
(in process; after SIGKILL, for every family, in test_families.py), damaged checkpoints, budgets and config errors."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from genforge.cli import _app
from genforge.errors import ConfigError
from genforge.models import SampleRequest
from genforge.optim import lr_factor
from genforge.runconfig import RunConfig, parse_run_config
from genforge.runs import load_run
from genforge.trainer import train
from imagesets import digits, write_images

TINY = {
    "name": "tiny",
    "data": {"dataset": "digits"},
    "model": {"family": "diffusion", "channels": [8, 16], "blocks": 1, "attention": [False, True],
              "head_dim": 8, "groups": 4, "timesteps": 100},
    "train": {"steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 3, "val_every": 6, "val_items": 32,
              "checkpoint_every": 4, "keep_checkpoints": 2, "threads": 1},
    "sample": {"steps": 5},
}


@pytest.fixture
def data():
    x, y = digits(160)
    return write_images("digits", x, y, [str(i) for i in range(10)], val=32)


def tiny(**train) -> RunConfig:
    return parse_run_config({**TINY, "train": {**TINY["train"], **train}})


def weights(run_dir, step, fname="model.safetensors"):
    return load_file(str(run_dir / "checkpoints" / f"step-{step:07d}" / fname))


def assert_same(a, b):
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff == 0.0, f"max abs diff {diff}"


def copy_run(src, name):
    """A copy of a run as it would be after a crash: only its early checkpoints left."""
    dst = src.parent / name
    shutil.copytree(src, dst)
    info = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**info, "id": name, "status": "running"}))
    return dst


def test_cli_train_and_generate_write_the_run(data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    res = CliRunner().invoke(_app, ["train", str(cfg), "--set", "train.steps=8"])
    assert res.exit_code == 0, res.output
    run = load_run("latest")
    assert run.info["status"] == "completed" and run.info["step"] == 8 and run.dataset_ref == data
    assert run.info["family"] == "diffusion" and run.info["params"] > 1000 and run.info["wall_s"] > 0
    assert run.data_spec.num_classes == 10 and (run.data_spec.channels, run.data_spec.height) == (1, 28)
    assert run.config.train.steps == 8 and (run.path / "config.yaml").is_file()
    assert [p.name for p in sorted((run.path / "checkpoints").iterdir())] == ["step-0000004", "step-0000008"]
    train_rows = [m for m in run.metrics() if m["split"] == "train"]
    assert [m["step"] for m in train_rows] == [3, 4, 6, 8]  # every log_every, and at each checkpoint
    assert {"loss", "lr", "items_per_s", "grad_norm", "time_s"} <= set(train_rows[0])
    assert [m["step"] for m in run.metrics() if m["split"] == "val"] == [0, 6, 8]  # the untrained model first

    out = tmp_path / "gen"
    args = ["generate", run.id[:8], "--n", "6", "--label", "3", "--set", "sample.steps=4", "--set", "sample.guidance=2.0",
            "--seed", "0"]
    assert CliRunner().invoke(_app, args + ["--out", str(out)]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"] + [f"sample-{i:04d}.png" for i in range(6)] + ["samples.json"]
    assert Image.open(out / "sample-0000.png").size == (28, 28)
    meta = json.loads((out / "samples.json").read_text())
    assert meta["labels"] == [3] * 6 and meta["checkpoint"] == "step-0000008"
    again = tmp_path / "gen2"
    assert CliRunner().invoke(_app, args + ["--out", str(again)]).exit_code == 0
    # same seed, same images: up to the watermark, which carries each image's own generation id (38-40 dB)
    first, second = (np.asarray(Image.open(d / "grid.png")).astype(float) for d in (out, again))
    assert 10 * np.log10(255 ** 2 / np.mean((first - second) ** 2)) > 30

    images = run.sample(SampleRequest.make(10, 0, options={"steps": 3})).images  # classes in turn
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.uint8
    assert not np.array_equal(images, run.sample(SampleRequest.make(10, 1, options={"steps": 3})).images)
    res = CliRunner().invoke(_app, ["generate", run.id, "--n", "2", "--label", "10"])
    assert res.exit_code != 0 and "between 0 and 9, got 10" in str(res.exception)


def test_resume_continues_exactly(data, capsys):
    """Stop after step 4 (all that is left of a copy), resume: the weights at 12 equal an uninterrupted run's."""
    full = train(tiny())
    crashed = copy_run(full, "tiny-crashed")
    for step in (8, 12):
        shutil.rmtree(crashed / "checkpoints" / f"step-{step:07d}")
    train(tiny(), resume=True, run="tiny-crashed")
    for fname in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert_same(weights(full, 12, fname), weights(crashed, 12, fname))
    metrics = [(m["step"], m["split"]) for m in load_run(crashed).metrics()]
    assert metrics == [(m["step"], m["split"]) for m in load_run(full).metrics()]  # nothing logged twice


def test_damaged_newest_checkpoint_falls_back(data, capsys):
    full = train(tiny())
    broken = copy_run(full, "tiny-broken")
    model_file = broken / "checkpoints" / "step-0000012" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])  # truncated
    train(tiny(), resume=True, run="tiny-broken")
    err = capsys.readouterr().err
    assert "step-0000012 is damaged" in err and "falling back" in err
    assert len(list((broken / "checkpoints").glob("step-0000012.damaged-*"))) == 1
    assert_same(weights(full, 12), weights(broken, 12))  # redone from step 8


def test_resume_refuses_a_change_to_the_model_and_may_extend_the_budget(data):
    first = train(tiny(steps=4))
    changed = parse_run_config({**TINY, "model": {**TINY["model"], "channels": [8, 8]}, "train": {**TINY["train"], "steps": 4}})
    with pytest.raises(ConfigError, match=r"model.channels \(run: \[8, 16\], now: \[8, 8\]\)"):
        train(changed, resume=True)
    with pytest.raises(ConfigError, match=r"train.seed"):
        train(tiny(steps=4, seed=1), resume=True)
    assert train(tiny(steps=8, lr=2e-3), resume=True) == first  # more steps, another LR: the same run goes on
    run = load_run(first)
    assert run.info["step"] == 8 and run.config.train.steps == 8 and run.config.train.lr == 2e-3
    assert run.info["resumes"][0]["at_step"] == 4 and "train.steps (run: 4, now: 8)" in run.info["resumes"][0]["changes"]


def test_epochs_and_minutes_budgets(data):
    run = load_run(train(tiny(steps=None, epochs=2, val_every=0)))
    assert run.info["step"] == 2 * (128 // 16)
    run = load_run(train(tiny(steps=None, minutes=0.03, val_every=0, checkpoint_every=1000)))
    assert run.info["status"] == "completed" and run.info["wall_s"] >= 1.8 and run.info["step"] >= 1
    run = load_run(train(tiny(steps=100_000, minutes=0.03, warmup_steps=0, val_every=0, checkpoint_every=1000)))
    assert run.info["wall_s"] >= 1.8 and 1 <= run.info["step"] < 100_000
    assert [m["lr"] for m in run.metrics()][-1] < 0.5 * tiny().train.lr  # the cosine followed the clock


def test_learning_rate_warms_up_then_follows_a_cosine():
    tc = tiny(lr=1.0, warmup_steps=4, min_lr_ratio=0.1).train
    assert [lr_factor(tc, s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(tc, 4, 0.0) == 1.0
    assert lr_factor(tc, 8, 0.5) == pytest.approx(0.55)
    assert lr_factor(tc, 12, 1.0) == pytest.approx(0.1)


@pytest.mark.parametrize("change,msg", [
    ({"train": {**TINY["train"], "epochs": 3}}, "steps or epochs, not both"),
    ({"train": {**TINY["train"], "steps": None}}, "set a budget"),
    ({"train": {**TINY["train"], "lr": -1}}, "train.lr"),
    ({"model": {**TINY["model"], "chanels": [8]}}, "unknown key 'model.chanels'; allowed keys: attention, blocks"),
    ({"model": {"channels": [8]}}, "'model.family' is required"),
    ({"model": {"family": "nope"}}, "model.family must be one of copula, ctgan, diffusion"),
    ({"train": {**TINY["train"], "optimizers": {"critic": {"lr": 1e-4}}}}, "the diffusion family's optimizers are: model"),
    ({"name": "a b"}, "name"),
])
def test_config_errors(change, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_run_config({**TINY, **change})


def test_data_errors(data):
    with pytest.raises(ConfigError, match=r"train.batch_size \(500\) must not exceed the train split \(128 rows\)"):
        train(tiny(batch_size=500))
    with pytest.raises(Exception, match="no dataset named 'nope'"):
        train(parse_run_config({**TINY, "data": {"dataset": "nope"}}))


def test_ddp_is_not_needed_for_one_process(data):
    """WORLD_SIZE unset: no process group is created; the run says world_size 1."""
    run = load_run(train(tiny(steps=2)))
    assert run.info["world_size"] == 1 and not torch.distributed.is_initialized()


@pytest.mark.parametrize("flush", [True, False])
def test_training_flushes_subnormal_floats_unless_told_not_to(data, flush):
    """Subnormal arithmetic is many times slower on x86 (devices.flush_denormals): the trainer has the
    CPU flush it to zero by default, and keeps IEEE subnormals with `train.flush_denormals: false`."""
    try:
        train(tiny(steps=1, val_every=0, flush_denormals=flush))
        assert (torch.tensor([1e-39]) * 1.0).item() == (0.0 if flush else pytest.approx(1e-39))
    finally:
        torch.set_flush_denormal(False)


def test_bf16_autocast_and_nchw_train(data):
    run = load_run(train(tiny(steps=3, precision="bf16", channels_last=False, val_every=3)))
    losses = [m["loss"] for m in run.metrics()]
    assert run.info["status"] == "completed" and all(np.isfinite(losses))
    assert run.sample(SampleRequest.make(2, options={"steps": 2})).images.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("val_every", [0, 2])
def test_the_val_split_is_encoded_only_where_validation_reads_it(data, monkeypatch, val_every):
    import genforge.models.diffusion as family
    splits, encode = [], family.encode

    def recorded(config, spec, fitted, dataset, split):
        splits.append(split)
        return encode(config, spec, fitted, dataset, split)
    monkeypatch.setattr(family, "encode", recorded)
    run = load_run(train(tiny(steps=2, val_every=val_every, checkpoint_every=2)))
    assert splits == (["train"] if val_every == 0 else ["train", "val"])
    assert [m["step"] for m in run.metrics() if m["split"] == "val"] == ([] if val_every == 0 else [0, 2])
