"""The GAN family: the networks at every supported size, both losses, lazy R1, the n_critic schedule,
the two optimizers' own settings, a run end to end that resumes bitwise, the discriminator-wins warning,
a seed per item, and R1 under torchrun with two processes."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import genforge
from genforge.config import validate
from genforge.errors import ConfigError, ModelError
from genforge.models import DataSpec, SampleRequest, get_family, to_unit
from genforge.models import gan as G
from genforge.optim import make_optimizers
from genforge.runconfig import parse_run_config
from genforge.runs import list_runs, load_run
from genforge.trainer import train
from imagesets import digits, write_images
from test_ddp import torchrun

MODEL = {"family": "gan", "z_dim": 8, "embed_dim": 4, "g_channels": 4, "d_channels": 4}
TRAIN = {"steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 3, "val_every": 6, "val_items": 32,
         "checkpoint_every": 4, "keep_checkpoints": 3, "threads": 1, "precision": "fp32"}
KEYS = {"d_loss", "g_loss", "d_real", "d_fake", "r1", "d_win_streak"}
fam = get_family("gan")


def config(**kw) -> G.Config:
    return validate(G.Config, {**MODEL, **kw})


def spec(c=1, size=28, classes=10) -> DataSpec:
    return DataSpec("image", c, size, size, tuple(str(i) for i in range(classes)))


def run_config(model=None, **train):
    return parse_run_config({"name": "tiny", "data": {"dataset": "digits"}, "model": {**MODEL, **(model or {})},
                             "train": {**TRAIN, **train}})


def fake_batch(classes=10):
    """8 random 28x28 gray images; labeled but for the first row (-1), or all -1 when unconditional."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (8,), generator=g) if classes else torch.full((8,), -1)
    labels[0] = -1
    return {"images": torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=g), "labels": labels}


class Recorder:
    """Stands in for the trainer's Optimizers: backward only, keeping each optimizer's gradients."""

    def __init__(self, modules):
        self.modules, self.names, self.grads = modules, [], {}

    def step(self, name, loss):
        module = self.modules[name]
        module.zero_grad(set_to_none=True)
        loss.backward()
        self.names.append(name)
        self.grads[name] = torch.cat([p.grad.flatten() for p in module.parameters()])


@pytest.fixture
def data():
    x, y = digits(160)
    return write_images("digits", x, y, [str(i) for i in range(10)], val=32)


def checkpoint_files(run_dir, step):
    return {f.name: load_file(str(f)) for f in (run_dir / "checkpoints" / f"step-{step:07d}").glob("*.safetensors")}


