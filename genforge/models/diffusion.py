"""Diffusion family: a UNet denoiser, DDPM training, DDIM and DDPM sampling, classifier-free guidance.

References:
- DDPM: Ho, Jain, Abbeel 2020, arXiv 2006.11239 (training objective, ancestral sampling, the UNet).
- Improved DDPM: Nichol, Dhariwal 2021, arXiv 2102.09672 (cosine noise schedule).
- DDIM: Song, Meng, Ermon 2020, arXiv 2010.02502 (few-step sampling, eta).
- Classifier-free guidance: Ho, Salimans 2022, arXiv 2207.12598.
- v-prediction: Salimans, Ho 2022, arXiv 2202.00512.

Images are uint8 in the data and [-1, 1] floats inside. A dataset with classes gives a
class-conditional model (the extra class index K means "no label", used for guidance); a dataset
without classes gives an unconditional one.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ModelError
from genforge.models import (Batch, DataSpec, ImageSamples, OptimizerSpec, SampleRequest, check_labels, encode_images,
                             fit_images, item_generators, randn_items, to_uint8, to_unit)


class Config(StrictModel):
    """The `model:` section. The UNet halves the resolution between levels of `channels`."""

    family: Literal["diffusion"]
    channels: list[int] = Field(default=[32, 64, 128], min_length=1)  # width per resolution level
    blocks: int = Field(default=2, ge=1)  # residual blocks per level on the way down (one more up)
    attention: list[bool] = [False, False, True]  # self-attention per level (use it at low resolution)
    mid_attention: bool = True
    head_dim: int = Field(default=32, ge=1)
    groups: int = Field(default=8, ge=1)  # GroupNorm groups; must divide every width
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    timesteps: int = Field(default=1000, ge=2, le=10000)
    schedule: Literal["cosine", "linear"] = "cosine"
    prediction: Literal["eps", "v"] = "eps"
    cond_drop: float = Field(default=0.1, ge=0.0, le=1.0)  # share of labels dropped for guidance

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if len(self.attention) != len(self.channels):
            raise ValueError(f"attention needs one flag per level of channels ({len(self.channels)}), got {len(self.attention)}")
        for c, attn in zip(self.channels, self.attention):
            if c % self.groups:
                raise ValueError(f"groups ({self.groups}) must divide every width in channels, got {c}")
            if attn and c % self.head_dim:
                raise ValueError(f"head_dim ({self.head_dim}) must divide the width of an attention level, got {c}")
        if self.mid_attention and self.channels[-1] % self.head_dim:
            raise ValueError(f"head_dim ({self.head_dim}) must divide the last width for mid_attention, got {self.channels[-1]}")
        return self


class SampleConfig(StrictModel):
    """The run's `sample:` section: generation defaults, each overridable per call."""

    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int | None = Field(default=None, ge=1)  # None: 50 for ddim, every timestep for ddpm
    eta: float = Field(default=0.0, ge=0.0, le=1.0)  # DDIM noise; ddpm is eta = 1
    guidance: float = Field(default=2.0, ge=0.0, le=50.0)  # 1 = conditional only, 0 = unconditional
    clip: bool = True  # clamp the predicted clean image to [-1, 1] at every step


KINDS = ("image",)
EMA = ("model",)
HEADLINE = "loss"
GRAD_SYNC = "ddp"


# ----------------------------------------------------------------------------- the UNet

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time (and class) embedding added in between."""

    def __init__(self, cin: int, cout: int, tdim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: faster, stabler start
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (fused scaled_dot_product_attention)."""

    def __init__(self, c: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = c // head_dim
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C): a view in channels-last
        q, k, v = self.qkv(h).view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, HW, hd)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hd)
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + h.view(B, H, W, C).permute(0, 3, 1, 2)


class UNet(nn.Module):
    """The DDPM UNet: per level `blocks` residual blocks (attention where asked), down/up-sampling
    between levels, skip connections from every down-path output to the up path.

    `UNet(config, image_channels, num_classes)` builds it from the config alone, so the same network
    can be built at any size for comparisons; `num_classes=0` leaves out the class embedding.
    """

    def __init__(self, config: Config, image_channels: int, num_classes: int = 0):
        super().__init__()
        ch, g = config.channels, config.groups
        tdim = 4 * ch[0]
        self.base = ch[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.class_emb = nn.Embedding(num_classes + 1, tdim) if num_classes else None  # index K: no label
        self.conv_in = nn.Conv2d(image_channels, ch[0], 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, tdim, g, config.dropout)

        def attn(c: int, on: bool) -> nn.Module:
            return SelfAttention(c, config.head_dim, g) if on else nn.Identity()

        self.down = nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for i, (cout, use_attn) in enumerate(zip(ch, config.attention)):
            level = nn.Module()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(config.blocks):
                level.res.append(res(c, cout))
                level.attn.append(attn(cout, use_attn))
                c = cout
                skips.append(c)
            level.sample = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(ch) - 1 else nn.Identity()
            if i < len(ch) - 1:
                skips.append(c)
            self.down.append(level)

        self.mid1 = res(c, c)
        self.mid_attn = attn(c, config.mid_attention)
        self.mid2 = res(c, c)

        self.up = nn.ModuleList()
        for i, (cout, use_attn) in reversed(list(enumerate(zip(ch, config.attention)))):
            level = nn.Module()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(config.blocks + 1):
                level.res.append(res(c + skips.pop(), cout))
                level.attn.append(attn(cout, use_attn))
                c = cout
            level.sample = nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity()  # after 2x nearest upsampling
            self.up.append(level)

        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) class indices -> (B, C, H, W)."""
        emb = self.time_mlp(timestep_embedding(t, self.base))  # (B, tdim)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)  # every block projects the activated embedding

        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, emb))
                hs.append(h)
            if not isinstance(level.sample, nn.Identity):
                h = level.sample(h)  # (B, C, H/2, W/2)
                hs.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for level in self.up:
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))
            if not isinstance(level.sample, nn.Identity):
                h = level.sample(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- diffusion

def alphas_cumprod(config: Config) -> torch.Tensor:
    """abar_t for t = 0..T-1 in float64: DDPM's linear betas, or the improved-DDPM cosine schedule."""
    T = config.timesteps
    if config.schedule == "linear":  # DDPM sec. 4, scaled so any T spans the same noise range
        betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)
    else:  # Nichol & Dhariwal eq. 17, betas clipped at 0.999
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


