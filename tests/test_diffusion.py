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
@pytest.mark.parametrize("sampler,eta,steps", [("ddim", 0.0, 10), ("ddim", 0.5, 7), ("ddpm", 1.0, None),
                                               ("dpmpp_2m", 0.0, 10), ("dpmpp_2m", 0.0, 3), ("dpmpp_2m", 0.0, None)])
def test_samplers_recover_x0_from_an_oracle(prediction, sampler, eta, steps):
    model = D.Diffusion(config(prediction=prediction), spec(1, 8, 0))
    x0 = torch.rand(1, 1, 8, 8) * 1.6 - 0.8
    model.unet = Oracle(x0, model.abar, prediction)
    opts = D.SampleConfig(sampler=sampler, eta=eta, steps=steps, clip=False)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    out = model.sample(torch.randn(4, 1, 8, 8), None, opts, gens)
    torch.testing.assert_close(out, x0.expand(4, -1, -1, -1), atol=1e-4, rtol=0)
    assert len(model.unet.calls) == (steps or D.DEFAULT_STEPS.get(sampler, 50))  # ddpm: every timestep


class GaussianOracle(torch.nn.Module):
    """The exact denoiser of Gaussian data N(mu, s^2) per pixel: E[x0 | x_t] = mu + alpha s^2 (x_t - alpha mu)
    / (alpha^2 s^2 + sigma^2). Along the probability-flow ODE z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2)
    stays constant, so the ODE's exact end point from x_T is known: mu + s z_T."""

    def __init__(self, mu, s, abar, prediction):
        super().__init__()
        self.mu, self.s, self.abar, self.prediction = mu, s, abar, prediction

    def forward(self, x, t, y=None):
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        x0 = self.mu + alpha * self.s**2 * (x - alpha * self.mu) / (a * self.s**2 + 1 - a)
        eps = (x - alpha * x0) / sigma
        return eps if self.prediction == "eps" else alpha * eps - sigma * x0

    def ode_end(self, xT):
        a = self.abar[-1]
        return self.mu + self.s * (xT - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_dpmpp_2m_solves_the_ode_to_second_order(prediction, schedule):
    """On Gaussian data the ODE's solution is known exactly: DPM-Solver++(2M) is far closer to it than DDIM
    with the same number of network evaluations, and its error falls about 4x per doubling of the steps
    (second order) where DDIM's falls about 2x (first order)."""
    model = D.Diffusion(config(prediction=prediction, schedule=schedule, timesteps=1000), spec(1, 8, 0))
    g = torch.Generator().manual_seed(0)
    mu, s = torch.rand(1, 1, 8, 8, generator=g) - 0.5, torch.rand(1, 1, 8, 8, generator=g) * 0.4 + 0.1
    model.unet = GaussianOracle(mu, s, model.abar, prediction)
    xT = torch.randn(16, 1, 8, 8, generator=g)
    exact = model.unet.ode_end(xT)

    def err(sampler, steps):
        out = model.sample(xT, None, D.SampleConfig(sampler=sampler, steps=steps, clip=False), [])
        return (out - exact).abs().mean().item()

    dpm = {n: err("dpmpp_2m", n) for n in (20, 40, 80)}
    ddim = {n: err("ddim", n) for n in (20, 40, 80)}
    assert dpm[20] < ddim[20] / 4 and dpm[80] < ddim[80] / 10
    assert dpm[20] / dpm[40] > 3 and dpm[40] / dpm[80] > 3  # second order
    assert ddim[40] / ddim[80] < 2.5  # first order


class RandomDenoiser(torch.nn.Module):
    """A random small UNet made a sane denoiser: its clean-image prediction is tanh of its output, so it lies
    in (-1, 1) like an image, and its eps is the one consistent with that prediction. It sees t / 100: a
    random network's response to the sinusoidal embedding of t changes from one timestep to the next (a
    trained one is smooth in t), which would make an ODE that no solver can follow with few steps."""

    def __init__(self, unet, abar):
        super().__init__()
        self.unet, self.abar = unet, abar

    def forward(self, x, t, y=None):
        x0 = torch.tanh(self.unet(x, t.float() / 100, y))
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def test_dpmpp_2m_and_ddim_converge_to_the_same_images():
    """Both solve the same ODE: with a random small UNet (guided, clipped), DPM-Solver++(2M) at 100 steps
    lands on DDIM-1000's images far closer than DDIM-10 does; at 10 and 20 steps it is closer than DDIM-10."""
    torch.manual_seed(0)
    model = D.Diffusion(config(timesteps=1000, channels=[4, 8], groups=2, head_dim=4), spec(1, 4, 3)).eval()
    for p in model.unet.parameters():
        torch.nn.init.normal_(p, std=1.0)
    model.unet = RandomDenoiser(model.unet, model.abar)
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])

    def run(sampler, steps):
        return model.sample(x, y, D.SampleConfig(sampler=sampler, steps=steps, guidance=2.0), [])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~1,100 passes on 4x4 images: threads only add synchronisation (10x slower on busy cores)
    try:
        ref = run("ddim", 1000)
        diff = {k: (run(*k) - ref).abs().mean().item() for k in [("dpmpp_2m", 100), ("dpmpp_2m", 20), ("dpmpp_2m", 10),
                                                                 ("ddim", 10)]}
    finally:
        torch.set_num_threads(threads)
    assert ref.std() > 0.3 and diff[("ddim", 10)] > 0.01  # images, and a problem that 10 steps do not solve
    assert diff[("dpmpp_2m", 100)] < diff[("ddim", 10)] / 20
    assert diff[("dpmpp_2m", 20)] < diff[("ddim", 10)] / 5 and diff[("dpmpp_2m", 10)] < diff[("ddim", 10)] / 2


