"""The diffusion family: the UNet at every supported size, the schedules, and the samplers
checked against an oracle denoiser whose answer is known exactly."""

import numpy as np
import pytest
import torch

from genforge.config import validate
from genforge.errors import ConfigError, ModelError
from genforge.models import DataSpec, SampleRequest, get_family
from genforge.models import diffusion as D

TINY = dict(family="diffusion", channels=[8, 16], blocks=1, attention=[False, True], head_dim=8, groups=4, timesteps=50)


def config(**kw) -> D.Config:
    return validate(D.Config, {**TINY, **kw})


def spec(c=1, size=28, classes=3) -> DataSpec:
    return DataSpec("image", c, size, size, tuple(str(i) for i in range(classes)))


@pytest.mark.parametrize("c,size,classes,levels", [(1, 28, 10, 2), (3, 32, 3, 3), (3, 64, 0, 4), (1, 32, 0, 3)])
def test_unet_shapes_grayscale_rgb_and_resolutions(c, size, classes, levels):
    cfg = config(channels=[8, 16, 16, 16][:levels], attention=[False, False, True, True][:levels])
    torch.manual_seed(0)
    model = D.Diffusion(cfg, spec(c, size, classes)).to(memory_format=torch.channels_last)
    x = torch.randn(2, c, size, size)
    y = torch.tensor([0, 1]) if classes else None
    assert model.unet(x, torch.tensor([3, 40]), y).shape == x.shape
    assert (model.unet.class_emb is None) == (classes == 0)
    loss = model(x.clamp(-1, 1), torch.tensor([0, -1]))  # -1: unlabeled, trains the "no label" branch
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_unet_size_follows_config():
    small = sum(p.numel() for p in D.UNet(config(), 3, 3).parameters())
    big = sum(p.numel() for p in D.UNet(config(channels=[16, 32]), 3, 3).parameters())
    assert 3.5 < big / small < 4.5  # widths doubled: ~4x the parameters


@pytest.mark.parametrize("bad,msg", [
    (dict(attention=[True]), "one flag per level"),
    (dict(channels=[8, 18]), "must divide every width"),
    (dict(channels=[8, 12], groups=4), "head_dim"),
    (dict(prediction="x0"), "prediction"),
    (dict(width=3), "unknown key 'width'"),
])
def test_config_errors_name_the_field(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        config(**bad)


def test_image_size_must_fit_the_levels():
    with pytest.raises(ModelError, match="divisible by 2"):
        D.Diffusion(config(channels=[8, 16, 16, 16], attention=[False, False, False, True]), spec(1, 28))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedules(schedule):
    abar = D.alphas_cumprod(config(schedule=schedule, timesteps=1000))
    assert abar.shape == (1000,) and (abar.diff() < 0).all()
    assert 0.99 < abar[0] < 1 and abar[-1] < 0.01


class Oracle(torch.nn.Module):
    """A perfect denoiser for a one-image data set: it knows x0, so it returns the exact eps or v."""

    def __init__(self, x0, abar, prediction):
        super().__init__()
        self.x0, self.abar, self.prediction, self.calls = x0, abar, prediction, []

    def forward(self, x, t, y=None):
        self.calls.append(len(x))
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler,eta,steps", [("ddim", 0.0, 10), ("ddim", 0.5, 7), ("ddpm", 1.0, None)])
def test_samplers_recover_x0_from_an_oracle(prediction, sampler, eta, steps):
    model = D.Diffusion(config(prediction=prediction), spec(1, 8, 0))
    x0 = torch.rand(1, 1, 8, 8) * 1.6 - 0.8
    model.unet = Oracle(x0, model.abar, prediction)
    opts = D.SampleConfig(sampler=sampler, eta=eta, steps=steps, clip=False)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    out = model.sample(torch.randn(4, 1, 8, 8), None, opts, gens)
    torch.testing.assert_close(out, x0.expand(4, -1, -1, -1), atol=1e-4, rtol=0)
    assert len(model.unet.calls) == (steps or 50)  # ddpm: every timestep


def test_guidance_is_one_batched_pass_and_mixes_cond_and_uncond():
    torch.manual_seed(0)
    model = D.Diffusion(config(), spec(1, 8, 3)).eval()
    for p in model.parameters():  # zero-initialised output layers would hide the mixing
        torch.nn.init.normal_(p, std=0.1)
    calls = []
    model.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x, y, w = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), 3.0
    with torch.no_grad():
        guided = model._predict(x, 20, y, w)
        t = torch.full((4,), 20)
        cond, uncond = model.unet(x, t, y), model.unet(x, t, torch.full_like(y, 3))
    assert calls[0] == 8  # cond + uncond in one forward pass
    torch.testing.assert_close(guided, uncond + w * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_sample_is_seeded_and_labels_are_checked():
    fam = get_family("diffusion")
    torch.manual_seed(0)
    modules = fam.build(config(), spec(1, 8, 3), None)
    for p in modules["model"].parameters():
        torch.nn.init.normal_(p, std=0.05)
    modules["model"].eval()
    s = spec(1, 8, 3)

    def draw(request, options=D.SampleConfig(steps=4)):
        with torch.no_grad():
            return fam.sample(modules, s, None, request, options)

    a = draw(SampleRequest.make(5, 1))
    c = draw(SampleRequest.make(5, 2))
    assert a.images.dtype == np.uint8 and a.images.shape == (5, 1, 8, 8) and a.labels == (0, 1, 2, 0, 1)
    assert not np.array_equal(a.images, c.images)
    with pytest.raises(ModelError, match="between 0 and 2, got 3"):
        draw(SampleRequest.make(2, labels=(0, 3)))
    with pytest.raises(ModelError, match="steps must be between 1 and 50"):
        draw(SampleRequest.make(1), D.SampleConfig(steps=51))
    uncond = fam.build(config(), spec(1, 8, 0), None)
    with pytest.raises(ModelError, match="unconditional"):
        fam.sample(uncond, spec(1, 8, 0), None, SampleRequest.make(1, labels=(0,)), D.SampleConfig(steps=4))


def test_train_step_and_val_loss_use_the_contract():
    fam = get_family("diffusion")
    torch.manual_seed(0)
    modules = fam.build(config(), spec(1, 8, 3), None)
    batch = {"images": torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), "labels": torch.tensor([0, 1, 2, -1])}
    stepped = []

    class Opt:
        def step(self, name, loss):
            stepped.append(name)
            loss.backward()

    out = fam.train_step(modules, batch, Opt(), 0)
    assert stepped == ["model"] and set(out) == {"loss"} and not out["loss"].requires_grad
    scalars, weight = fam.val_loss(modules, batch)
    assert scalars["loss"].item() > 0 and weight == 4
    assert list(fam.optimizers(config())) == ["model"] and fam.EMA == ("model",)