def assert_bitwise(a, b):
    assert a.keys() == b.keys() == {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    for fname in a:
        assert a[fname].keys() == b[fname].keys(), fname
        for k in a[fname]:
            assert torch.equal(a[fname][k], b[fname][k]), f"{fname}:{k} differs"


def crashed_copy(run_dir, name, keep_until):
    """A copy of a finished run as a crash after step `keep_until` would leave it."""
    dst = run_dir.parent / name
    shutil.copytree(run_dir, dst)
    info = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**info, "id": name, "status": "running"}))
    for ckpt in (dst / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > keep_until:
            shutil.rmtree(ckpt)
    return dst


# ----------------------------------------------------------------------------- the networks

@pytest.mark.parametrize("c,size,classes,stages", [(1, 28, 10, 2), (3, 32, 3, 3), (3, 32, 0, 3), (1, 28, 0, 2),
                                                   (3, 64, 5, 4)])
def test_shapes_gray_and_rgb_conditional_and_unconditional(c, size, classes, stages):
    torch.manual_seed(0)
    modules = fam.build(config(), spec(c, size, classes), None)
    g, d = modules["generator"], modules["discriminator"]
    assert G.upsampling_stages(spec(c, size))[0] == stages and len(g.ups) == len(d.downs) == stages
    assert (g.embed is None) == (d.embed is None) == (classes == 0)
    y = torch.tensor([0, classes - 1]) if classes else None
    x = g(torch.randn(2, 8), y)
    assert x.shape == (2, c, size, size) and x.abs().max() <= 1
    logits = d(x, y)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert all(p.grad is not None for m in (g, d) for p in m.parameters())


def test_sizes_it_cannot_build_are_refused():
    assert [G.upsampling_stages(spec(1, s)) for s in (8, 28, 32, 48, 64)] == [(1, 4), (2, 7), (3, 4), (3, 6), (4, 4)]
    for size in (4, 7, 30, 36):
        with pytest.raises(ModelError, match=f"4 to 7 times a power of two .* got {size}"):
            fam.build(config(), spec(1, size), None)
    with pytest.raises(ModelError, match="square images, got 28x32"):
        fam.build(config(), DataSpec("image", 1, 28, 32), None)


def test_projection_head_is_psi_plus_class_embedding_dot_phi():
    """Miyato & Koyama eq. 3, and an unlabeled real (-1) scored by psi alone."""
    torch.manual_seed(0)
    d = fam.build(config(), spec(1, 28, 3), None)["discriminator"].eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = d(x, torch.tensor([0, 2, -1]))
        h = F.leaky_relu(d.stem(x), 0.1)
        for down in d.downs:
            h = F.leaky_relu(down(h), 0.1)
        phi = h.flatten(1)
        psi = d.psi(phi).squeeze(1)
        v = d.embed.weight  # spectrally normalised V
    torch.testing.assert_close(out, psi + torch.stack([phi[0] @ v[0], phi[1] @ v[2], torch.tensor(0.0)]))


# ----------------------------------------------------------------------------- losses and the step

def test_hinge_and_nonsaturating_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert G.d_loss_fn("hinge", real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert G.g_loss_fn("hinge", fake).item() == pytest.approx(1.0)
    want_d = -(torch.sigmoid(real).log().mean() + (1 - torch.sigmoid(fake)).log().mean())
    assert G.d_loss_fn("nonsaturating", real, fake).item() == pytest.approx(want_d.item(), rel=1e-6)
    assert G.g_loss_fn("nonsaturating", fake).item() == pytest.approx(-torch.sigmoid(fake).log().mean().item(), rel=1e-6)


@pytest.mark.parametrize("loss,classes", [("hinge", 10), ("nonsaturating", 10), ("hinge", 0)])
def test_train_step_with_each_loss(loss, classes):
    torch.manual_seed(0)
    modules = fam.build(config(loss=loss), spec(classes=classes), None)
    rec = Recorder(modules)
    out = fam.train_step(modules, fake_batch(classes=classes), rec, 0)
    assert rec.names == ["discriminator", "generator"] and set(out) == KEYS
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in out.values())
    assert out["d_loss"] > 0 and out["r1"] == 0
    if loss == "hinge":
        assert out["g_loss"].item() == pytest.approx(-out["d_fake"].item())
    assert rec.grads["generator"].abs().sum() > 0 and rec.grads["discriminator"].abs().sum() > 0


def test_r1_runs_every_r1_every_steps_and_changes_the_discriminators_gradient():
    torch.manual_seed(0)
    base = fam.build(config(), spec(), None)

    def d_grad(step, **kw):
        modules = copy.deepcopy(base)  # spectral norm's power iteration changes D in every forward
        modules["discriminator"].config = config(**kw)
        rec = Recorder(modules)
        torch.manual_seed(1)
        out = fam.train_step(modules, fake_batch(), rec, step)
        return rec.grads["discriminator"], out["r1"].item()

    plain, r1_off = d_grad(4)
    regularised, r1 = d_grad(4, r1_gamma=10.0, r1_every=4)
    assert r1_off == 0.0 and r1 > 0
    assert (regularised - plain).abs().max() > 1e-3 * plain.abs().max()
    between, r1_between = d_grad(5, r1_gamma=10.0, r1_every=4)  # lazy: not on this step
    assert r1_between == 0.0 and torch.equal(between, d_grad(5)[0])


def test_r1_is_gamma_half_the_squared_input_gradient_times_r1_every():
    torch.manual_seed(0)
    modules = fam.build(config(r1_gamma=3.0, r1_every=2), spec(), None)
    batch = fake_batch()
    d = copy.deepcopy(modules["discriminator"]).eval()  # no power iteration: the same weights as the step's
    real = to_unit(batch["images"]).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(real, batch["labels"]).sum(), real)
    want = 3.0 / 2 * grad.square().sum(dim=(1, 2, 3)).mean() * 2
    modules["discriminator"].eval()  # the same D as above inside the step
    out = fam.train_step(modules, batch, Recorder(modules), 0)
    assert out["r1"].item() == pytest.approx(want.item(), rel=1e-4)


