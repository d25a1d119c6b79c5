"""The VAE family: shapes (grey and RGB, conditional and not), the ELBO's terms, beta and KL warm-up,
training end to end with exact resume, per-item seeds, and reconstruction of a folder through the CLI
with its failure paths."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from genforge.cli import _app
from genforge.config import validate
from genforge.errors import ConfigError, ModelError
from genforge.labels.watermark import psnr
from genforge.models import DataSpec, SampleRequest, get_family
from genforge.models import vae as V
from genforge.runconfig import parse_run_config
from genforge.runs import load_run
from genforge.trainer import train
from imagesets import digits, write_images

TINY_MODEL = dict(family="vae", channels=[8, 16], blocks=1, groups=4, latent=8, class_dim=8)
TINY = {
    "name": "tiny-vae",
    "data": {"dataset": "digits"},
    "model": {**TINY_MODEL, "kl_warmup_steps": 8},
    "train": {"steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 3, "val_every": 6, "val_items": 32,
              "checkpoint_every": 4, "keep_checkpoints": 2, "threads": 1},
}
fam = get_family("vae")


def config(**kw) -> V.Config:
    return validate(V.Config, {**TINY_MODEL, **kw})


def spec(c=1, size=28, classes=10) -> DataSpec:
    return DataSpec("image", c, size, size, tuple(str(i) for i in range(classes)))


@pytest.fixture
def data():
    x, y = digits(160)
    return write_images("digits", x, y, [str(i) for i in range(10)], val=32)


def run_config(model=None, **train):
    return parse_run_config({**TINY, "model": {**TINY["model"], **(model or {})}, "train": {**TINY["train"], **train}})


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("c,size,classes,channels,blocks", [(1, 28, 10, [8, 16], 1), (1, 28, 0, [8, 16], 0),
                                                            (3, 32, 3, [8, 16, 16], 0), (3, 32, 0, [8, 16, 16], 1)])
def test_shapes_grey_rgb_conditional_and_not(c, size, classes, channels, blocks):
    torch.manual_seed(0)
    model = V.VAE(config(channels=channels, blocks=blocks), spec(c, size, classes))
    x = torch.rand(4, c, size, size) * 2 - 1
    y = torch.tensor([0, 1, 2, -1]) if classes else torch.full((4,), -1)  # -1: an unlabeled row
    emb = model.embed(y)
    assert (emb is None) == (classes == 0)
    mu, logvar = model.encoder(x, emb)
    assert mu.shape == logvar.shape == (4, 8)
    assert model.decoder(mu, emb).shape == x.shape
    out = model(x, y, step=0)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert all(p.grad is not None for p in model.parameters())  # every parameter is trained (DDP needs it)
    samples = fam.sample({"model": model.eval()}, spec(c, size, classes), None, SampleRequest.make(5), V.SampleConfig())
    assert samples.images.shape == (5, c, size, size) and samples.images.dtype == np.uint8
    assert samples.labels == (None if classes == 0 else tuple(i % classes for i in range(5)))


def test_nelbo_is_recon_plus_kl_per_dimension():
    torch.manual_seed(0)
    model = V.VAE(config(), spec())
    x, y = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    torch.manual_seed(1)
    out = model(x, y)
    torch.manual_seed(1)  # the same eps: recompute eq. 3 by hand
    emb = model.embed(y)
    mu, logvar = model.encoder(x, emb)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    logits, t = model.decoder(z, emb), (x + 1) / 2
    bce = -(t * torch.nn.functional.logsigmoid(logits) + (1 - t) * torch.nn.functional.logsigmoid(-logits)).sum() / 6
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                           torch.distributions.Normal(0.0, 1.0)).sum() / 6
    torch.testing.assert_close(out["recon"], bce / 784)
    torch.testing.assert_close(out["kl"], kl / 784)
    torch.testing.assert_close(out["nelbo"], out["recon"] + out["kl"])


def test_kl_warmup_is_linear_from_zero_to_beta():
    c = config(beta=0.5, kl_warmup_steps=100)
    assert [V.kl_weight(c, s) for s in (0, 50, 100, 5000)] == [0.0, 0.25, 0.5, 0.5]
    assert V.kl_weight(c, None) == 0.5  # validation: after warm-up
    assert V.kl_weight(config(beta=0.5), 0) == 0.5  # no warm-up
    torch.manual_seed(0)
    model = V.VAE(c, spec())
    out = model(torch.rand(4, 1, 28, 28) * 2 - 1, torch.arange(4), step=0)
    assert out["kl"] > 0 and out["loss"] == out["recon"] and out["kl_weight"] == 0.0


@pytest.mark.parametrize("beta", [0.25, 4.0])
def test_beta_scales_the_kl_term(beta):
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.arange(4)
    outs = []
    for b in (1.0, beta):
        torch.manual_seed(0)  # the same weights
        model = V.VAE(config(beta=b), spec())
        torch.manual_seed(1)  # the same eps
        outs.append(model(x, y, step=10))
    one, scaled = outs
    torch.testing.assert_close(scaled["kl"], one["kl"])
    torch.testing.assert_close(scaled["recon"], one["recon"])
    torch.testing.assert_close(scaled["loss"] - scaled["recon"], beta * (one["loss"] - one["recon"]))
    torch.testing.assert_close(scaled["nelbo"], one["nelbo"])  # the ELBO itself does not depend on beta


@pytest.mark.parametrize("bad,msg", [
    (dict(channels=[8, 10]), "must divide every width"),
    (dict(latent=0), "latent"),
    (dict(beta=0), "beta"),
    (dict(kl_warmup_steps=-1), "kl_warmup_steps"),
    (dict(latent_dim=4), "unknown key 'latent_dim'"),
])
def test_config_errors_name_the_field(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        config(**bad)


@pytest.mark.parametrize("bad,msg", [(dict(temperature=-0.5), "temperature"), (dict(temperature=11), "temperature"),
                                     (dict(reconstruct=3), "reconstruct"), (dict(steps=5), "unknown key 'steps'")])
def test_sample_option_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(V.SampleConfig, bad)


def test_image_size_must_fit_the_levels():
    with pytest.raises(ModelError, match="divisible by 2"):
        V.VAE(config(channels=[8, 8, 8]), spec(1, 28))


def test_health_warns_of_posterior_collapse_after_warm_up():
    c = config(beta=0.5)
    assert "posterior collapse" in fam.health(c, {"kl": 1e-6, "kl_weight": 0.5})
    assert fam.health(c, {"kl": 1e-6, "kl_weight": 0.1}) is None  # still warming up
    assert fam.health(c, {"kl": 0.02, "kl_weight": 0.5}) is None


# ----------------------------------------------------------------------------- sampling

def _random_model(classes=3, size=8):
    torch.manual_seed(0)
    modules = fam.build(config(channels=[8]), spec(1, size, classes), None)
    for p in modules["model"].parameters():  # larger weights than the init: outputs that differ visibly
        torch.nn.init.normal_(p, std=0.3)
    return {k: m.eval() for k, m in modules.items()}


def test_item_i_is_the_same_alone_and_in_a_batch_of_8():
    modules, s = _random_model(), spec(1, 8, 3)
    request = SampleRequest.make(8, seed=7, labels=(2, 0, 1, 1, 2, 0, 0, 1))
    batch = fam.sample(modules, s, None, request, V.SampleConfig()).images
    for i in range(8):
        alone = fam.sample(modules, s, None, request.slice(i, i + 1), V.SampleConfig()).images
        np.testing.assert_array_equal(alone[0], batch[i])
    assert len({img.tobytes() for img in batch}) == 8  # and the items differ
    other = fam.sample(modules, s, None, SampleRequest.make(8, seed=8, labels=request.labels), V.SampleConfig()).images
    assert not np.array_equal(batch, other)


def test_temperature_scales_the_prior_and_labels_are_checked():
    modules, s = _random_model(), spec(1, 8, 3)
    cold = fam.sample(modules, s, None, SampleRequest.make(4, labels=(1, 1, 1, 1)), V.SampleConfig(temperature=0)).images
    assert all(np.array_equal(cold[0], img) for img in cold)  # z = 0 for all: the class's one mean image
    with pytest.raises(ModelError, match="between 0 and 2, got 3"):
        fam.sample(modules, s, None, SampleRequest.make(2, labels=(0, 3)), V.SampleConfig())
    uncond = _random_model(classes=0)
    with pytest.raises(ModelError, match="unconditional"):
        fam.sample(uncond, spec(1, 8, 0), None, SampleRequest.make(1, labels=(0,)), V.SampleConfig())


# ----------------------------------------------------------------------------- training

def test_train_end_to_end_logs_the_elbo_terms_and_samples(data):
    run = load_run(train(run_config()))
    assert run.info["status"] == "completed" and run.info["family"] == "vae" and run.info["step"] == 12
    rows = [m for m in run.metrics() if m["split"] == "train"]
    assert {"nelbo", "recon", "kl", "kl_weight", "grad_norm"} <= set(rows[0])
    assert [m["kl_weight"] for m in rows] == pytest.approx([1 / 8, 3 / 8, 4.5 / 8, 6.5 / 8, 1, 1])  # ramp means
    val = [m for m in run.metrics() if m["split"] == "val"]
    assert [m["step"] for m in val] == [0, 6, 12] and set(val[0]) >= {"nelbo", "recon", "kl"}
    assert val[2]["nelbo"] == pytest.approx(val[2]["recon"] + val[2]["kl"])
    images = run.sample(SampleRequest.make(10, 0)).images
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.uint8


def test_resume_continues_exactly(data):
    """Stop after step 4 (all that is left of a copy), resume: the weights at 12 equal an uninterrupted run's."""
    full = train(run_config())
    crashed = full.parent / "tiny-vae-crashed"
    shutil.copytree(full, crashed)
    info = json.loads((crashed / "run.json").read_text())
    (crashed / "run.json").write_text(json.dumps({**info, "id": crashed.name, "status": "running"}))
    for step in (8, 12):
        shutil.rmtree(crashed / "checkpoints" / f"step-{step:07d}")
    train(run_config(), resume=True, run=crashed.name)
    for fname in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(full / "checkpoints" / "step-0000012" / fname))
        b = load_file(str(crashed / "checkpoints" / "step-0000012" / fname))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), fname