def test_dpmpp_2m_grid_and_its_edges():
    """The timesteps: from T-1, strictly decreasing, integers, uniform in lambda from lambda(T-2); one step is
    DDIM's one step (x0 predicted at T-1); and eta is refused rather than ignored."""
    abar = D.alphas_cumprod(config(timesteps=1000)).float()
    for steps in (1, 2, 5, 10, 20, 100, 999, 1000):
        ts = D.dpmpp_timesteps(abar, steps)
        assert len(ts) == steps and ts[0] == 999 and all(a > b >= 0 for a, b in zip(ts, ts[1:]))
    assert D.dpmpp_timesteps(abar, 1000) == list(range(999, -1, -1))
    lam = 0.5 * (abar.double().log() - (1 - abar.double()).log())
    h = lam[D.dpmpp_timesteps(abar, 10)].diff()[1:]  # t_1 .. t_9: equal steps in lambda, up to rounding t
    assert h.min() > 0.8 * h.mean() and h.max() < 1.2 * h.mean()
    assert abs(h.mean() - (lam[0] - lam[998]) / 10) < 0.05  # from lambda(T-2), one step short of lambda(0)

    model = D.Diffusion(config(timesteps=1000), spec(1, 8, 3)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    one = [model.sample(x, y, D.SampleConfig(sampler=s, steps=1), []) for s in ("dpmpp_2m", "ddim")]
    torch.testing.assert_close(one[0], one[1])
    with pytest.raises(ConfigError, match="eta applies to the ddim sampler only"):
        validate(D.SampleConfig, {"sampler": "dpmpp_2m", "eta": 0.5})


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers, numpy 2
@pytest.mark.parametrize("prediction,clip", [("eps", False), ("v", True)])
def test_dpmpp_2m_matches_diffusers(prediction, clip):
    """The same solver as diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, lower_order_final,
    final sigma 0, thresholding at 1 = clip) given the same timesteps and the same denoiser."""
    diffusers = pytest.importorskip("diffusers")
    model = D.Diffusion(config(prediction=prediction, timesteps=1000), spec(1, 8, 0))
    g = torch.Generator().manual_seed(1)
    mu, s = torch.rand(1, 1, 8, 8, generator=g) - 0.5, torch.rand(1, 1, 8, 8, generator=g) * 0.4 + 0.1
    model.unet = GaussianOracle(mu * 2.5, s * 2, model.abar, prediction)  # wide data, so clipping bites
    x = torch.randn(4, 1, 8, 8, generator=g)
    steps = 12
    ours = model.sample(x, None, D.SampleConfig(sampler="dpmpp_2m", steps=steps, clip=clip), [])

    abar = model.abar.double()
    betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])  # genforge's schedule, exactly
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), algorithm_type="dpmsolver++", solver_order=2,
        prediction_type="epsilon" if prediction == "eps" else "v_prediction", lower_order_final=True,
        final_sigmas_type="zero", thresholding=clip, sample_max_value=1.0, dynamic_thresholding_ratio=0.995)
    sched.set_timesteps(timesteps=D.dpmpp_timesteps(model.abar, steps))
    theirs = x.clone()
    for t in sched.timesteps:
        out = model.unet(theirs, t.expand(len(theirs)))
        theirs = sched.step(out, t, theirs).prev_sample
    assert (ours - theirs).abs().max() < 1e-5 and (ours.abs().max() == 1) == clip  # float32 rounding apart


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