def test_n_critic_discriminator_steps_per_generator_step_with_the_same_keys():
    torch.manual_seed(0)
    modules = fam.build(config(n_critic=3), spec(), None)
    rec = Recorder(modules)
    keys = []
    for step in range(7):
        keys.append(set(fam.train_step(modules, fake_batch(), rec, step)))
    assert rec.names == ["discriminator", "generator"] + ["discriminator"] * 2 + ["discriminator", "generator"] + \
        ["discriminator"] * 2 + ["discriminator", "generator"]  # G at steps 0, 3, 6
    assert all(k == KEYS for k in keys)
    assert all(p.requires_grad for p in modules["discriminator"].parameters())  # given back after each G step


def test_the_two_optimizers_have_their_own_settings():
    cfg = run_config(optimizers={"generator": {"lr": 1e-3, "betas": [0.0, 0.99]}})
    modules = fam.build(cfg.model, spec(), None)
    opts = make_optimizers(fam, cfg, modules, torch.device("cpu"))
    assert set(opts) == {"generator", "discriminator"}
    want = {"generator": (1e-3, (0.0, 0.99)), "discriminator": (4e-4, (0.5, 0.999))}  # run override; family default
    for name, (lr, betas) in want.items():
        groups = opts[name].param_groups
        assert {g["lr"] for g in groups} == {lr} and {g["betas"] for g in groups} == {betas}
        assert {g["weight_decay"] for g in groups} == {0.0}
        assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in modules[name].parameters()}
    with pytest.raises(ConfigError, match="train.lr is not used"):  # each optimizer has its own
        run_config(lr=0.5)
    with pytest.raises(ConfigError, match="the gan family's optimizers are: generator, discriminator"):
        run_config(optimizers={"model": {"lr": 1e-3}})


# ----------------------------------------------------------------------------- runs

def test_train_end_to_end_then_resume_bitwise(data):
    """Stop after step 4 (all that is left of a copy), resume: every weight, EMA and optimizer tensor at 12
    equals the uninterrupted run's; with n_critic 2 and lazy R1 on, both paths cross the resume point."""
    full = train(run_config({"n_critic": 2, "r1_gamma": 1.0, "r1_every": 3}))
    run = load_run(full)
    assert run.info["status"] == "completed" and run.info["step"] == 12 and run.info["family"] == "gan"
    rows = [m for m in run.metrics() if m["split"] == "train"]
    assert [m["step"] for m in rows] == [3, 4, 6, 8, 9, 12]
    assert all(KEYS | {"grad_norm_generator", "grad_norm_discriminator"} <= set(m) for m in rows)
    assert run.info["final_loss"] == rows[-1]["d_loss"]
    assert {"d_loss", "d_real", "d_fake"} <= set([m for m in run.metrics() if m["split"] == "val"][0])
    files = checkpoint_files(full, 12)
    assert {k.split(".")[0] for k in files["model.safetensors"]} == {"generator", "discriminator"}
    assert {k.split(".")[0] for k in files["ema.safetensors"]} == {"generator"}  # sampling uses G's EMA
    assert "discriminator.win_streak" in files["model.safetensors"]
    images = run.sample(SampleRequest.make(10, 0)).images
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.uint8

    crashed = crashed_copy(full, "tiny-crashed", keep_until=4)
    train(run_config({"n_critic": 2, "r1_gamma": 1.0, "r1_every": 3}), resume=True, run="tiny-crashed")
    assert_bitwise(files, checkpoint_files(crashed, 12))
    assert [(m["step"], m["split"]) for m in load_run(crashed).metrics()] == [(m["step"], m["split"]) for m in run.metrics()]


def test_a_run_resumed_between_generator_steps_goes_on(data):
    """Resumed at step 3 with n_critic 2, the first step updates only the critic: the generator's
    gradient norm appears a step later, and the trainer's logged sums take it (a version that fixed
    the logged scalars at the first step refused this run)."""
    full = train(run_config({"n_critic": 2}, checkpoint_every=3, keep_checkpoints=4))
    crashed = crashed_copy(full, "tiny-odd", keep_until=3)
    train(run_config({"n_critic": 2}, checkpoint_every=3, keep_checkpoints=4), resume=True, run="tiny-odd")
    run = load_run(crashed)
    assert run.info["status"] == "completed" and run.info["step"] == 12
    assert [r["at_step"] for r in run.info["resumes"]] == [3]
    assert all("grad_norm_generator" in m for m in run.metrics() if m["split"] == "train")


def test_health_warns_when_the_discriminator_wins_outright():
    cfg = config(d_win_steps=50)
    assert fam.health(cfg, {"d_win_streak": 49.9, "d_loss": 0.0}) is None
    assert "50 steps in a row" in fam.health(cfg, {"d_win_streak": 50.0})
    assert fam.health(cfg, {}) is None