class Diffusion(nn.Module):
    """The UNet with its noise schedule; `forward` returns the training loss."""

    def __init__(self, config: Config, spec: DataSpec):
        super().__init__()
        levels = len(config.channels) - 1
        for side in (spec.height, spec.width):
            if side % (2 ** levels):
                raise ModelError(f"image size {spec.height}x{spec.width} must be divisible by 2^{levels} "
                                 f"for {levels + 1} levels of model.channels; use fewer levels or another size")
        self.config = config
        self.num_classes = spec.num_classes
        self.unet = UNet(config, spec.channels, spec.num_classes)
        self.register_buffer("abar", alphas_cumprod(config).float(), persistent=False)

    def forward(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DDPM's simplified loss (eq. 14): predict the noise (or v) from a noised image."""
        B = x0.shape[0]
        t = torch.randint(0, self.config.timesteps, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        a = self.abar[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0), eq. 4
        if self.num_classes:
            drop = (y < 0) | (torch.rand(B, device=y.device) < self.config.cond_drop)
            y = torch.where(drop, self.num_classes, y)  # unlabeled and dropped -> "no label"
        target = noise if self.config.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        return F.mse_loss(self.unet(xt, t, y if self.num_classes else None).float(), target)

    def _predict(self, x: torch.Tensor, t: int, y: torch.Tensor | None, guidance: float) -> torch.Tensor:
        """The network output at step t, guided: out_u + w (out_c - out_u), both in one forward pass."""
        tt = torch.full((x.shape[0],), t, device=x.device)
        if y is None:
            return self.unet(x, tt).float()
        if guidance == 1.0:
            return self.unet(x, tt, y).float()
        uncond = torch.full_like(y, self.num_classes)
        out = self.unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, uncond])).float()
        out_c, out_u = out.chunk(2)
        return out_u + guidance * (out_c - out_u)

    @torch.inference_mode()
    def sample(self, noise: torch.Tensor, y: torch.Tensor | None, options: SampleConfig,
               generators: list[torch.Generator]) -> torch.Tensor:
        """DDIM (eq. 12 of the DDIM paper) from x_T = noise to x_0 in [-1, 1].

        With eta = 1 on all timesteps this is DDPM's ancestral sampler (sigma_t^2 = beta~_t, DDIM eq. 16),
        which is what `sampler: ddpm` runs. Fresh noise (eta > 0) comes from each item's own generator.
        """
        T = self.config.timesteps
        eta = 1.0 if options.sampler == "ddpm" else options.eta
        steps = options.steps or (T if options.sampler == "ddpm" else 50)
        if not 1 <= steps <= T:
            raise ModelError(f"steps must be between 1 and {T} (the model's timesteps), got {steps}")
        ts = torch.linspace(T - 1, 0, steps).round().long().tolist()  # descending, always from t = T-1
        x = noise
        for i, t in enumerate(ts):
            a_t = self.abar[t]
            a_prev = self.abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)
            out = self._predict(x, t, y, options.guidance)
            # 1. the predicted x_0 and noise ("predicted x_0" of eq. 12; v -> x_0, eps per Salimans & Ho sec. 4)
            if self.config.prediction == "eps":
                eps = out
                x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            else:
                x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
                eps = (1 - a_t).sqrt() * x + a_t.sqrt() * out
            if options.clip:
                x0 = x0.clamp(-1, 1)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            # 2. sigma_t(eta), eq. 16
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            # 3. x_{t-1} = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z, eq. 12
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and i + 1 < len(ts):
                x = x + sigma * randn_items(generators, x.shape[1:], x.device)
        return x


# ----------------------------------------------------------------------------- the family contract

fit = fit_images
encode = encode_images


def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    return {"model": OptimizerSpec(("model",))}


def build(config: Config, spec: DataSpec, fitted: None) -> dict[str, nn.Module]:
    if spec.kind != "image":
        raise ModelError(f"the diffusion family trains on image datasets, got a {spec.kind} dataset")
    return {"model": Diffusion(config, spec)}


def train_step(modules: dict[str, nn.Module], batch: Batch, opt, step: int) -> dict[str, torch.Tensor]:
    loss = modules["model"](to_unit(batch["images"]), batch["labels"])
    opt.step("model", loss)
    return {"loss": loss.detach()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    return {"loss": modules["model"](to_unit(batch["images"]), batch["labels"])}, len(batch["images"])


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: None, request: SampleRequest,
           options: SampleConfig) -> ImageSamples:
    """One image per item as uint8 (N, C, H, W); item i's starting noise (and any later noise) comes
    from its own seed, so it does not depend on its batch-mates."""
    model: Diffusion = modules["model"]
    device = model.abar.device
    labels = check_labels(request.labels, request.n, model.num_classes)
    gens = item_generators(request.seeds)
    noise = randn_items(gens, (spec.channels, spec.height, spec.width), device)
    x0 = model.sample(noise, None if labels is None else labels.to(device), options, gens)
    return ImageSamples(to_uint8(x0).cpu().numpy(), None if labels is None else tuple(labels.tolist()))


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