# ----------------------------------------------------------------------------- reconstruction

def _png_folder(path, images):
    path.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[0]).save(path / f"digit-{i:02d}.png")
    return path


def _distances(a, b):
    """Mean squared pixel distance of every image in a (N, C, H, W) to every image in b: (N, M)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return ((a[:, None] - b[None]) ** 2).mean(-1)


def test_reconstruct_through_the_cli_writes_pairs_and_a_trained_model_recognises_each_image(data, tmp_path):
    """Pairs of width 2W, the left half the image given. The quality check cannot pass by accident: the
    reconstructions of at least 6 of 8 held-out digits must be nearer their own original than the 7
    others (an untrained model, checked too, fails that), and nearer than prior samples of the same class."""
    x, y = digits(200)
    held, held_y = x[160:168], tuple(int(v) for v in y[160:168])  # not in the 160 trained on
    folder = _png_folder(tmp_path / "in", held)
    run_dir = train(run_config(dict(blocks=0, latent=16), steps=100, batch_size=32, lr=5e-3, warmup_steps=10, val_every=0,
                               checkpoint_every=100, log_every=100, ema=0.0))
    out = tmp_path / "out"
    res = CliRunner().invoke(_app, ["generate", run_dir.name, "--n", "4", "--set", f"sample.reconstruct={folder}",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    pair = np.asarray(Image.open(out / "sample-0000.png"))
    assert pair.shape == (28, 56) and len(list(out.glob("sample-*.png"))) == 4
    # original left (under the watermark every written PNG carries: ~35 dB on real digits, and the key, made per
    # workspace, varies it), reconstruction right
    assert psnr(pair[:, :28], held[0, 0]) > 30
    assert json.loads((out / "samples.json").read_text())["labels"] == [0, 1, 2, 3]  # the class cycle

    run = load_run(run_dir)
    pairs = run.sample(SampleRequest.make(8, labels=held_y, options={"reconstruct": str(folder)})).images
    assert pairs.shape == (8, 1, 28, 56)
    np.testing.assert_array_equal(pairs[..., :28], held)
    d = _distances(pairs[..., 28:], held)
    assert (d.argmin(1) == np.arange(8)).sum() >= 6, d.round()  # digits of a kind may be near: 6 of 8
    prior = run.sample(SampleRequest.make(8, labels=held_y)).images
    assert np.diag(d).mean() < 0.6 * np.diag(_distances(prior, held)).mean()

    untrained = fam.build(run.model().config, run.data_spec, None)
    untrained["model"].eval()
    raw = fam.sample(untrained, run.data_spec, None, SampleRequest.make(8, labels=held_y),
                     V.SampleConfig(reconstruct=str(folder))).images
    assert (_distances(raw[..., 28:], held).argmin(1) == np.arange(8)).sum() < 6


def test_reconstruct_reads_any_image_into_the_model_shape(tmp_path):
    """An RGB model given a grey image larger than its size: resized as ingest does, grey in every channel."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((48, 64), 200, np.uint8)).save(folder / "b.png")
    Image.fromarray((np.zeros((8, 8, 3)) + [10, 20, 30]).astype(np.uint8)).save(folder / "a.jpg", quality=100)
    (folder / "notes.txt").write_text("not an image")  # other files are not looked at
    images = V.read_images(folder, 0, 2, spec(3, 8, 0))
    assert images.shape == (2, 3, 8, 8)
    assert np.abs(images[0].reshape(3, -1).mean(1) - [10, 20, 30]).max() < 3  # a.jpg first: sorted names
    assert (images[1] == 200).all()


