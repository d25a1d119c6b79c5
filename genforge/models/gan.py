"""GAN family: a class-conditional DCGAN-style generator against a projection discriminator with
spectral normalisation; hinge or non-saturating loss, optional lazy R1, n_critic D steps per G step.

References:
- DCGAN: Radford, Metz, Chintala 2015, arXiv 1511.06434 (transposed-conv generator with BatchNorm, ReLU and
  tanh; a discriminator of stride-2 convs).
- Spectral normalisation: Miyato, Kataoka, Koyama, Yoshida 2018, arXiv 1802.05957 (every layer of D).
- Projection discriminator: Miyato, Koyama 2018, arXiv 1802.05637 (eq. 3: f(x, y) = y^T V phi(x) + psi(phi(x))).
- Hinge loss: Lim, Ye 2017, arXiv 1705.02894 (as used by Miyato & Koyama); non-saturating loss:
  Goodfellow et al. 2014, arXiv 1406.2661 (sec. 3).
- TTUR: Heusel et al. 2017, arXiv 1706.08500 (D and G on their own learning rates; D's the higher).
- R1: Mescheder, Geiger, Nowozin 2018, arXiv 1801.04406 (eq. 9); lazy regularisation: Karras et al. 2020
  (StyleGAN2), arXiv 1912.04958 (sec. 3.1).
- Truncation: Karras, Laine, Aila 2019 (StyleGAN), arXiv 1812.04948 (appendix B,
  w' = mean + psi (w - mean)), applied to z, whose mean is 0.

Images are uint8 in the data and [-1, 1] floats inside. A dataset with classes gives a class-conditional
model (G: z concatenated with a class embedding; D: the projection term); one without classes an
unconditional one. Rows without a label in a labeled dataset train D's unconditional term only, and
their fakes get a random class.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genforge.config import StrictModel
from genforge.errors import ModelError
from genforge.models import (Batch, DataSpec, ImageSamples, OptimizerSpec, SampleRequest, check_labels, encode_images,
                             fit_images, item_generators, randn_items, to_uint8, to_unit)


class Config(StrictModel):
    """The `model:` section. G and D double their width at each halving of the resolution, up to 8x."""

    family: Literal["gan"]
    z_dim: int = Field(default=128, ge=1)
    embed_dim: int = Field(default=64, ge=1)  # G's class embedding, concatenated to z
    g_channels: int = Field(default=64, ge=1)  # G's width at the output resolution
    d_channels: int = Field(default=64, ge=1)  # D's width at the input resolution
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    n_critic: int = Field(default=1, ge=1, le=100)  # D steps per G step
    r1_gamma: float = Field(default=0.0, ge=0.0)  # R1 weight gamma; 0 = no R1
    r1_every: int = Field(default=16, ge=1)  # lazy R1: every r1_every-th D step, weighted r1_every
    d_win_steps: int = Field(default=200, ge=1)  # warn when D separates real from fake this many steps in a row
    # (digits: healthy runs' streaks end within ~100 steps of the start; a D that won outright: 320 by step 351)


class SampleConfig(StrictModel):
    """The run's `sample:` section: generation defaults, each overridable per call."""

    truncation: float = Field(default=1.0, gt=0.0, le=1.0)  # z scaled by this: fidelity for variety; 1 = none


KINDS = ("image",)
EMA = ("generator",)
HEADLINE = "d_loss"
GRAD_SYNC = "optimizer"  # R1 differentiates D's input gradient: double backward, which DDP cannot run
TUNABLE = ()  # model fields a fine-tuning run may change (the weights' shapes stay)
REQUEST_OPTIONS = ("truncation",)  # sample options a remote request may set (the service)


# ----------------------------------------------------------------------------- the networks

