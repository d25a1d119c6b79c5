"""The family contract, run over every registered family: a new family that half-implements it fails here.

Each family: the contract's members with the right parameters; build, train, checkpoint; SIGKILL
mid-run and resume bitwise; a seed per item (item i is the same drawn alone or in a batch of 8); a
self-describing checkpoint loaded from its folder alone; the Python API round trip; fine-tuning
from another run; the NaN guard.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import genforge
from genforge.data.store import open_dataset
from genforge.errors import ConfigError, DataError, ModelError
from genforge.models import FAMILIES, SampleRequest, check_family, get_family
from genforge.runconfig import parse_run_config
from genforge.runs import list_runs, load_run
from genforge.sampling import load_model
from imagesets import digits, write_images
from textsets import corpus, write_texts

TRAIN = {"steps": 8, "batch_size": 16, "warmup_steps": 2, "log_every": 2, "val_every": 4, "val_items": 32,
         "checkpoint_every": 4, "keep_checkpoints": 3, "threads": 1,
         "precision": "fp32"}  # bf16 kernels differ with the batch size beyond 1 level of 255

# The smallest model of each family that still exercises all of it, and the kind of data it eats. A
# family without an entry fails `test_every_family_has_a_tiny_config`: registering one means adding it here.
TINY_MODELS = {
    "diffusion": ({"family": "diffusion", "channels": [8, 16], "blocks": 1, "attention": [False, True], "head_dim": 8,
                   "groups": 4, "timesteps": 100}, {"steps": 3}, "image"),
    "gan": ({"family": "gan", "z_dim": 8, "embed_dim": 4, "g_channels": 8, "d_channels": 8, "r1_gamma": 1.0,
             "r1_every": 2, "n_critic": 2}, {}, "image"),
    "vae": ({"family": "vae", "channels": [8, 16], "blocks": 0, "groups": 4, "latent": 4, "class_dim": 4,
             "kl_warmup_steps": 4}, {}, "image"),
    "gpt": ({"family": "gpt", "vocab_size": 300, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 16},
            {"max_tokens": 6, "top_k": 50, "top_p": 0.95}, "text"),
    "ctgan": ({"family": "ctgan", "embedding_dim": 8, "generator_dims": [16], "discriminator_dims": [16], "pac": 2,
               "generator_batch": "critic", "transform": {"max_modes": 3}}, {}, "table"),  # the shipped config's step
    "tvae": ({"family": "tvae", "embedding_dim": 8, "compress_dims": [16], "decompress_dims": [16],
              "transform": {"max_modes": 3}}, {}, "table"),
    "copula": ({"family": "copula", "quantiles": 51}, {}, "table"),
}
DATASETS = {"image": "digits", "text": "corpus", "table": "penguins"}
# one request per kind whose items differ in their condition: classes, or prompts of different lengths
REQUESTS = {"image": {"labels": (3, 1, 4, 1, 5, 9, 2, 6)},
            "text": {"prompts": ("好", "The prime minister said", "", "这本书的质量", "a", "质量很好，物流也快 👍", "Sydney", "")},
            "table": {"conditions": ({}, {"species": "Gentoo"}, {"sex": "female"}, {}, {"island": "Dream", "species": "Adelie"},
                                     {}, {"year": 2008}, {"bill_length_mm": {"min": 40, "max": 50}})}}


def kind(family: str) -> str:
    return TINY_MODELS[family][2]


def tiny_config(family: str, name: str = "tiny", dataset: str | None = None, **train) -> dict:
    model, sample, k = TINY_MODELS[family]
    return {"name": name, "data": {"dataset": dataset or DATASETS[k]}, "model": model, "train": {**TRAIN, **train},
            "sample": sample}


@pytest.fixture
def data(request):
    """The dataset of the test's family's kind (diffusion's when the test has no family)."""
    family = getattr(request.node, "callspec", None) and request.node.callspec.params.get("family") or "diffusion"
    if kind(family) == "text":
        texts, _ = corpus()
        return write_texts("corpus", texts, val=24)
    if kind(family) == "table":
        return genforge.ingest("builtin:penguins", "penguins")
    x, y = digits(160)
    return write_images("digits", x, y, [str(i) for i in range(10)], val=32)


def same_item(a, i: int, b, j: int) -> bool:
    """Item i of samples a is item j of b: texts exactly, images up to float reassociation (1 level)."""
    if a.kind == "text":
        return a.texts[i] == b.texts[j] and a.finish_reasons[i] == b.finish_reasons[j]
    if a.kind == "table":
        return a.frame.iloc[[i]].reset_index(drop=True).equals(b.frame.iloc[[j]].reset_index(drop=True))
    return np.abs(a.images[i].astype(int) - b.images[j].astype(int)).max() <= 1


def files(run_dir, step):
    ckpt = run_dir / "checkpoints" / f"step-{step:07d}"
    return {f.name: load_file(str(f)) for f in ckpt.glob("*.safetensors")}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for fname in a:
        assert a[fname].keys() == b[fname].keys(), fname
        for k in a[fname]:
            assert torch.equal(a[fname][k], b[fname][k]), f"{fname}:{k} differs"


def test_every_family_has_a_tiny_config():
    assert sorted(TINY_MODELS) == sorted(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_keeps_the_contract(family):
    check_family(get_family(family))


def test_a_half_implemented_family_is_refused():
    half = types.ModuleType("half")
    half.Config, half.KINDS = object, ("image",)
    half.train_step = lambda modules, batch: {}
    with pytest.raises(ModelError) as e:
        check_family(half)
    msg = str(e.value)
    assert "SampleConfig is missing" in msg and "sample() is missing" in msg
    assert "train_step(modules, batch) should take (modules, batch, opt, step)" in msg


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sigkill_mid_run_then_resume_is_bitwise(family, data, tmp_path):
    """A real crash (kill -9 of `genforge train` after its second checkpoint), then `--resume`: every
    weight, EMA and optimizer tensor at the end equals an uninterrupted run's."""
    cfg = tiny_config(family, steps=24, checkpoint_every=2, val_every=0, log_every=2)
    full = genforge.train(cfg).path
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-c", "from genforge.cli import app; app()", "train", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        runs = [p for p, _ in list_runs() if p != full]
        if runs and len(list((runs[0] / "checkpoints").glob("step-*"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [p for p, _ in list_runs() if p != full][0]
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((killed / "run.json").read_text())["status"] == "completed"
    assert_bitwise(files(full, 24), files(killed, 24))
    steps = [m["step"] for m in load_run(killed).metrics()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # nothing logged twice


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_items_do_not_depend_on_their_batch_and_the_folder_describes_itself(family, data, tmp_path):
    run = genforge.train(tiny_config(family))
    request = SampleRequest.make(8, seed=5, **REQUESTS[kind(family)])
    batch = run.sample(request, batch_size=8)
    if kind(family) == "image":
        assert run.sample(SampleRequest.make(12, seed=5), batch_size=5).labels == tuple(i % 10 for i in range(12))
    for i in (0, 1, 3, 7):
        assert same_item(run.sample(request.slice(i, i + 1), batch_size=1), 0, batch, i), i
    other = run.sample(SampleRequest.make(8, seed=6, **REQUESTS[kind(family)]))
    assert not all(same_item(batch, i, other, i) for i in range(8))

    folder = tmp_path / "exported"
    shutil.copytree(run.checkpoint().path, folder)  # nothing of the run but this folder
    shutil.rmtree(run.path)
    model = load_model(folder)
    assert model.family_name == family and model.spec.kind == kind(family)
    again = model.sample(request)
    assert all(same_item(again, i, batch, i) for i in range(8))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_python_api_round_trip_and_fine_tuning(family, data, tmp_path):
    run = genforge.train(tiny_config(family, name="base"))
    assert run.info["status"] == "completed" and run.info["family"] == family and run.info["step"] == 8
    info = run.checkpoint().model_info()
    assert info["family"] == family and info["data_spec"]["kind"] == kind(family)

    if kind(family) == "image":
        assert info["data_spec"]["height"] == 28
        out = genforge.generate(run.id, 4, seed=1, labels=["7"], out=tmp_path / "gen")
        assert out.samples.labels == (7, 7, 7, 7) and out.path == tmp_path / "gen" / "grid.png" and out.path.is_file()
        sidecar = json.loads((tmp_path / "gen" / "samples.json").read_text())
        assert sidecar["checkpoint"] == run.checkpoint().path.name and sidecar["ai_generated"] is True
        with pytest.raises(ModelError, match="unknown class 'cat'"):
            genforge.generate(run.id, 1, labels=["cat"])
    elif kind(family) == "table":
        out = genforge.generate(run.id, 6, seed=1, conditions=[{"species": "Chinstrap"}] * 6, out=tmp_path / "gen.csv")
        import pandas as pd
        back = pd.read_csv(out.path)
        assert out.path == tmp_path / "gen.csv" and list(back.columns) == list(open_dataset("penguins").frame("train").columns)
        assert set(back["species"]) == {"Chinstrap"} and len(back) == 6
        assert json.loads((tmp_path / "gen.samples.json").read_text())["ai_generated"] is True  # the table's sidecar
        with pytest.raises(ConfigError, match="Adelie"):  # an unknown category lists the known ones
            genforge.generate(run.id, 1, conditions=[{"species": "Emperor"}])
    else:
        out = genforge.generate(run.id, 2, seed=1, prompts=["好", "The"], out=tmp_path / "gen")
        records = [json.loads(line) for line in out.path.read_text(encoding="utf-8").splitlines()]
        assert out.path == tmp_path / "gen" / "samples.jsonl" and [r["prompt"] for r in records] == ["好", "好", "The", "The"]
        assert all(r["checkpoint"] == run.checkpoint().path.name and r["finish_reason"] in ("stop", "length") and r["ai_generated"]
                   and r["text"] == t for r, t in zip(records, out.samples.texts))
    with pytest.raises(ConfigError, match="sample options"):
        genforge.generate(run.id, 1, options={"no_such_option": 1})

    # fine-tuning starts from the source's weights (its EMA where kept): with a vanishing LR they stay put
    names = get_family(family).optimizers(parse_run_config(tiny_config(family)).model)
    tuned = genforge.train(tiny_config(family, name="tuned", steps=2, init_from=run.id,
                                       optimizers={name: {"lr": 1e-12} for name in names}))
    assert tuned.info["init_from"] == str(run.checkpoint().path)
    src = run.checkpoint()
    start = src.tensors("ema.safetensors") if src.has("ema.safetensors") else {}
    start = {**src.tensors("model.safetensors"), **start}
    got = tuned.checkpoint().tensors("model.safetensors")
    params = {f"{name}.{k}" for name, m in tuned.model().modules.items() for k, _ in m.named_parameters()}
    if names:  # a closed-form family (the copula) has no weights to carry over: it is fitted on the new data
        assert params and max((got[k].float() - start[k].float()).abs().max().item() for k in params) < 1e-6  # buffers move

    other = dict(tiny_config(family, name="bad"), model={**TINY_MODELS[family][0]})
    x, y = digits(80)
    write_images("small", x[:, :, :16, :16].copy(), y, [str(i) for i in range(10)], val=16)
    with pytest.raises(DataError, match={"image": "shape", "text": "trains on text datasets",
                                         "table": "train on table datasets"}[kind(family)]):
        genforge.train({**other, "data": {"dataset": "small"}, "train": {**TRAIN, "init_from": run.id}})


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, monkeypatch):
    fam = get_family("diffusion")
    real_step = fam.train_step

    def breaks_at_step_6(modules, batch, opt, step):
        out = real_step(modules, batch, opt, step)
        return {**out, "loss": out["loss"] * float("nan")} if step >= 5 else out

    monkeypatch.setattr(fam, "train_step", breaks_at_step_6)
    with pytest.raises(ModelError, match=r"training diverged: loss became nan by step 6; .* last good checkpoint is step-0000004"):
        genforge.train(tiny_config("diffusion", log_every=2, checkpoint_every=4))
    (path, info), = list_runs()
    assert info["status"] == "failed" and [p.name for p in (path / "checkpoints").iterdir()] == ["step-0000004"]


def test_resume_changes_are_recorded_and_a_new_run_that_fails_early_leaves_nothing(data):
    with pytest.raises(ConfigError, match="must not exceed the train split"):
        genforge.train(tiny_config("diffusion", batch_size=1000))
    assert list_runs() == [] and not list((Path(os.environ["GENFORGE_HOME"]) / "runs").glob("*"))
    with pytest.raises(ConfigError, match="train.optimizers has 'critic'"):
        parse_run_config(tiny_config("diffusion", optimizers={"critic": {"lr": 1e-4}}))
    with pytest.raises(ConfigError, match=r"train.lr is not used: every optimizer of the gan family \(generator, "
                                          r"discriminator\) has its own; set train.optimizers.<name>.lr instead"):
        parse_run_config(tiny_config("gan", lr=5e-4))
    parse_run_config(tiny_config("gan", grad_clip=0.5, optimizers={"generator": {"lr": 1e-4}}))


def test_split_samples_undoes_concat_samples():
    """What the service's batcher relies on to hand each merged request its own items back."""
    import pandas as pd

    from genforge.models import ImageSamples, TableSamples, TextSamples, concat_samples, split_samples
    kinds = [ImageSamples(np.arange(5 * 4).reshape(5, 1, 2, 2).astype(np.uint8), (1, 2, 3, 4, 5)),
             TextSamples(list("abcde"), list("vwxyz"), ["stop"] * 5, [1, 2, 3, 4, 5]),
             TableSamples(pd.DataFrame({"x": range(5), "y": list("abcde")}))]
    for samples in kinds:
        parts = split_samples(samples, [2, 0, 3])
        assert [len(p) for p in parts] == [2, 0, 3]
        back = concat_samples([p for p in parts if len(p)])
        if samples.kind == "table":
            assert back.frame.equals(samples.frame)
        elif samples.kind == "image":
            assert np.array_equal(back.images, samples.images) and back.labels == samples.labels
        else:
            assert back == samples