def test_a_winning_discriminator_reaches_run_json_warnings(data):
    """A frozen G against a fast D: D separates every real from every fake within a few steps."""
    cfg = run_config({"d_win_steps": 2}, steps=8, log_every=4, val_every=0, warmup_steps=0,
                     optimizers={"generator": {"lr": 1e-12}, "discriminator": {"lr": 1e-2}})
    run = load_run(train(cfg))
    warning = fam.health(cfg.model, {"d_win_streak": 2})
    assert run.info["warnings"] == [warning]  # once, however often it fired
    health = [m for m in run.metrics() if m["split"] == "health"]
    assert health and all(m["warning"] == warning for m in health)
    last = [m for m in run.metrics() if m["split"] == "train"][-1]
    assert last["d_win_streak"] >= 2 and "lr" not in last  # each optimizer's own rate is logged
    assert last["lr_discriminator"] > 1e6 * last["lr_generator"] and {"grad_norm_generator", "grad_norm_discriminator"} <= set(last)
    metrics = genforge.evaluate(run.id, n=16, fid=False)  # and the report says so
    assert f"training: {warning}" in metrics["warnings"]
    assert "generator is not catching up" in (run.path / "eval" / "report.html").read_text()


# ----------------------------------------------------------------------------- sampling

def test_items_do_not_depend_on_their_batch_and_options_are_checked():
    torch.manual_seed(0)
    modules = fam.build(config(), spec(1, 28, 10), None)
    for m in modules.values():
        m.eval()
    # labels given: a slice of a request without them would cycle the classes from 0 again
    request = SampleRequest.make(8, seed=5, labels=(3, 1, 4, 1, 5, 9, 2, 6))
    opts = G.SampleConfig()

    def draw(req, options=opts):
        with torch.inference_mode():
            return fam.sample(modules, spec(1, 28, 10), None, req, options)

    batch = draw(request)
    assert batch.images.shape == (8, 1, 28, 28) and batch.images.dtype == np.uint8 and batch.labels == (3, 1, 4, 1, 5, 9, 2, 6)
    for i in range(8):
        alone = draw(request.slice(i, i + 1)).images[0].astype(int)
        assert np.abs(alone - batch.images[i].astype(int)).max() <= 1, i  # float reassociation at most
    assert not np.array_equal(batch.images, draw(SampleRequest.make(8, seed=6)).images)
    assert not np.array_equal(batch.images, draw(request, G.SampleConfig(truncation=0.5)).images)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="truncation"):
            validate(G.SampleConfig, {"truncation": bad})
    assert draw(SampleRequest.make(20)).labels == tuple(i % 10 for i in range(20))  # no labels: classes in turn
    with pytest.raises(ModelError, match="between 0 and 9, got 10"):
        draw(SampleRequest.make(1, labels=(10,)))
    modules["generator"].train()
    with pytest.raises(ModelError, match="eval mode"):
        draw(request)
    uncond = {k: m.eval() for k, m in fam.build(config(), spec(3, 32, 0), None).items()}
    assert fam.sample(uncond, spec(3, 32, 0), None, SampleRequest.make(2), opts).images.shape == (2, 3, 32, 32)
    with pytest.raises(ModelError, match="unconditional"):
        fam.sample(uncond, spec(3, 32, 0), None, SampleRequest.make(1, labels=(0,)), opts)


# ----------------------------------------------------------------------------- two processes

# two torchrun launches: about a minute on two cores; in CI, as the issue asks for a GAN under torchrun
def test_r1_under_torchrun_two_processes_completes_and_resumes_bitwise(data, tmp_path):
    """GRAD_SYNC = "optimizer": R1's double backward with gradients all-reduced in the optimizer step."""
    cfg = {"name": "gan-ddp", "data": {"dataset": "digits"}, "model": {**MODEL, "n_critic": 2, "r1_gamma": 1.0, "r1_every": 3},
           "train": {**TRAIN, "val_every": 0}}
    path = tmp_path / "gan-ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun("train", str(path))
    (run_dir, info), = list_runs()
    assert info["status"] == "completed" and info["world_size"] == 2 and info["step"] == 12
    assert len([m for m in load_run(run_dir).metrics() if m["split"] == "train"]) == 6  # rank 0 alone wrote

    crashed = crashed_copy(run_dir, "gan-ddp-crashed", keep_until=4)
    torchrun("train", str(path), "--resume-from", str(crashed))
    assert_bitwise(checkpoint_files(run_dir, 12), checkpoint_files(crashed, 12))