@pytest.mark.parametrize("make,n,msg", [
    (lambda p: None, 1, "must be a folder of images"),
    (lambda p: p.mkdir(), 1, "no image files"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), 1, "no image files"),
    (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"not a png at all")), 1, "cannot read .*a.png: not a readable image"),
    (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"")), 1, "cannot read .*a.png: empty file"),
    (lambda p: (p.mkdir(), Image.new("L", (8, 8)).save(p / "a.png")), 2, "holds 1 image files, fewer than the 2"),
])
def test_reconstruct_bad_folders_are_clear_errors(tmp_path, make, n, msg):
    folder = tmp_path / "in"
    make(folder)
    modules = _random_model()
    with pytest.raises(ModelError, match=msg):
        fam.sample(modules, spec(1, 8, 3), None, SampleRequest.make(n), V.SampleConfig(reconstruct=str(folder)))


def test_reconstruct_bad_folder_through_the_cli(data, tmp_path):
    run_dir = train(run_config(steps=2, val_every=0))
    res = CliRunner().invoke(_app, ["generate", run_dir.name, "--n", "2", "--set",
                                    f"sample.reconstruct={tmp_path / 'missing'}", "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "sample.reconstruct must be a folder of images" in str(res.exception)
    assert not (tmp_path / "out").exists()


def test_reconstruct_a_request_larger_than_one_batch(tmp_path):
    from genforge.sampling import Model

    folder = _png_folder(tmp_path / "in", np.arange(3 * 64, dtype=np.uint8).reshape(3, 1, 8, 8))
    modules = _random_model()
    model = Model("vae", fam, config(channels=[8]), V.SampleConfig(), spec(1, 8, 3), None, modules, torch.device("cpu"),
                  "fp32", None)
    pairs = model.sample(SampleRequest.make(3, options={"reconstruct": str(folder)}), batch_size=2).images
    np.testing.assert_array_equal(pairs[2, :, :, :8], np.asarray(Image.open(folder / "digit-02.png"))[None])