def upsampling_stages(spec: DataSpec) -> tuple[int, int]:
    """(stages, base): the image side is base * 2**stages with base in 4..7, e.g. 28 = 7 * 2**2,
    32 = 4 * 2**3, 64 = 4 * 2**4; G grows from base x base and D shrinks back to it."""
    if spec.height != spec.width:
        raise ModelError(f"the gan family builds square images, got {spec.height}x{spec.width}; ingest with "
                         "--set image.size=N for N x N images")
    side, stages = spec.height, 0
    while side % 2 == 0 and side // 2 >= 4:
        side, stages = side // 2, stages + 1
    if stages == 0 or side > 7:
        raise ModelError(f"image size must be 4 to 7 times a power of two (at least 8), e.g. 28, 32 or 64, got "
                         f"{spec.height}; ingest with --set image.size=32 (or another such size)")
    return stages, side


def widths(channels: int, stages: int) -> list[int]:
    """Widths from the base resolution to the full one: channels * 2**stages ... channels, capped at 8x."""
    return [channels * min(2 ** (stages - i), 8) for i in range(stages + 1)]


class Generator(nn.Module):
    """z (and a class embedding) -> a base x base feature map -> `stages` 2x transposed-conv upsamplings
    with BatchNorm and ReLU -> tanh image (DCGAN). A 4x4 stride-2 transposed conv costs 4 multiply-adds per
    output pixel and channel pair where nearest upsampling + a 3x3 conv costs 9: on a CPU that matters
    more than its mild checkerboard artifacts."""

    def __init__(self, config: Config, spec: DataSpec):
        super().__init__()
        stages, self.base = upsampling_stages(spec)
        w = widths(config.g_channels, stages)
        self.z_dim, self.num_classes = config.z_dim, spec.num_classes
        self.embed = nn.Embedding(spec.num_classes, config.embed_dim) if spec.num_classes else None
        self.fc = nn.Linear(config.z_dim + (config.embed_dim if spec.num_classes else 0), w[0] * self.base ** 2)
        self.norm0 = nn.BatchNorm2d(w[0])
        self.ups = nn.ModuleList(nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                                               nn.BatchNorm2d(cout), nn.ReLU())
                                 for cin, cout in zip(w[:-1], w[1:]))
        self.out = nn.Conv2d(w[-1], spec.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z (B, z_dim), y (B,) class indices (None when unconditional) -> images (B, C, H, W) in [-1, 1]."""
        h = z if self.embed is None else torch.cat([z, self.embed(y)], dim=1)  # (B, z_dim + embed_dim)
        h = self.fc(h).view(len(z), -1, self.base, self.base)  # (B, w0, base, base)
        h = F.relu(self.norm0(h))
        for up in self.ups:
            h = up(h)  # (B, w_i+1, 2H, 2W)
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """A 3x3 stem, then per stage a 4x4 stride-2 conv that halves the resolution and doubles the width
    (DCGAN's discriminator), LeakyReLU 0.1, every layer spectrally normalised (Miyato et al. 2018); the
    projection head (Miyato & Koyama 2018, eq. 3) scores phi(x), the flattened last feature map.

    Lean on purpose: D runs on three batches per step (reals, fakes, G's fakes) to G's two. Flattened, not
    summed over positions as in ResNet discriminators: a unit of this shallow stack sees a patch of about
    a dozen pixels, so a spatial sum would leave D blind to where strokes are, and G collapses to a
    texture that every patch accepts (seen on the digits within 150 steps).

    It also keeps `win_streak`, the number of consecutive D steps in which every real image scored above
    every fake one: a buffer, so it is checkpointed with the weights and survives an exact resume.
    """

    def __init__(self, config: Config, spec: DataSpec):
        super().__init__()
        stages, base = upsampling_stages(spec)
        w = widths(config.d_channels, stages)[::-1]  # full resolution -> base
        self.config, self.num_classes = config, spec.num_classes
        self.stem = spectral_norm(nn.Conv2d(spec.channels, w[0], 3, padding=1))
        self.downs = nn.ModuleList(spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1))
                                   for cin, cout in zip(w[:-1], w[1:]))
        features = w[-1] * base * base
        self.psi = spectral_norm(nn.Linear(features, 1))
        self.embed = spectral_norm(nn.Embedding(spec.num_classes, features)) if spec.num_classes else None  # V
        self.register_buffer("win_streak", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1], y (B,) class indices, -1 for none (None when unconditional) -> logits (B,)."""
        h = F.leaky_relu(self.stem(x), 0.1)  # (B, w0, H, W)
        for down in self.downs:
            h = F.leaky_relu(down(h), 0.1)  # (B, w_i+1, H/2, W/2)
        phi = h.flatten(1)  # (B, w_last * base * base)
        out = self.psi(phi).squeeze(1)  # psi(phi(x)), (B,)
        if self.embed is not None:  # + y^T V phi(x); an unlabeled row (-1) gets the unconditional score only
            out = out + (self.embed(y.clamp(min=0)) * phi).sum(dim=1) * (y >= 0)
        return out


# ----------------------------------------------------------------------------- losses

def d_loss_fn(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss from its logits on real and fake images (B,) each."""
    if loss == "hinge":  # E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()  # -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))


def g_loss_fn(loss: str, fake: torch.Tensor) -> torch.Tensor:
    """G's loss from D's logits on its images (B,)."""
    if loss == "hinge":  # -E[D(G(z))]
        return -fake.mean()
    return F.softplus(-fake).mean()  # non-saturating: -log sigmoid(D(G(z)))


def fake_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The classes to generate for a batch: the real rows' classes (the data's class mix), a random
    class where a row has no label; None when unconditional."""
    if not num_classes:
        return None
    return torch.where(y >= 0, y, torch.randint(num_classes, y.shape, device=y.device))


# ----------------------------------------------------------------------------- the family contract

fit = fit_images
encode = encode_images


def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    """TTUR with DCGAN's Adam: D at twice G's rate, betas (0.5, 0.999). Measured on the digits (evaluator
    FD, 1000 steps): G and D at 4e-4 each, D fell behind (hinge loss 1.4 of a chance 2.0) and G drew one
    digit per class (FD 5.5, recall 0.07); D at 8e-4, FD 2.4, recall 0.29. A 4x faster D with StyleGAN2's
    betas (0, 0.99) overshot: it separated every batch from step 30 on. No weight decay: it would fight
    spectral norm in D and BatchNorm in G."""
    return {"generator": OptimizerSpec(("generator",), lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0),
            "discriminator": OptimizerSpec(("discriminator",), lr=4e-4, betas=(0.5, 0.999), weight_decay=0.0)}


def build(config: Config, spec: DataSpec, fitted: None) -> dict[str, nn.Module]:
    if spec.kind != "image":
        raise ModelError(f"the gan family trains on image datasets, got a {spec.kind} dataset")
    return {"generator": Generator(config, spec), "discriminator": Discriminator(config, spec)}


def train_step(modules: dict[str, nn.Module], batch: Batch, opt, step: int) -> dict[str, torch.Tensor]:
    """A D step every step, a G step after it every n_critic-th step (from step 0, so both optimizers
    have stepped from the first step on). Every step returns the same keys: `g_loss` is G's loss on the
    D step's fakes, measured whether or not G updates; `r1` is the penalty this step added to D's loss
    (0 between lazy steps), so its mean over a log interval is the per-step penalty."""
    g: Generator = modules["generator"]
    d: Discriminator = modules["discriminator"]
    cfg = d.config
    real = to_unit(batch["images"])  # (B, C, H, W)
    B = len(real)
    y = batch["labels"] if d.num_classes else None
    y_fake = fake_labels(batch["labels"], d.num_classes)

    # 1. D step: its loss on reals and (detached) fakes, one forward pass over both
    with torch.no_grad():
        fake = g(torch.randn(B, cfg.z_dim, device=real.device), y_fake)  # (B, C, H, W)
    lazy_r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
    real.requires_grad_(lazy_r1)
    logits = d(torch.cat([real, fake]), None if y is None else torch.cat([y, y_fake]))  # (2B,)
    d_real, d_fake = logits[:B], logits[B:]
    d_loss = d_loss_fn(cfg.loss, d_real, d_fake)
    r1 = torch.zeros((), device=real.device)
    if lazy_r1:
        # 2. R1 = gamma/2 E[||grad_x D(x)||^2] on reals (Mescheder et al. eq. 9), every r1_every steps
        #    weighted r1_every (StyleGAN2 sec. 3.1); create_graph: D's update differentiates the gradient
        (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)  # (B, C, H, W)
        r1 = cfg.r1_gamma / 2 * grad.float().square().sum(dim=(1, 2, 3)).mean() * cfg.r1_every
    opt.step("discriminator", d_loss + r1)
    separated = d_real.detach().min() > d_fake.detach().max()
    d.win_streak.copy_((d.win_streak + 1) * separated)  # +1 while D separates perfectly, else back to 0

    # 3. G step: fresh z through the just-updated D; D's parameters need no gradient here
    if step % cfg.n_critic == 0:
        d.requires_grad_(False)
        g_loss = g_loss_fn(cfg.loss, d(g(torch.randn(B, cfg.z_dim, device=real.device), y_fake), y_fake))
        opt.step("generator", g_loss)
        d.requires_grad_(True)
    return {"d_loss": d_loss.detach(), "g_loss": g_loss_fn(cfg.loss, d_fake.detach()), "d_real": d_real.detach().mean(),
            "d_fake": d_fake.detach().mean(), "r1": r1.detach(), "d_win_streak": d.win_streak.float()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    """D's loss and mean logits on held-out reals against fresh fakes: a val d_real that falls below the
    train d_real means D memorises the training images (the overfitting ADA watches for)."""
    g: Generator = modules["generator"]
    d: Discriminator = modules["discriminator"]
    real = to_unit(batch["images"])
    y = batch["labels"] if d.num_classes else None
    y_fake = fake_labels(batch["labels"], d.num_classes)
    fake = g(torch.randn(len(real), g.z_dim, device=real.device), y_fake)
    d_real, d_fake = d(real, y), d(fake, y_fake)
    return {"d_loss": d_loss_fn(d.config.loss, d_real, d_fake), "d_real": d_real.mean(), "d_fake": d_fake.mean()}, len(real)


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: None, request: SampleRequest,
           options: SampleConfig) -> ImageSamples:
    """One image per item as uint8 (N, C, H, W); item i's z comes from its own seed. The generator must be
    in eval mode (as `load_model` leaves it): in training mode BatchNorm would mix the items' statistics."""
    g: Generator = modules["generator"]
    if g.training:
        raise ModelError("sample() needs the generator in eval mode (call .eval()): in training mode BatchNorm "
                         "makes each image depend on the others in its batch")
    device = g.fc.weight.device
    labels = check_labels(request.labels, request.n, g.num_classes)
    z = randn_items(item_generators(request.seeds), (g.z_dim,), device) * options.truncation  # (N, z_dim)
    x = g(z, None if labels is None else labels.to(device))  # (N, C, H, W)
    return ImageSamples(to_uint8(x.float()).cpu().numpy(), None if labels is None else tuple(labels.tolist()))


def health(config: Config, window: dict[str, float]) -> str | None:
    """Warn when D has won outright: every real above every fake for d_win_steps D steps in a row. In a GAN
    that learns, G keeps catching up and the streak breaks within the first ~100 steps. `window` holds the
    streak's mean over the log interval, which reaches d_win_steps at most one interval after the streak does."""
    if window.get("d_win_streak", 0.0) < config.d_win_steps:
        return None
    return (f"the discriminator has separated every real image from every fake one for at least "
            f"{config.d_win_steps} steps in a row (model.d_win_steps): the generator is not catching up. Add or "
            "raise model.r1_gamma, lower train.optimizers.discriminator.lr, or lower model.n_critic")
